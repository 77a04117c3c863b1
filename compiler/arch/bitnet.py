"""`bitnet` (Microsoft BitNet b1.58: ternary weights, TQ1_0 / TQ2_0 in GGUF), as llama.cpp's
src/models/bitnet.cpp builds it: llama's pre-norm block with NeoX RoPE and no frequency factors,
each projection times its weight scale where present, and two sub-norms (RMS, weight only): the
attention's output normed by `attn_sub_norm` before `attn_output`, the SwiGLU's by `ffn_sub_norm`
[n_ff] before `ffn_down`; no biases; the output is always the tied embedding."""

import math

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, declare_buffers, hparams, kv_spec, linear, output_head, qkv_projections, read_rope, read_sizes,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "bitnet")
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff)
    n = sizes.n_embd
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n)),))
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        qkv_projections(b, p, sizes)
        b.op("rope", ("q", "k"), ("q", "k"), (), **rope.attrs(sizes))
        b.op("kv_write", ("k", "v"), (), layer=i)
        b.op("attention", ("q",), ("att",), (), layer=i, n_heads=sizes.n_heads, n_kv_heads=sizes.n_kv_heads,
             head_dim=sizes.head_dim, scale=cfg.scale)  # fmt: skip
        sub = b.tensor(p + "attn_sub_norm.weight", "attn_sub_norm", (sizes.q_width,))
        b.op("rmsnorm", ("att",), ("att",), (sub,), eps=eps)
        linear(b, "att", "h", p + "attn_output", (n, sizes.q_width), bias=False)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        linear(b, "h", "gate", p + "ffn_gate", (n_ff, n), bias=False)
        linear(b, "h", "up", p + "ffn_up", (n_ff, n), bias=False)
        b.op("swiglu", ("gate", "up"), ("gate",))
        b.op("rmsnorm", ("gate",), ("gate",), (b.tensor(p + "ffn_sub_norm.weight", "ffn_sub_norm", (n_ff,)),), eps=eps)
        linear(b, "gate", "h", p + "ffn_down", (n, n_ff), bias=False)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, always_tied=True, bias=False)
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False,
                 extra={"sub_norms": True})  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
