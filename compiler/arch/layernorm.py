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

from rfc.compiler.arch.builder import ModelBuilder

MEAN_SLOTS = 32


def declare(b: ModelBuilder, n: int, rows: str = "T") -> None:
    """The buffers a layer_norm over `rows` (the plan's "T" token rows or "R" logit rows) uses."""
    b.buffer(f"ln_part_{rows}", rows, MEAN_SLOTS)
    b.buffer(f"ln_mean_{rows}", rows, n)


def layer_norm(b: ModelBuilder, src: str, dst: str, n: int, eps: float, weight: str, *, rows: str = "T",
               bias: str | None = None) -> None:
    """dst = LayerNorm(src) * weight (+ bias) over rows of n values (declare(b, n, rows) first)."""
    part = b.constant(f"rfc.layernorm.mean.{n}", "layernorm_mean", (MEAN_SLOTS, n), -1.0 / (MEAN_SLOTS * n))
    spread = b.constant(f"rfc.layernorm.spread.{n}", "layernorm_spread", (n, MEAN_SLOTS), 1.0)
    b.op("matmul", (src,), (f"ln_part_{rows}",), (part,))
    b.op("matmul", (f"ln_part_{rows}",), (f"ln_mean_{rows}",), (spread,))
    b.op("add", (src, f"ln_mean_{rows}"), (dst,))
    b.op("rmsnorm", (dst,), (dst,), (weight,), eps=eps)
    if bias:
        b.op("add_bias", (dst,), (dst,), (bias,))
