"""LayerNorm as llama.cpp's LLM_NORM computes it (ggml_norm, then the weight and an optional
bias): y = (x - mean(x)) / sqrt(var(x) + eps) * weight (+ bias), made of existing plan ops.

The mean comes from two small float32 matmuls with weights made at compile time: x [rows, n] times
a [MEAN_SLOTS, n] weight of -1 / (MEAN_SLOTS n) gives MEAN_SLOTS copies of -mean / MEAN_SLOTS per
row, and those times an [n, MEAN_SLOTS] weight of ones spread -mean over the row's n values
(MEAN_SLOTS, not 1, keeps both matmuls at a width every kernel takes). x + that is x - mean, whose
RMS norm is x's LayerNorm: mean((x - mean)^2) is the variance. Float32 weights read float
activations on every device (no 8-bit rounding), and the two matmuls cost 64 n multiply-adds per
row, against the n^2 of a [n, n] centering matrix.
"""

from math import gcd

from rfc.compiler.arch.builder import ModelBuilder

MEAN_SLOTS = 32


def declare(b: ModelBuilder, n: int, rows: str = "T") -> None:
    """The buffers a layer_norm over `rows` (the plan's "T" token rows or "R" logit rows) uses."""
    b.buffer(f"ln_part_{rows}", rows, MEAN_SLOTS)
    b.buffer(f"ln_mean_{rows}", rows, n)


def layer_norm(
    b: ModelBuilder,
    src: str,
    dst: str,
    n: int,
    eps: float,
    weight: str | None,
    *,
    rows: str = "T",
    bias: str | None = None,
) -> None:
    """dst = LayerNorm(src) (* weight) (+ bias) over rows of n values (declare(b, n, rows) first); no
    weight: the plain normalization (olmo's LayerNorms have neither weight nor bias)."""
    part = b.constant(f"rfc.layernorm.mean.{n}", "layernorm_mean", (MEAN_SLOTS, n), -1.0 / (MEAN_SLOTS * n))
    spread = b.constant(f"rfc.layernorm.spread.{n}", "layernorm_spread", (n, MEAN_SLOTS), 1.0)
    b.op("matmul", (src,), (f"ln_part_{rows}",), (part,))
    b.op("matmul", (f"ln_part_{rows}",), (f"ln_mean_{rows}",), (spread,))
    b.op("add", (src, f"ln_mean_{rows}"), (dst,))
    b.op("rmsnorm", (dst,), (dst,), (weight,) if weight else (), eps=eps)
    if bias:
        b.op("add_bias", (dst,), (dst,), (bias,))


def named_layer_norm(
    b: ModelBuilder, src: str, dst: str, name: str, n: int, eps: float, *, bias: str, rows: str = "T"
) -> None:
    """dst = LayerNorm(src) with the file's `name.weight` [n] and `name.bias` as the loader reads it:
    `bias` "required", "optional" or "none" (a file's bias is then left unread: the builder refuses it)."""
    role = name.rsplit(".", 1)[-1]
    weight = b.tensor(name + ".weight", role, (n,))
    shift = None
    if bias == "required":
        shift = b.tensor(name + ".bias", role + "_bias", (n,))
    elif bias == "optional":
        shift = b.optional_tensor(name + ".bias", role + "_bias", (n,))
    layer_norm(b, src, dst, n, eps, weight, rows=rows, bias=shift)


def head_slots(heads: int) -> int:
    """Mean slots per head for a per-head LayerNorm: the fewest that make heads x slots a multiple of
    8 (the float32 matmul's unit), so the block-diagonal weights stay small ([heads x slots, heads x D])."""
    return 8 // gcd(heads, 8)


def declare_heads(b: ModelBuilder, buf: str, heads: int, head_dim: int) -> None:
    b.buffer(f"ln_part_{buf}", "T", heads * head_slots(heads))
    b.buffer(f"ln_mean_{buf}", "T", heads * head_dim)


def head_layer_norm(b: ModelBuilder, buf: str, heads: int, head_dim: int, eps: float, weight: str) -> None:
    """buf = LayerNorm of each of its `heads` segments of head_dim values, times `weight` [heads x head_dim]
    (a weight per head, as llama.cpp's LLM_NORM of a [head_dim, heads] tensor: command-r's Q/K norms). The
    per-head mean as above, with block-diagonal weights: [heads x slots, heads x head_dim] of
    -1 / (slots x head_dim) on each head's columns, then [heads x head_dim, heads x slots] of ones on
    each head's slots."""
    slots, d, w = head_slots(heads), head_dim, heads * head_dim
    mean_runs, spread_runs = [], []
    for h in range(heads):
        mean_runs += [(0.0, h * d), (-1.0 / (slots * d), d), (0.0, (heads - 1 - h) * d)] * slots
        spread_runs += [(0.0, h * slots), (1.0, slots), (0.0, (heads - 1 - h) * slots)] * d
    part = b.filled(f"rfc.layernorm.heads.mean.{heads}x{d}", "layernorm_mean", (heads * slots, w), _merged(mean_runs))
    spread = b.filled(
        f"rfc.layernorm.heads.spread.{heads}x{d}", "layernorm_spread", (w, heads * slots), _merged(spread_runs)
    )
    b.op("matmul", (buf,), (f"ln_part_{buf}",), (part,))
    b.op("matmul", (f"ln_part_{buf}",), (f"ln_mean_{buf}",), (spread,))
    b.op("add", (buf, f"ln_mean_{buf}"), (buf,))
    b.op("rmsnorm", (buf,), (buf,), (weight,), eps=eps, heads=heads)


def _merged(runs: list[tuple[float, int]]) -> list[tuple[float, int]]:
    out: list[tuple[float, int]] = []
    for v, n in runs:
        if not n:
            continue
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + n)
        else:
            out.append((v, n))
    return out
