"""`stablelm` (Stability AI StableLM-3B-4E1T, StableLM 2 1.6B / 12B, Stable Code), as llama.cpp's
src/models/stablelm.cpp builds it:

    h = LayerNorm(x) (attn_norm weight and bias, `attention.layer_norm_epsilon`)
    x += attn_output(attention(rope(norm?(Q)), rope(norm?(K)), V))     (no attn_output bias)
    x += SwiGLU FFN(LayerNorm(x) by ffn_norm, or h itself where the layer has no ffn_norm)

Q/K/V biases where the file has them; where a layer has `attn_q_norm` / `attn_k_norm`
([heads, head_dim]: one weight per head, no bias), Q and K are LayerNormed per head before RoPE
(StableLM 2 12B, whose layers have no ffn_norm: attention and FFN in parallel from the same
normed input). NeoX RoPE over the first `rope.dimension_count` dims of each head; the FFN without
biases or weight scales; a final LayerNorm with its bias and a required `output.weight`."""

import math

from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Sizes, declare_buffers, glu_ffn, hparams, kv_spec, linear, qkv_projections, read_rope, read_sizes, require_output,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _head_norm(b: ModelBuilder, p: str, buf: str, heads: int, head_dim: int, eps: float) -> None:
    name = f"{p}attn_{buf}_norm.weight"
    if b.has(name):  # LLM_NORM of [head_dim, heads]: a weight per head, no bias
        weight = b.flat(name, f"attn_{buf}_norm", (heads, head_dim))
        layernorm.head_layer_norm(b, buf, heads, head_dim, eps, weight)


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "stablelm")
    sizes: Sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    require_output(b, "stablelm")
    e = sizes.n_embd
    declare_buffers(b, sizes, n_ff)
    b.buffer("a", "T", e)
    layernorm.declare(b, e, "T")
    layernorm.declare(b, e, "R")
    layers = range(sizes.n_layers)
    if any(b.has(f"blk.{i}.attn_q_norm.weight") for i in layers):
        layernorm.declare_heads(b, "q", sizes.n_heads, sizes.head_dim)
    if any(b.has(f"blk.{i}.attn_k_norm.weight") for i in layers):
        layernorm.declare_heads(b, "k", sizes.n_kv_heads, sizes.head_dim)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, e)),))
    scale = 1.0 / math.sqrt(sizes.head_dim)
    for i in layers:
        p = f"blk.{i}."
        layernorm.named_layer_norm(b, "x", "h", p + "attn_norm", e, eps, bias="optional")
        qkv_projections(b, p, sizes, "h")
        _head_norm(b, p, "q", sizes.n_heads, sizes.head_dim, eps)
        _head_norm(b, p, "k", sizes.n_kv_heads, sizes.head_dim, eps)
        b.op("rope", ("q", "k"), ("q", "k"), **rope.attrs(sizes))
        b.op("kv_write", ("k", "v"), (), layer=i)
        b.op("attention", ("q",), ("att",), layer=i, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
             head_dim=sizes.head_dim, scale=scale)  # fmt: skip
        linear(b, "att", "a", p + "attn_output", (e, sizes.q_width), bias=False)  # build_attn(wo, NULL, wo_s)
        b.op("add", ("x", "a"), ("x",))
        if b.has(p + "ffn_norm.weight"):
            layernorm.named_layer_norm(b, "x", "h", p + "ffn_norm", e, eps, bias="optional")
        elif b.has(p + "ffn_norm.bias"):
            raise CompileError(f"{b.path}: {p}ffn_norm.bias without {p}ffn_norm.weight")
        # else: the parallel residual, the FFN reads h, attention's normed input
        glu_ffn(b, i, e, n_ff, bias=False, scale=False)
        b.op("add", ("x", "h"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    layernorm.named_layer_norm(b, "xr", "hr", "output_norm", e, eps, bias="optional", rows="R")
    linear(b, "hr", "logits", "output", (sizes.vocab_size, e), bias=False)
    extra = {"norm": "layernorm", "parallel_blocks": not b.has("blk.0.ffn_norm.weight")}
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
