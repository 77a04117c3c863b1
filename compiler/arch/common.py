"""Pieces most decoder-only recipes share: the llama-style hyperparameters, as llama.cpp reads
them (src/llama-model.cpp: llama_model_base::load_hparams), and the parts of a transformer
block as plan ops (attention, gated FFN, mixture of experts, the output head).

A recipe that differs in a detail passes options (rope style, biases, a window); one that
differs in structure (gemma's extra norms) arranges the same parts in its own block.
"""

import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.metadata import (
    MAX_CONTEXT, MAX_EMBD, MAX_EXPERTS, MAX_FF, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, Metadata,
)  # fmt: skip
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import HParams, ModelSpec

# rope.scaling.type values, llama.cpp's (llama_rope_scaling_type_from_string); another is refused
# by name (Metadata.choice), as llama.cpp refuses it.
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")


@dataclass(frozen=True)
class Sizes:
    n_embd: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    # values narrower than the keys (attention.value_length < key_length: minicpm3, mimo2); 0: head_dim.
    # The V projection is zero-padded to head_dim per KV head (the KV cache's rows have one head
    # size), and the attention's output is cut back to v_dim per head before attn_output.
    v_dim: int = 0

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def v_head(self) -> int:
        """The values' head size (the keys' unless narrower)."""
        return self.v_dim or self.head_dim

    @property
    def narrow_values(self) -> bool:
        return self.v_head < self.head_dim

    @property
    def att_width(self) -> int:
        """The width attn_output reads: every query head's values."""
        return self.n_heads * self.v_head

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.head_dim


def embedding_rows(md: Metadata, embd_name: str = "token_embd.weight") -> int:
    """The vocabulary size as the embedding's rows: the tensor present, 2-D, at most MAX_VOCAB rows."""
    embd = md.model.tensors.get(embd_name)
    if embd is None:
        raise CompileError(f"{md.path}: missing tensor {embd_name}")
    if len(embd.shape) != 2 or not 1 <= embd.shape[0] <= MAX_VOCAB:
        raise CompileError(f"{md.path}: {embd_name} has shape {list(embd.shape)}, not [vocab <= {MAX_VOCAB}, n_embd]")
    return embd.shape[0]


def f32(x: float) -> float:
    """x rounded to float32 (llama.cpp keeps its multipliers and scales as float32)."""
    return float(np.float32(x))


