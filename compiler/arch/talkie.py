"""`talkie`, as llama.cpp's src/models/talkie.cpp builds it: RMS norms without weights everywhere
(the embedding's, each sublayer's, the output's); the normed embedding e is kept, and every layer
ends x += layer_output_scale · e. Attention: Q/K/V with their biases and weight scales (build_qkv),
NeoX RoPE over whole heads, then Q RMS-normed per head times a learned gain per head (`attn_q_norm`
[n_head]) and K RMS-normed per head without one, `attn_output` with its weight scale; a SwiGLU FFN
with only ffn_down's weight scale (the graph passes none of the others); `output.weight` required,
the logits × `logit_scale` (required)."""

import math

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    declare_buffers, hparams, kv_spec, linear, qkv_projections, read_rope, read_sizes,
    require_output, require_whole_heads,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "talkie")
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    require_whole_heads(md, rope, sizes, "talkie")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    logit_scale = md.float("logit_scale", 0.0, 1e6, open_lo=True)
    b = ModelBuilder(model)
    require_output(b, "talkie")
    declare_buffers(b, sizes, n_ff)
    n = sizes.n_embd
    b.buffer("e", "T", n)  # the normed embedding every layer adds back, scaled
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n)),))
    b.op("rmsnorm", ("x",), ("e",), (), eps=eps)  # the normed embedding, kept
    b.op("rmsnorm", ("x",), ("x",), (), eps=eps)  # the same bits in x
    scale = 1.0 / math.sqrt(sizes.head_dim)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (), eps=eps)
        qkv_projections(b, p, sizes)
        b.op("rope", ("q", "k"), ("q", "k"), (), **rope.attrs(sizes))
        gains = b.head_gains(p + "attn_q_norm.weight:heads", "attn_q_norm", p + "attn_q_norm.weight", sizes.n_heads,
                             sizes.head_dim)  # fmt: skip
        b.op("rmsnorm", ("q",), ("q",), (gains,), eps=eps, heads=sizes.n_heads)
        b.op("rmsnorm", ("k",), ("k",), (), eps=eps, heads=sizes.n_kv_heads)
        b.op("kv_write", ("k", "v"), (), layer=i)
        b.op("attention", ("q",), ("att",), (), layer=i, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
             head_dim=sizes.head_dim, scale=scale)  # fmt: skip
        linear(b, "att", "h", p + "attn_output", (n, sizes.q_width), bias=False)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (), eps=eps)
        linear(b, "h", "gate", p + "ffn_gate", (n_ff, n), bias=False, scale=False)
        linear(b, "h", "up", p + "ffn_up", (n_ff, n), bias=False, scale=False)
        b.op("swiglu", ("gate", "up"), ("gate",))
        linear(b, "gate", "h", p + "ffn_down", (n, n_ff), bias=False)
        b.op("add", ("x", "h"), ("x",))
        skip = b.scalar(p + "layer_output_scale.weight")
        if skip is None:
            raise CompileError(f"{b.path}: missing tensor {p}layer_output_scale.weight (talkie's loader requires it)")
        if skip != 0.0:
            b.op("scale", ("e",), ("h",), factor=skip)
            b.op("add", ("x", "h"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    b.op("rmsnorm", ("xr",), ("hr",), (), eps=eps)
    linear(b, "hr", "logits", "output", (sizes.vocab_size, n), bias=False, scale=False)
    b.op("scale", ("logits",), ("logits",), factor=logit_scale)
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=False, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra={"logit_scale": logit_scale})  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
