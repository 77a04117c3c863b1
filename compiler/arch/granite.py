"""`granite` (IBM Granite 3.x dense): llama's block with four multipliers, as llama.cpp's granite
graph applies them: the token embedding times `embedding_scale`, each sublayer's output times
`residual_scale` before its residual add, attention scores times `attention.scale` (instead of
1/sqrt(head_dim)), the logits divided by `logit_scale` (required; the others optional, 0 or
absent: none). `rope.scaling.finetuned` false turns RoPE off (llama.cpp's granite loader reads it
as that switch). Experts (granitemoe's shapes under this name) are refused by name."""

import math

import numpy as np

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, glu_ffn, hparams, kv_spec, output_head, read_experts, read_rope, read_sizes,
    rope_factors,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _f32(x: float) -> float:
    return float(np.float32(x))  # llama.cpp keeps the multipliers as float32


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "granite")
    s = read_sizes(md)
    rope = read_rope(md, s, "adjacent")
    if rope.n_rot != s.head_dim:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count')} {rope.n_rot} != head size {s.head_dim} "
                           "(granite rotates whole heads; llama.cpp refuses this file too)")  # fmt: skip
    if read_experts(md)[0]:
        raise CompileError(f"{md.path}: {md.key('expert_count')}: granite with experts is not supported")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    logit_scale = _f32(md.float("logit_scale", 0.0, 1e6, open_lo=True))
    residual = _f32(md.float("residual_scale", 0.0, 1e6, default=0.0))
    embedding = _f32(md.float("embedding_scale", 0.0, 1e6, default=0.0))
    att_scale = _f32(md.float("attention.scale", 0.0, 1e6, default=0.0))
    use_rope = md.bool("rope.scaling.finetuned", default=True)
    b = ModelBuilder(model)
    declare_buffers(b, s, n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (s.vocab_size, s.n_embd))
    factors = rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=rope.scaling_type == "longrope")
    cfg = Attention(rope, scale=att_scale or 1.0 / math.sqrt(s.head_dim), factors=factors if use_rope else None)
    b.op("embed", ("tokens",), ("x",), (embd,), **({"scale": embedding} if embedding else {}))
    for i in range(s.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (s.n_embd,)),), eps=eps)
        attention(b, i, s, eps, cfg, out_bias=True, rope=use_rope)
        if residual:
            b.op("scale", ("h",), ("h",), factor=residual)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (s.n_embd,)),), eps=eps)
        glu_ffn(b, i, s.n_embd, n_ff, bias=True)
        if residual:
            b.op("scale", ("h",), ("h",), factor=residual)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, s, eps)
    b.op("scale", ("logits",), ("logits",), factor=_f32(1.0 / logit_scale))
    extra = {"logit_scale": logit_scale, "residual_scale": residual, "embedding_scale": embedding, "attention_scale": att_scale}
    hp = hparams(md, s, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None and use_rope, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(s))