def read_sizes(md: Metadata, embd_name: str = "token_embd.weight") -> Sizes:
    """The stack's sizes, the vocabulary's from the embedding's rows (`embd_name`: codeshell's loader
    takes output.weight when the file has no token_embd.weight)."""
    model = md.model
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    # Every layer has tensors of its own: a file cannot hold more layers than tensors.
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    n_heads = md.int("attention.head_count", 1, MAX_HEADS)
    n_kv_heads = md.int("attention.head_count_kv", 1, n_heads, default=n_heads)
    if n_heads % n_kv_heads:
        raise CompileError(f"{md.path}: head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}")
    head_dim = md.int("attention.key_length", 1, MAX_HEAD_DIM, default=max(1, n_embd // n_heads))
    value_dim = md.int("attention.value_length", 1, MAX_HEAD_DIM, default=head_dim)
    if value_dim != head_dim:
        raise CompileError(f"{md.path}: attention.value_length {value_dim} != key_length {head_dim} is not supported")
    vocab_size = embedding_rows(md, embd_name)
    declared = md.int("vocab_size", 1, MAX_VOCAB, default=vocab_size)
    if declared != vocab_size:
        raise CompileError(f"{md.path}: {md.key('vocab_size')} {declared} != {embd_name} rows {vocab_size}")
    return Sizes(n_embd, n_layers, n_heads, n_kv_heads, head_dim, vocab_size)


@dataclass(frozen=True)
class Rope:
    """One layer's RoPE with ggml_rope_ext's parameters (llama.cpp's cparams)."""

    n_rot: int
    style: str  # "adjacent" (GGML rope mode 0) or "neox" (mode 2)
    freq_base: float
    freq_scale: float
    scaling_type: str
    attn_factor: float = 1.0  # ggml's attn_factor (cparams.yarn_attn_factor, rope.scaling.attn_factor included)
    ext_factor: float = 0.0  # YaRN's extrapolation mix: 1 when the scaling type is "yarn"
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    orig_ctx: int = 0  # n_ctx_orig_yarn: rope.scaling.original_context_length, else context_length
    # attention temperature tuning (mistral3): q times 1 + temp_scale ln(floor(pos / orig_ctx) + 1)
    temp_scale: float = 0.0
    # the rotary pairs a text token leaves unturned (M-RoPE's extra section, at position 0 for text:
    # compiler/arch/mrope.py); rope_weights plans them as frequency factors that stop them
    unturned: tuple[int, ...] = ()

    @property
    def magnitude(self) -> float:
        """What ggml's rope_yarn multiplies the rotated pair by: attn_factor, and with YaRN also
        1 + 0.1 ln(1 / freq_scale) (which llama.cpp's attn_factor cancels, see yarn_attn_factor)."""
        if not self.ext_factor:
            return self.attn_factor
        return self.attn_factor * (1.0 + 0.1 * math.log(1.0 / self.freq_scale))

    def attrs(self, sizes: Sizes) -> dict:
        attrs = {
            "n_heads": sizes.n_heads, "n_kv_heads": sizes.n_kv_heads, "head_dim": sizes.head_dim,
            "n_rot": self.n_rot, "style": self.style, "freq_base": self.freq_base, "freq_scale": self.freq_scale,
        }  # fmt: skip
        if self.magnitude != 1.0:
            attrs["attn_factor"] = self.magnitude
        if self.ext_factor:
            attrs.update(
                ext_factor=self.ext_factor, beta_fast=self.beta_fast, beta_slow=self.beta_slow, orig_ctx=self.orig_ctx
            )
        if self.temp_scale:
            attrs.update(temp_scale=self.temp_scale, temp_floor=self.orig_ctx)
        return attrs


def yarn_attn_factor(freq_scale: float, log_mul: float = 0.0) -> float:
    """llama.cpp's cparams.yarn_attn_factor for YaRN (llama_context's constructor), before the
    file's rope.scaling.attn_factor multiplies it: get_mscale(factor, 1), or with a
    rope.scaling.yarn_log_multiplier (mistral3) get_mscale(factor, 1) / get_mscale(factor, log_mul),
    where get_mscale(f, m) = 1 + 0.1 m ln(f) for f = 1 / freq_scale > 1, else 1; then divided by
    1 + 0.1 ln(factor), which ggml's rope multiplies back (Rope.magnitude)."""
    factor = 1.0 / freq_scale

    def get_mscale(m: float) -> float:
        return 1.0 + 0.1 * m * math.log(factor) if factor > 1.0 else 1.0

    mscale = get_mscale(1.0) / get_mscale(log_mul) if log_mul else get_mscale(1.0)
    return mscale / (1.0 + 0.1 * math.log(factor))


def read_rope(md: Metadata, sizes: Sizes, style: str, *, yarn_keys: bool = False) -> Rope:
    """RoPE as llama.cpp sets it up for the file (load_hparams + llama_context): base 10000
    unless given; scaling type "linear" when the key is absent, so a `rope.scaling.factor`
    (or the older `rope.scale_linear`) alone scales positions; type "none" never scales;
    "longrope" scales as linear does (its factor tensors are the recipe's: rope_factors);
    "yarn" mixes scaled and unscaled frequencies (ext_factor 1, beta_fast 32, beta_slow 1 over
    the original context) and corrects the magnitude (yarn_attn_factor). Only loaders that read
    rope.scaling.yarn_beta_fast / yarn_beta_slow / yarn_log_multiplier take them (`yarn_keys`:
    mistral3); the others ignore such keys, as llama.cpp does for those families."""
    n_rot = md.int("rope.dimension_count", 2, sizes.head_dim, default=sizes.head_dim)
    if n_rot % 2:
        raise CompileError(f"{md.path}: rope.dimension_count {n_rot} must be even")
    scaling = md.choice("rope.scaling.type", ROPE_SCALING_TYPES, default="linear")
    factor = md.float("rope.scaling.factor", 0.0, 1e6, default=md.float("rope.scale_linear", 0.0, 1e6, default=0.0))
    freq_scale = 1.0 if scaling == "none" or factor == 0.0 else 1.0 / factor
    base = md.float("rope.freq_base", 0.0, 1e12, default=10000.0, open_lo=True)
    attn_factor = md.float("rope.scaling.attn_factor", 0.0, 1e6, default=1.0, open_lo=True)
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)
    orig_ctx = md.int("rope.scaling.original_context_length", 0, MAX_CONTEXT, default=0) or n_ctx
    rope = Rope(n_rot, style, base, freq_scale, scaling, attn_factor, orig_ctx=orig_ctx)
    if not yarn_keys:  # llama.cpp's loader reads none of them for this architecture: its defaults hold
        for key in ("rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow", "rope.scaling.yarn_log_multiplier"):
            md.ignored(key, "not read by llama.cpp's loader for this architecture")
    if scaling != "yarn":
        return rope
    if base <= 1.0:
        raise CompileError(f"{md.path}: YaRN needs {md.key('rope.freq_base')} > 1, got {base}")
    if freq_scale > 1.0:  # a YaRN "factor" below 1 would shrink the context; 1 + 0.1 ln(factor) divides
        raise CompileError(f"{md.path}: YaRN needs {md.key('rope.scaling.factor')} >= 1, got {factor}")
    beta_fast, beta_slow, log_mul = rope.beta_fast, rope.beta_slow, 0.0
    if yarn_keys:
        beta_fast = md.float("rope.scaling.yarn_beta_fast", 0.0, 1e6, default=beta_fast, open_lo=True)
        beta_slow = md.float("rope.scaling.yarn_beta_slow", 0.0, 1e6, default=beta_slow, open_lo=True)
        log_mul = md.float("rope.scaling.yarn_log_multiplier", 0.0, 1e3, default=0.0)
    return replace(rope, attn_factor=yarn_attn_factor(freq_scale, log_mul) * attn_factor, ext_factor=1.0,
                   beta_fast=beta_fast, beta_slow=beta_slow)  # fmt: skip


# divides an unturned pair's frequency: at most 2^24 / 1e30 rad at any position, so cos is 1 and sin
# below 2e-23 in float32 (ggml turns such a pair by angle 0: the same values)
UNTURNED_FACTOR = 1e30


def rope_weights(b: ModelBuilder, rope: Rope, factors: str | None) -> tuple[str, ...]:
    """The rope op's weights: the frequency factors (`factors`, a weight of the plan) or, for a rope
    with unturned pairs, a constant of 1 per pair and UNTURNED_FACTOR for those."""
    if not rope.unturned:
        return (factors,) if factors else ()
    if factors:  # no loader of an M-RoPE family reads rope_freqs
        raise CompileError(f"{b.path}: RoPE frequency factors with M-RoPE sections that leave pairs unturned")
    stopped = set(rope.unturned)
    values = (UNTURNED_FACTOR if pair in stopped else 1.0 for pair in range(rope.n_rot // 2))
    runs = [(value, len(list(run))) for value, run in itertools.groupby(values)]
    pattern = hashlib.sha256(repr(runs).encode()).hexdigest()[:12]  # one weight per pattern, a short name
    return (b.filled(f"rope_unturned.{rope.n_rot}.{pattern}", "rope_freqs", (rope.n_rot // 2,), runs),)


def rope_factors(b: ModelBuilder, rope: Rope, n_ctx: int, *, long_short: bool) -> str | None:
    """llama.cpp's get_rope_factors: `rope_freqs.weight` (Llama 3.1's factors), or, for loaders
    that read LongRoPE's two sets (`long_short`: phi3 always; llama, mistral3 and granite when
    the scaling type is "longrope"), `rope_factors_long.weight` when the context served exceeds
    the original one, else `rope_factors_short.weight`. A bundle serves the model's whole
    training context, so that decides."""
    shape = (rope.n_rot // 2,)
    if not long_short:
        return b.optional_tensor("rope_freqs.weight", "rope_freqs", shape)
    which, other = ("long", "short") if n_ctx > rope.orig_ctx else ("short", "long")
    b.unused(
        f"rope_factors_{other}.weight", f"LongRoPE's {other}-context factors: the bundle serves the {which} context"
    )
    return b.optional_tensor(f"rope_factors_{which}.weight", f"rope_factors_{which}", shape)


def hparams(md: Metadata, sizes: Sizes, rope: Rope, n_ff: int, rms_eps: float, **flags) -> HParams:
    return HParams(
        architecture=md.arch,
        name=md.text("general.name", default=md.model.path.stem),
        context_length=md.int("context_length", 1, MAX_CONTEXT),
        n_embd=sizes.n_embd,
        n_ff=n_ff,
        n_layers=sizes.n_layers,
        n_heads=sizes.n_heads,
        n_kv_heads=sizes.n_kv_heads,
        head_dim=sizes.head_dim,
        n_rot=rope.n_rot,
        rope_style=rope.style,
        rope_freq_base=rope.freq_base,
        rope_freq_scale=rope.freq_scale,
        rope_scaling_type=rope.scaling_type,
        rms_eps=rms_eps,
        vocab_size=sizes.vocab_size,
        **flags,
    )


def kv_spec(sizes: Sizes) -> KVSpec:
    return KVSpec(n_layers=sizes.n_layers, n_kv_heads=sizes.n_kv_heads, head_dim=sizes.head_dim, dtype="f16")


# -- block parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attention:
    """What one layer's attention needs beyond the sizes; layers may differ in any of it."""

    rope: Rope
    scale: float  # applied to q.k (gemma's query pre-scaling folds in here)
    window: int | None = None  # sliding window: keys more than window - 1 positions back (non-causal: or ahead) masked
    softcap: float | None = None  # attention-logit soft-capping
    qk_norm: bool = False  # per-head RMS norms attn_q_norm / attn_k_norm before RoPE (qwen3, gemma3)
    # with qk_norm: one norm over the whole Q (K) row instead, [q_width] / [kv_width] (olmo2)
    qk_norm_rows: bool = False
    # LayerNorms attn_q_norm / attn_k_norm (weight, optional bias) over the whole Q and K rows where the
    # layer has them (jina-bert-v2); the recipe declares the LayerNorm buffers at those widths
    qk_layer_norm: bool = False
    factors: str | None = None  # RoPE frequency factors (a weight of the plan)
    sinks: bool = False  # a learned sink logit per query head, `attn_sinks` (gpt-oss)
    clamp: float | None = None  # Q, K and V clamped to [-c, c] after their biases (attention.clamp_kqv: olmo)
    alibi: float | None = None  # ALiBi's maximum bias (bloom, mpt, jais, refact: then no RoPE)
    causal: bool = True  # False: every key of the sequence (an encoder: bert)

    def with_rope(self, **changes) -> "Attention":
        return replace(self, rope=replace(self.rope, **changes))


def stack_widths(sizes: Sizes) -> tuple[tuple[str, int], ...]:
    """The token buffers a llama-style stack declares first: x (residual), h (sublayer in/out),
    q, k, v and att (name, width)."""
    return (
        ("x", sizes.n_embd),
        ("h", sizes.n_embd),
        ("q", sizes.q_width),
        ("k", sizes.kv_width),
        ("v", sizes.kv_width),
        ("att", sizes.q_width),
    )


def declare_buffers(
    b: ModelBuilder, sizes: Sizes, n_ff: int, n_used: int = 0, n_expert: int = 0, *, logits: bool = True
) -> None:
    """The activations of a llama-style stack: x (residual), h (sublayer in/out), q/k/v/att, the
    FFN's gate/up, and for MoE the router's and the experts' buffers; `logits` False: no logits
    buffer (an encoder's plan)."""
    b.buffer("tokens", "T", dtype="i32")
    for name, width in stack_widths(sizes):
        b.buffer(name, "T", width)
    if n_used:
        b.buffer("router", "T", n_expert)
        b.buffer("expert_ids", "T", n_used, dtype="i32")
        b.buffer("expert_weights", "T", n_used)
        b.buffer("gate", "T", n_used * n_ff)
        b.buffer("up", "T", n_used * n_ff)
        b.buffer("experts_out", "T", n_used * sizes.n_embd)
    else:
        b.buffer("gate", "T", n_ff)
        b.buffer("up", "T", n_ff)
    b.buffer("xr", "R", sizes.n_embd)
    b.buffer("hr", "R", sizes.n_embd)
    if logits:
        b.buffer("logits", "R", sizes.vocab_size)


def qkv_weights(b: ModelBuilder, p: str, sizes: Sizes) -> tuple[str, str, str]:
    """The Q, K and V projections: separate tensors, or row ranges of a fused `attn_qkv` (Q, then
    K, then V), which llama.cpp accepts for every architecture (create_tensor_qkv). The plan
    keeps three matmuls either way: splitting costs nothing at run time, and a target that
    gains from one fused matmul concatenates them again in its lowering (ModelBuilder.concat)."""
    e, q, kv = sizes.n_embd, sizes.q_width, sizes.kv_width
    fused = p + "attn_qkv.weight"
    vw = sizes.n_kv_heads * sizes.v_head  # V's rows in the file
    if not b.has(fused):
        qk = tuple(b.tensor(f"{p}attn_{x}.weight", f"attn_{x}", (w, e)) for x, w in (("q", q), ("k", kv)))
        if not sizes.narrow_values:
            return (*qk, b.tensor(p + "attn_v.weight", "attn_v", (kv, e)))
        return (*qk, padded_values(b, p + "attn_v.weight", "attn_v", p + "attn_v.weight", (vw, e), 0, sizes))
    shape = (q + kv + vw, e)
    v = (
        padded_values(b, fused + ":v", "attn_v", fused, shape, q + kv, sizes)
        if sizes.narrow_values
        else b.rows(fused + ":v", "attn_v", fused, shape, q + kv, q + 2 * kv)
    )
    return (
        b.rows(fused + ":q", "attn_q", fused, shape, 0, q),
        b.rows(fused + ":k", "attn_k", fused, shape, q, q + kv),
        v,
    )


def padded_values(
    b: ModelBuilder, name: str, role: str, source: str, shape: tuple[int, int], start: int, sizes: Sizes
) -> str:
    """The V projection of narrower values as a weight of head_dim rows per KV head: each head's
    v_dim rows of `source` from row `start`, then zero rows (sizes.v_dim)."""
    vd, hd = sizes.v_head, sizes.head_dim
    ranges = [(start + h * vd, start + (h + 1) * vd) for h in range(sizes.n_kv_heads)]
    return b.row_ranges(name + ":padded", role, source, shape, ranges, pad=hd - vd)


def attention(
    b: ModelBuilder,
    i: int,
    sizes: Sizes,
    eps: float,
    cfg: Attention,
    *,
    src: str = "h",
    dst: str = "h",
    out_bias: bool = True,
    rope: bool = True,
    layer: int | None = None,
    sfx: str = "",
    gate: str | None = None,
    gate_fn: str = "sigmoid",
    qkv_extras: bool = True,
) -> None:
    """dst = attn_output(attention(rope(norm?(Q src)), rope(norm?(K src)), V src)) for layer i.
    Every projection's weight scale and bias are applied where the file has them (llama.cpp's
    build_qkv and build_attn: matmul, times `.scale`, plus `.bias`; a fused attn_qkv's scale
    scales all three; `out_bias` False: attn_output's bias is not read, and a file that has one
    is refused by the builder). Without `rope` the layer's queries and keys keep no positions
    (smollm3's NoPE layers). `layer`: the KV cache layer, when it is not i (a looped stack runs
    block i's weights again, each pass with a cache of its own: nanbeige). `sfx`: the layer's q, k, v
    and att buffers are q{sfx}, ... (a layer of another head geometry than the model's: deci).
    `gate`: the attention's output times `gate_fn`(`attn_gate` src) before attn_output (build_lora_mm:
    no scale), into buffer `attn_gate{sfx}` the recipe declares: "head", one gate per head ([n_heads,
    n_embd]: spark2_5), or "value", one per value ([q_width, n_embd]: muse-glimmer); `gate_fn` sigmoid,
    or softplus (laguna). `qkv_extras` False: the graph multiplies by Q, K and V alone (build_lora_mm
    without scale or bias: mimo2), their `.scale` and `.bias` known and unused.
    Values narrower than the keys (sizes.v_dim) are cut back after attention (narrow)."""
    p = f"blk.{i}."
    kv = i if layer is None else layer
    q, k, v, att = (name + sfx for name in ("q", "k", "v", "att"))
    qkv_projections(b, p, sizes, src, cfg.clamp, sfx=sfx, extras=qkv_extras)
    if sfx and cfg.qk_norm_rows:
        raise ValueError("whole-row Q/K norms in another geometry's buffers are not planned")  # a recipe bug
    if cfg.qk_norm and cfg.qk_norm_rows:
        b.op("rmsnorm", ("q",), ("q",), (b.tensor(p + "attn_q_norm.weight", "attn_q_norm", (sizes.q_width,)),), eps=eps)
        b.op(
            "rmsnorm", ("k",), ("k",), (b.tensor(p + "attn_k_norm.weight", "attn_k_norm", (sizes.kv_width,)),), eps=eps
        )
    elif cfg.qk_norm:
        head_norms(b, p, sizes, eps, q, k)
    elif cfg.qk_layer_norm:
        for buf, norm, width in ((q, "attn_q_norm", sizes.q_width), (k, "attn_k_norm", sizes.kv_width)):
            if b.has(p + norm + ".weight"):
                layernorm.named_layer_norm(b, buf, buf, p + norm, width, eps, bias="optional")
    if rope:
        b.op("rope", (q, k), (q, k), rope_weights(b, cfg.rope, cfg.factors), **cfg.rope.attrs(sizes))
    b.op("kv_write", (k, v), (), layer=kv)
    extra = {k: v for k, v in (("window", cfg.window), ("softcap", cfg.softcap), ("alibi", cfg.alibi)) if v is not None}
    if not cfg.causal:  # only then: every causal plan's bytes stay as they were
        extra["causal"] = False
    sinks = (b.tensor(p + "attn_sinks.weight", "attn_sinks", (sizes.n_heads,)),) if cfg.sinks else ()
    b.op("attention", (q,), (att,), sinks, layer=kv, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
         head_dim=sizes.head_dim, scale=cfg.scale, **extra)  # fmt: skip
    if gate is not None:
        if sizes.narrow_values and gate == "value":  # a gate per head gates the padded heads alike
            raise ValueError("a gate per value over narrower values is not planned")  # a recipe bug
        rows, buf = {"head": sizes.n_heads, "value": sizes.q_width}[gate], "attn_gate" + sfx
        b.unused(p + "attn_gate.scale", UNUSED_SCALE)
        b.op("matmul", (src,), (buf,), (b.tensor(p + "attn_gate.weight", "attn_gate", (rows, sizes.n_embd)),))
        b.op("swiglu", (buf, att), (att,), activation=gate_fn)
    att = narrow(b, att, sizes)
    linear(b, att, dst, p + "attn_output", (sizes.n_embd, sizes.att_width), bias=out_bias)


def narrow(b: ModelBuilder, att: str, sizes: Sizes) -> str:
    """The attention output `att` (head_dim per query head) cut to the values' v_dim per head, into
    buffer att{...}_v, when the values are narrower (their zero padding dropped); else `att`."""
    if not sizes.narrow_values:
        return att
    out = b.buffer(att + "_v", "T", sizes.att_width)
    b.op("slice_heads", (att,), (out,), heads=sizes.n_heads, width=sizes.v_head)
    return out


def head_norms(b: ModelBuilder, p: str, sizes: Sizes, eps: float, q: str = "q", k: str | None = "k") -> None:
    """Per-head RMSNorm of the q rows (attn_q_norm, [head_dim]) and of the k rows (attn_k_norm),
    in place; k None: q alone (a layer that reads another's KV cache)."""
    hd = (sizes.head_dim,)
    b.op("rmsnorm", (q,), (q,), (b.tensor(p + "attn_q_norm.weight", "attn_q_norm", hd),), eps=eps, heads=sizes.n_heads)
    if k is not None:
        norm = b.tensor(p + "attn_k_norm.weight", "attn_k_norm", hd)
        b.op("rmsnorm", (k,), (k,), (norm,), eps=eps, heads=sizes.n_kv_heads)


def qkv_projections(
    b: ModelBuilder,
    p: str,
    sizes: Sizes,
    src: str = "h",
    clamp: float | None = None,
    *,
    sfx: str = "",
    extras: bool = True,
) -> None:
    """q, k, v = the layer's Q, K and V projections of src (prefix `p`), each times its weight
    scale and plus its bias where the file has them (llama.cpp's build_qkv: a fused attn_qkv's
    scale scales all three, its attn_qkv.bias adds to all three; with it the separate biases are
    not read, as llama.cpp's loader does not); with `clamp` each is then clamped to [-clamp, clamp]
    (build_qkv's f_clamp_kqv). Every recipe that builds its own attention starts from here. `sfx`:
    into q{sfx}, k{sfx}, v{sfx}. `extras` False: the matmuls alone, every `.scale` and `.bias` of
    them known and unused (the graph calls build_lora_mm(w, cur) on each)."""
    if not extras:
        for name in ("attn_qkv", "attn_q", "attn_k", "attn_v"):
            b.unused(f"{p}{name}.scale", UNUSED_SCALE)
            b.unused(f"{p}{name}.bias", UNUSED_BIAS)
        for proj, w in zip("qkv", qkv_weights(b, p, sizes)):
            b.op("matmul", (src,), (proj + sfx,), (w,))
            if clamp:
                b.op("clamp", (proj + sfx,), (proj + sfx,), limit=clamp)
        return
    fused_scale = weight_scale(b, p + "attn_qkv")
    fused_bias = p + "attn_qkv.bias"  # with a fused attn_qkv only: Q's, K's and V's entries in turn
    q, kv, vw = sizes.q_width, sizes.kv_width, sizes.n_kv_heads * sizes.v_head
    spans = {"q": [(0, q)], "k": [(q, q + kv)], "v": [(q + kv, q + kv + vw)]}
    pads = {"q": 0, "k": 0, "v": 0}
    if sizes.narrow_values:  # each KV head's values, then zeros up to head_dim (padded_values)
        vd = sizes.v_head
        spans["v"] = [(q + kv + h * vd, q + kv + (h + 1) * vd) for h in range(sizes.n_kv_heads)]
        pads["v"] = sizes.head_dim - vd
    for proj, w, width in zip("qkv", qkv_weights(b, p, sizes), (q, kv, vw)):
        buf = proj + sfx
        b.op("matmul", (src,), (buf,), (w,))
        scale = fused_scale if fused_scale is not None else weight_scale(b, f"{p}attn_{proj}")
        if scale is not None and scale != 1.0:
            b.op("scale", (buf,), (buf,), factor=scale)
        if b.has(fused_bias) and b.has(p + "attn_qkv.weight"):
            bias = b.vector_ranges(
                f"{fused_bias}:{proj}", f"attn_{proj}_bias", fused_bias, q + kv + vw, spans[proj], pad=pads[proj]
            )
        elif pads[proj] and b.has(f"{p}attn_{proj}.bias"):
            name = f"{p}attn_{proj}.bias"
            off = -spans[proj][0][0]
            bias = b.vector_ranges(
                name + ":padded", f"attn_{proj}_bias", name, width, [(a + off, z + off) for a, z in spans[proj]],
                pad=pads[proj],
            )  # fmt: skip
        else:
            bias = b.optional_tensor(f"{p}attn_{proj}.bias", f"attn_{proj}_bias", (width,))
        if bias:
            b.op("add_bias", (buf,), (buf,), (bias,))
        if clamp:
            b.op("clamp", (buf,), (buf,), limit=clamp)


def weight_scale(b: ModelBuilder, name: str) -> float | None:
    """The value of `name.scale` when the file has one: the per-tensor weight scale llama.cpp
    multiplies into a matmul's output (build_lora_mm's w_s, one float32; FP8 and NVFP4
    checkpoints are converted with them)."""
    return b.scalar(name + ".scale")


def linear(
    b: ModelBuilder,
    src: str,
    dst: str,
    name: str,
    shape: tuple[int, int],
    *,
    bias: bool = True,
    scale: bool = True,
    bias_first: bool = False,
) -> None:
    """dst = src @ name.weight^T, times name.scale and plus name.bias where the file has them
    (llama.cpp's build_lora_mm, then the bias its callers add); with `bias_first` the bias is
    added before the scale multiplies (llama.cpp's build_ffn: matmul, + bias, * scale). With
    `bias` False the bias is not read (a file that has one is then refused by the builder, never
    computed without it); with `scale` False the `.scale` is known and unused (llama.cpp loads
    every weight's `.scale` and the architecture's graph does not pass it)."""
    role = name.split(".", 2)[-1] if name.startswith("blk.") else name
    b.op("matmul", (src,), (dst,), (b.tensor(name + ".weight", role, shape),))
    factor = weight_scale(b, name) if scale else None
    if not scale:
        b.unused(name + ".scale", UNUSED_SCALE)
    w = b.optional_tensor(name + ".bias", role + "_bias", (shape[0],)) if bias else None
    if w and bias_first:
        b.op("add_bias", (dst,), (dst,), (w,))
    if factor is not None and factor != 1.0:
        b.op("scale", (dst,), (dst,), factor=factor)
    if w and not bias_first:
        b.op("add_bias", (dst,), (dst,), (w,))


# Why a `.scale` that the graph does not apply is known and unused.
UNUSED_SCALE = "llama.cpp's loader reads every weight's .scale and this architecture's graph does not apply it"
# Why a Q/K/V `.bias` that the graph does not add is known and unused (create_tensor_qkv loads them).
UNUSED_BIAS = "llama.cpp's loader reads the Q/K/V biases and this architecture's graph does not add them"


def glu_ffn(
    b: ModelBuilder,
    i: int,
    e: int,
    n_ff: int,
    *,
    activation: str = "silu",
    src: str = "h",
    dst: str = "h",
    fused_gate_up: bool = False,
    bias: bool = True,
    scale: bool = True,
    bufs: tuple[str, str] = ("gate", "up"),
    limit: float | None = None,
) -> None:
    """dst = ffn_down(act(ffn_gate src) * ffn_up src), as llama.cpp's build_ffn: each matmul,
    plus its bias, times its weight scale (linear's `bias_first`). Each architecture's graph passes
    build_ffn its own subset: `bias` False, the biases are not read (a file with one is refused);
    `scale` False, the `.scale` tensors are known and unused. With `fused_gate_up` (phi3)
    `ffn_up` holds 2 n_ff rows, gate first: they are split into two weights like a fused QKV, its
    scale scaling both. `bufs`: the gate and up buffers (deci's layers of other FFN widths). `limit`:
    the activation's limit (swiglu's `limit`: step35's "silu_cap")."""
    g, u = bufs
    p = f"blk.{i}."
    if fused_gate_up:
        fused, shape = p + "ffn_up.weight", (2 * n_ff, e)
        factor = weight_scale(b, p + "ffn_up") if scale else None
        if not scale:
            b.unused(p + "ffn_up.scale", UNUSED_SCALE)
        for buf, half, start in ((g, "gate", 0), (u, "up", n_ff)):
            w = b.rows(f"{fused}:{half}", f"ffn_{half}", fused, shape, start, start + n_ff)
            b.op("matmul", (src,), (buf,), (w,))
            if factor is not None and factor != 1.0:
                b.op("scale", (buf,), (buf,), factor=factor)
    else:
        linear(b, src, g, p + "ffn_gate", (n_ff, e), bias=bias, scale=scale, bias_first=True)
        linear(b, src, u, p + "ffn_up", (n_ff, e), bias=bias, scale=scale, bias_first=True)
    glu = ({} if activation == "silu" else {"activation": activation}) | ({"limit": limit} if limit else {})
    b.op("swiglu", (g, u), (g,), **glu)
    linear(b, g, dst, p + "ffn_down", (e, n_ff), bias=bias, scale=scale, bias_first=True)


def ungated_ffn(
    b: ModelBuilder,
    i: int,
    e: int,
    n_ff: int,
    activation: str,
    *,
    bias: bool,
    src: str = "h",
    dst: str = "h",
    act_scales: bool = False,
) -> None:
    """dst = ffn_down(act(ffn_up src)), build_ffn without a gate (LLM_FFN_SEQ): activation
    "relu_sqr" (arcee, nemotron: relu(u)^2, computed as swiglu "relu" of (u, u) = max(u, 0) u) or
    "gelu" (phi2, starcoder2, gptneox, falcon); each matmul plus its bias where the graph passes
    one (`bias`), no weight scales (none of these graphs passes them: known and unused). With
    `act_scales` (mpt) the GELU's output is divided by `ffn.act.scales` [n_ff] where the layer has it."""
    p = f"blk.{i}."
    linear(b, src, "up", p + "ffn_up", (n_ff, e), bias=bias, scale=False, bias_first=True)
    if activation == "relu_sqr":
        b.op("swiglu", ("up", "up"), ("up",), activation="relu")
    elif activation == "gelu":
        b.op("gelu", ("up",), ("up",))
        if act_scales and b.has(p + "ffn.act.scales"):  # build_ffn: ggml_div after the GELU
            b.op("channel_div", ("up",), ("up",), (b.tensor(p + "ffn.act.scales", "ffn_act", (n_ff,)),))
    else:
        raise ValueError(f"unknown ungated FFN activation {activation!r}")  # a recipe bug
    linear(b, "up", dst, p + "ffn_down", (e, n_ff), bias=bias, scale=False, bias_first=True)


def expert_scales(b: ModelBuilder, i: int, n_expert: int, gate: str, up: str, *, fused: bool = False) -> None:
    """Layer i's `ffn_gate_exps.scale` and `ffn_up_exps.scale` [n_expert], where the file has
    them, as llama.cpp's build_moe_ffn applies them (build_lora_mm_id's w_s): each chosen
    expert's gate and up matmul outputs (the buffers `gate`, `up`) times its expert's factor,
    before the activation (gate's scale is inside SiLU). With a fused ffn_gate_up_exps llama.cpp
    scales both halves by the up scale and never reads the gate one: so does this."""
    p = f"blk.{i}."
    up_scale = b.optional_tensor(p + "ffn_up_exps.scale", "ffn_up_exps_scale", (n_expert,))
    if fused:
        b.unused(
            p + "ffn_gate_exps.scale", "llama.cpp's fused gate_up path scales both halves by ffn_up_exps.scale only"
        )
        pairs = ((gate, up_scale), (up, up_scale))
    else:
        pairs = (
            (gate, b.optional_tensor(p + "ffn_gate_exps.scale", "ffn_gate_exps_scale", (n_expert,))),
            (up, up_scale),
        )
    for buf, scale in pairs:
        if scale is not None:
            b.op("moe_scale", (buf, "expert_ids"), (buf,), (scale,))


def moe_ffn(
    b: ModelBuilder,
    i: int,
    e: int,
    n_ff: int,
    n_expert: int,
    n_used: int,
    *,
    src: str = "h",
    dst: str = "h",
    scales: bool = False,
    gate_up: tuple[str, str] | None = None,
) -> None:
    """Mixtral-style mixture of experts (llama.cpp's build_moe_ffn with softmax gating and
    normalized top-k weights): route each token to n_used of n_expert SwiGLU experts and add
    their outputs weighted by the renormalized router probabilities. `scales`: the graph passes
    build_moe_ffn the experts' `.scale` tensors (llama, mistral3): gate's and up's scale each
    chosen expert's matmul output (expert_scales), down's its weight in the sum; without,
    they are known and unused (granite, gpt-oss). `gate_up`: the gate and up expert weights the
    recipe made (the halves of a fused ffn_gate_up_exps: moe.expert_gate_up), instead of
    ffn_gate_exps and ffn_up_exps."""
    p = f"blk.{i}."
    if not scales:
        for name in ("gate_exps", "up_exps", "gate_up_exps", "down_exps"):
            b.unused(f"{p}ffn_{name}.scale", UNUSED_SCALE)
    b.op("matmul", (src,), ("router",), (b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (n_expert, e)),))
    # ffn_down_exps.scale [n_expert] (llama.cpp scales each chosen expert's down output by it):
    # a factor of the expert's weight in the sum, as moe_route's expert_scale applies it
    escale = b.optional_tensor(p + "ffn_down_exps.scale", "ffn_down_exps_scale", (n_expert,)) if scales else None
    b.op(
        "moe_route",
        ("router",),
        ("expert_ids", "expert_weights"),
        (escale,) if escale else (),
        n_used=n_used,
        **({"expert_scale": True} if escale else {}),
    )
    if gate_up is None:
        shape = (n_expert, n_ff, e)
        gate_up = tuple(b.tensor(f"{p}ffn_{x}_exps.weight", f"ffn_{x}_exps", shape) for x in ("gate", "up"))
    for w, buf in zip(gate_up, ("gate", "up")):
        b.op("moe_matmul", (src, "expert_ids"), (buf,), (w,))
    if scales:
        expert_scales(b, i, n_expert, "gate", "up")
    b.op("swiglu", ("gate", "up"), ("gate",))
    down = b.tensor(p + "ffn_down_exps.weight", "ffn_down_exps", (n_expert, e, n_ff))
    b.op("moe_matmul", ("gate", "expert_ids"), ("experts_out",), (down,))
    b.op("moe_combine", ("experts_out", "expert_weights"), (dst,))


RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK: a reranker's score from its classifier head
CLASSIFIER = ("cls.weight", "cls.bias", "cls.output.weight", "cls.output.bias")
MAX_LABELS = 1 << 12  # a classifier's outputs (a cross-encoder's: 1; Qwen3-Reranker's "yes" and "no": 2)


def output_head(
    b: ModelBuilder,
    sizes: Sizes,
    eps: float,
    *,
    final_softcap: float | None = None,
    always_tied: bool = False,
    bias: bool = True,
    norm_bias: bool = False,
    scale: bool = True,
    classifier: Metadata | None = None,
) -> bool:
    """logits = output(norm(x)) for the logit rows (`output.weight`, else the tied token
    embedding; always the embedding with `always_tied`), soft-capped with a final_softcap;
    returns whether the embedding is tied. `bias` False: `output.bias` is not read (a file that
    has one is refused: the architecture's llama.cpp graph does not add one); `norm_bias`: the output
    norm adds its required `output_norm.bias` (phimoe); `scale` False: `output.scale` known and unused (the
    graph multiplies by output alone: kimi-linear, bailingmoe3). With `classifier` (a decoder
    reranker's metadata) its `cls.output` head reads the normalized rows into "scores" before the
    logits, so that a step that only ranks stops there (the cpu scores entry runs the plan up to the
    last op writing its output)."""
    b.op("gather_rows", ("x",), ("xr",))
    _rms_norm(b, "xr", "hr", "output_norm", sizes.n_embd, eps, norm_bias)
    if classifier is not None:
        classifier_head(b, classifier, sizes.n_embd, dense=False)
    tied = always_tied or not b.has("output.weight")
    if tied:
        b.op("matmul", ("hr",), ("logits",), ("token_embd.weight",))
    else:  # with output.scale and output.bias where the file has them
        linear(b, "hr", "logits", "output", (sizes.vocab_size, sizes.n_embd), bias=bias, scale=scale)
    if final_softcap is not None:
        b.op("softcap", ("logits",), ("logits",), cap=final_softcap)
    return tied


def classifier_head(b: ModelBuilder, md: Metadata, e: int, dense: bool = True, cls_rows: int | None = None) -> str:
    """A reranker's head over the final hidden rows "hr" (llama.cpp's build_pooling, rank): tanh(`cls`
    h + `cls.bias`) where the file has `cls` (`dense`: an encoder's; a decoder's loader reads no
    `cls`, so there it is left unaccounted and refused), then `cls.output` (+ its bias) to the labels
    where it has that (without, the tanh's outputs are the labels), the first of which is a pair's
    relevance score; returns the scores buffer. The engine reads an encoder's first row (llama.cpp's
    CLS row: classifier.pooling_type mean is modern-bert's) and a decoder's last. `cls_rows`: the
    loader reads `cls` as [cls_rows, n_embd] and no `cls.output` (jina-bert-v2's: [1, n_embd], the
    tanh its score: jina-reranker-v1)."""
    src = "hr"
    if cls_rows is not None or (dense and b.has("cls.weight")):
        rows = e if cls_rows is None else cls_rows
        b.buffer("cls_h", "R", rows)
        linear(b, src, "cls_h", "cls", (rows, e), scale=False, bias_first=True)
        b.op("softcap", ("cls_h",), ("cls_h",), cap=1.0)  # 1 * tanh(x / 1): tanh exactly
        src = "cls_h"
        if cls_rows is not None:
            return src
    elif dense and b.has("cls.bias"):
        raise CompileError(f"{b.path}: cls.bias without cls.weight")
    out = b.model.tensors.get("cls.output.weight")
    if out is None:  # jina-reranker-v1-tiny's one layer: tanh(cls h + b) is the output, its first value the score
        if src != "cls_h" or b.has("cls.output.bias"):
            raise CompileError(f"{b.path}: rank pooling needs cls.weight or cls.output.weight (a classifier head)")
        return src
    labels = out.shape[0] if len(out.shape) == 2 else 0
    if not 1 <= labels <= MAX_LABELS:
        raise CompileError(f"{b.path}: cls.output.weight {list(out.shape)} is not [labels, {e}]")
    named = md.raw("classifier.output_labels")
    if isinstance(named, list) and named and len(named) != labels:
        raise CompileError(f"{b.path}: {len(named)} classifier.output_labels for {labels} cls.output rows")
    b.buffer("scores", "R", labels)
    linear(b, src, "scores", "cls.output", (labels, e), scale=False, bias_first=True)
    return "scores"


def rms_encoder_head(
    b: ModelBuilder,
    md: Metadata,
    sizes: Sizes,
    eps: float,
    causal: bool,
    *,
    norm: str = "output_norm",
    classifier: bool = False,
) -> tuple[str, dict]:
    """The tail of an encoder of RMS-normed pre-norm blocks (llama-embed, eurobert, neo-bert): the last
    layer's rows RMS-normed by `norm` into "hr", the model's hidden output (pooled by `pooling_type`).
    With rank pooling the classifier head over them (`classifier`: the architecture's loader reads
    `cls` / `cls.output`; one that does not leaves llama.cpp nothing to rank with, so the file is
    refused), else those tensors are known and unused. Returns (the scores buffer or "", what the
    plan's hparams add: `causal`, the recipe's attention's, and `serves`)."""
    rank = md.raw("pooling_type") == RANK_POOLING
    if rank and not classifier:
        raise CompileError(
            f"{b.path}: rank pooling without a classifier head: llama.cpp's {md.arch} loader reads no cls "
            "or cls.output (llama.cpp aborts on such a file)"
        )
    b.op("gather_rows", ("x",), ("xr",))
    _rms_norm(b, "xr", "hr", norm, sizes.n_embd, eps, False)
    for name in CLASSIFIER if classifier and not rank else ():
        b.unused(name, "the classifier head of a file without rank pooling (llama.cpp loads it and embeds)")
    scores = classifier_head(b, md, sizes.n_embd) if rank else ""
    return scores, {"causal": causal, "serves": "embeddings, reranking" if rank else "embeddings"}


def _rms_norm(b: ModelBuilder, src: str, dst: str, name: str, n: int, eps: float, bias: bool) -> None:
    """dst = RMSNorm(src) * name.weight (+ name.bias, required, with `bias`: build_norm's LLM_NORM_RMS
    given a bias)."""
    b.op("rmsnorm", (src,), (dst,), (b.tensor(name + ".weight", name.rsplit(".", 1)[-1], (n,)),), eps=eps)
    if bias:
        b.op("add_bias", (dst,), (dst,), (b.tensor(name + ".bias", name.rsplit(".", 1)[-1] + "_bias", (n,)),))


def require_whole_heads(md: Metadata, rope: Rope, sizes: Sizes, arch: str) -> None:
    """Refuses rope.dimension_count != head_dim for an architecture whose llama.cpp graph asserts
    n_rot == head_dim (llama.cpp refuses the file too)."""
    if rope.n_rot != sizes.head_dim:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count')} {rope.n_rot} != head size {sizes.head_dim} "
                           f"({arch} rotates whole heads; llama.cpp refuses this file too)")  # fmt: skip


def require_output(b: ModelBuilder, arch: str) -> None:
    """Refuses a file without `output.weight` for an architecture whose loader requires one (no tied
    fallback): llama.cpp refuses it too."""
    if not b.has("output.weight"):
        raise CompileError(f"{b.path}: missing tensor output.weight ({arch}'s loader requires it: no tied output)")


def read_experts(md: Metadata) -> tuple[int, int]:
    """(expert_count, expert_used_count); (0, 0) for a dense model. llama.cpp reads both for
    every architecture and asserts 0 < used <= count when there are experts."""
    n_expert = md.int("expert_count", 0, MAX_EXPERTS, default=0)
    n_used = md.int("expert_used_count", 0, n_expert, default=0)
    if n_expert and not n_used:
        raise CompileError(f"{md.path}: expert_count {n_expert} without an expert_used_count")
    if n_used and not n_expert:
        raise CompileError(f"{md.path}: expert_used_count {n_used} without an expert_count")
    return n_expert, n_used


def llama_like(
    model: GGUFModel,
    arch: str,
    rope_style: str,
    *,
    qkv_bias: bool = False,
    qk_norm: bool = False,
    fused_gate_up: bool = False,
    long_short_factors: bool | None = None,
    no_rope_step: int = 0,
    yarn_keys: bool = False,
    temp_scale: float = 0.0,
    ffn_bias: bool = True,
    ffn_scale: bool = True,
    output_bias: bool = False,
    norm_bias: bool = False,
    expert_scales: bool = True,
    rope: Callable[[Metadata, Sizes, Rope], Rope] | None = None,
    encoder: bool = False,
) -> ModelSpec:
    """llama and its close relatives: pre-norm blocks of GQA attention with rotary positions
    and a SwiGLU FFN (or a Mixtral-style mixture of SwiGLU experts), RMS norms, optional
    biases, optional tied output. Options: Q/K/V biases required (qwen2), per-head Q/K norms
    (qwen3), a fused gate/up tensor (phi3), where the RoPE frequency factors come from
    (rope_factors: LongRoPE's long/short sets with `long_short_factors`; None: when the scaling
    type is "longrope", as llama's loader decides; else `rope_freqs.weight` when present), every
    `no_rope_step`-th layer without RoPE (smollm3: layers 3, 7, 11, ...; llama.cpp's
    n_no_rope_layer_step), the YaRN keys the loader reads (read_rope's `yarn_keys`); the FFN's
    biases and weight scales where the architecture's graph passes them to build_ffn (`ffn_bias`,
    `ffn_scale`: glu_ffn), and `output.bias` only where it adds one (`output_bias`: qwen2, phi3). With
    `norm_bias` (phimoe) every RMS norm adds its required `.bias` after its weight (build_norm's
    LLM_NORM_RMS with a bias); `expert_scales` False: the experts' `.scale` tensors are known and
    unused (moe_ffn's `scales`); `rope(md, sizes, rope)` adjusts the file's RoPE (M-RoPE's sections: qwen3vl).
    With `encoder` (llama-embed: llama.cpp's llama graph without a KV cache or an LM head) the attention
    is causal only as `attention.causal` says and the normed rows are the model's output
    (rms_encoder_head); `output.weight`, which llama's loader reads, is unused."""
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    hook = rope
    rope = replace(read_rope(md, sizes, rope_style, yarn_keys=yarn_keys), temp_scale=temp_scale)
    if hook is not None:
        rope = hook(md, sizes, rope)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n_expert, n_used = read_experts(md)
    b = ModelBuilder(model)
    # Qwen3-Reranker: rank pooling over a "yes"/"no" head (llama.cpp's loaders read cls.output for these two)
    rank = arch in ("qwen3", "qwen3vl") and md.raw("pooling_type") == RANK_POOLING
    if arch in ("qwen3", "qwen3vl") and not rank:
        b.unused("cls.output.weight", "the reranker's classifier head: llama.cpp runs it only to rank, never for text")
    if qkv_bias and not b.has("blk.0.attn_q.bias"):
        raise CompileError(f"{b.path}: missing tensor blk.0.attn_q.bias ({arch} has Q/K/V biases)")
    declare_buffers(b, sizes, n_ff, n_used, n_expert, logits=not encoder)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    long_short = rope.scaling_type == "longrope" if long_short_factors is None else long_short_factors
    factors = rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=long_short)
    causal = not encoder or md.bool("attention.causal", default=True)
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), qk_norm=qk_norm, factors=factors, causal=causal)
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        _rms_norm(b, "x", "h", p + "attn_norm", sizes.n_embd, eps, norm_bias)
        attention(b, i, sizes, eps, cfg, rope=not no_rope_step or (i + 1) % no_rope_step != 0)
        b.op("add", ("x", "h"), ("x",))
        _rms_norm(b, "x", "h", p + "ffn_norm", sizes.n_embd, eps, norm_bias)
        if n_expert:
            moe_ffn(b, i, sizes.n_embd, n_ff, n_expert, n_used, scales=expert_scales)
        else:
            glu_ffn(b, i, sizes.n_embd, n_ff, fused_gate_up=fused_gate_up, bias=ffn_bias, scale=ffn_scale)
        b.op("add", ("x", "h"), ("x",))
    extra = {"expert_count": n_expert, "expert_used_count": n_used} if n_expert else {}
    if encoder:
        b.unused("output.weight", "an embedding model's output head: llama.cpp loads it and never runs it")
        scores, more = rms_encoder_head(b, md, sizes, eps, causal)
        hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=b.has("blk.0.attn_q.bias"),
                     rope_freq_factors=factors is not None, extra=extra | more)  # fmt: skip
        return b.finish(hp, input_tokens="tokens", output_logits="", output_hidden="hr", kv=kv_spec(sizes),
                        output_scores=scores)  # fmt: skip
    tied = output_head(b, sizes, eps, bias=output_bias, norm_bias=norm_bias, classifier=md if rank else None)
    if rank:
        extra["serves"] = "text, reranking"
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=extra)  # fmt: skip
    # a reranker's score: softmax over its labels, the first ("yes"), as llama.cpp's build_pooling for qwen3
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes),
                    output_scores="scores" if rank else "", scores_softmax=rank)  # fmt: skip
