"""Stacks whose layers differ in shape (deci, openelm): every layer's head count, KV head count and
FFN width from per-layer arrays (a scalar applies to all), and the buffers of each geometry."""

import math

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import UNUSED_SCALE, Rope, Sizes, embedding_rows, head_norms, linear, qkv_weights
from rfc.compiler.arch.metadata import MAX_EMBD, MAX_FF, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError


def read_layer_shapes(
    md: Metadata, *, sublayers_optional: bool, narrow_values: bool = False
) -> tuple[Sizes, tuple[Sizes, ...], tuple[int, ...]]:
    """(the model's sizes: those of the layer with the widest KV row, each layer's sizes, each layer's
    FFN width), every count bounded before anything is sized. `sublayers_optional` (deci): a layer
    may have no heads, no KV heads or no FFN (0); else each has all three. `narrow_values` (mimo2):
    `attention.value_length` may be below key_length (Sizes.v_dim); else it must equal it."""
    model = md.model
    lo = 0 if sublayers_optional else 1
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    heads = md.per_layer("attention.head_count", n_layers, lo, MAX_HEADS)
    kv_heads = md.per_layer("attention.head_count_kv", n_layers, lo, MAX_HEADS, default=list(heads))
    n_ff = md.per_layer("feed_forward_length", n_layers, lo, MAX_FF)
    if not any(heads):
        raise CompileError(f"{md.path}: no layer has attention heads")
    head_dim = md.int("attention.key_length", 1, MAX_HEAD_DIM, default=max(1, n_embd // max(1, heads[0])))
    v_dim = md.int("attention.value_length", 1, MAX_HEAD_DIM, default=head_dim)
    if v_dim > head_dim or (v_dim < head_dim and not narrow_values):
        raise CompileError(f"{md.path}: attention.value_length {v_dim} != key_length {head_dim} is not supported")
    v_dim = 0 if v_dim == head_dim else v_dim
    vocab = embedding_rows(md)
    layers = []
    for i in range(n_layers):
        if kv_heads[i] > heads[i] or (kv_heads[i] and heads[i] % kv_heads[i]):
            raise CompileError(f"{md.path}: layer {i}'s head_count {heads[i]} is not a multiple of its KV heads")
        layers.append(Sizes(n_embd, n_layers, heads[i], kv_heads[i], head_dim, vocab, v_dim=v_dim))
    widest = max((ls for ls in layers if ls.n_kv_heads), key=lambda ls: ls.kv_width, default=None)
    if widest is None:
        raise CompileError(f"{md.path}: no layer has KV heads (a layer-shaped stack needs an attention layer)")
    return widest, tuple(layers), n_ff


def declare_layer_buffers(b: ModelBuilder, sizes: Sizes, layers: tuple[Sizes, ...], n_ff: tuple[int, ...]) -> dict:
    """tokens, x, h and the logit rows' buffers; q/k/v/att per head geometry (suffix _{H}x{KV}) and
    gate/up per FFN width (gate_{N}, up_{N}). Returns the suffix of each (heads, KV heads)."""
    n = sizes.n_embd
    b.buffer("tokens", "T", dtype="i32")
    b.buffer("x", "T", n)
    b.buffer("h", "T", n)
    for name, width in (("xr", n), ("hr", n), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    sfx = {}
    for ls in layers:
        g = (ls.n_heads, ls.n_kv_heads)
        if ls.n_kv_heads and g not in sfx:
            sfx[g] = "_{}x{}".format(*g)
            for name, width in (("q", ls.q_width), ("k", ls.kv_width), ("v", ls.kv_width), ("att", ls.q_width)):
                b.buffer(name + sfx[g], "T", width)
    for width in sorted({f for f in n_ff if f}):
        b.buffer(f"gate_{width}", "T", width)
        b.buffer(f"up_{width}", "T", width)
    return sfx


def fused_qkv_attention(
    b: ModelBuilder, i: int, ls: Sizes, eps: float, rope: Rope, sfx: str, window: int | None = None
) -> None:
    """h = attn_output(attention(...)) of layer i in its geometry's buffers (q{sfx}, ...): the fused
    `attn_qkv` split by the layer's heads, with no weight scale (openelm's and plamo3's graphs call
    build_lora_mm(wqkv, cur) without one), Q and K RMS-normed per head, then RoPE, the KV write,
    attention (within `window` where given) and `attn_output` with its weight scale."""
    p = f"blk.{i}."
    q, k, v, att = (name + sfx for name in ("q", "k", "v", "att"))
    b.unused(p + "attn_qkv.scale", UNUSED_SCALE)
    for buf, w in zip((q, k, v), qkv_weights(b, p, ls)):
        b.op("matmul", ("h",), (buf,), (w,))
    head_norms(b, p, ls, eps, q, k)
    b.op("rope", (q, k), (q, k), (), **rope.attrs(ls))
    b.op("kv_write", (k, v), (), layer=i)
    extra = {"window": window} if window is not None else {}
    b.op("attention", (q,), (att,), (), layer=i, n_heads=ls.n_heads, n_kv_heads=ls.n_kv_heads,
         head_dim=ls.head_dim, scale=1.0 / math.sqrt(ls.head_dim), **extra)  # fmt: skip
    linear(b, att, "h", p + "attn_output", (ls.n_embd, ls.q_width), bias=False)
