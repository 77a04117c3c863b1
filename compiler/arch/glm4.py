"""`glm4` (GLM-4-9B-0414, GLM-4-32B-0414, GLM-Z1), dense, as llama.cpp's src/models/glm4.cpp
builds it: llama's pre-norm block with sandwich norms, x += post_attention_norm(attention(
attn_norm(x))), then x += post_ffw_norm(FFN(ffn_norm(x))); GQA attention with adjacent-pair RoPE
(llama.cpp's rope type NORM) over the first `rope.dimension_count` dims of each head (GLM-4:
half), Q/K/V biases where the file has them, no output bias; the FFN SwiGLU from one `ffn_up`
of 2 n_ff rows, gate first (split at compile time, as phi3's); `output.weight`, else the tied
embedding. The last `nextn_predict_layers` blocks (MTP) are not run, as llama.cpp does not run
them. When `rope.dimension_sections` sets the t and h counts (GLM-4V's, GLM-OCR's text stack)
llama.cpp's rope type is M-RoPE, which for text tokens turns the pairs as NeoX RoPE does where the
sections give each a text position (compiler/arch/mrope.py): planned so; other sections leave it
NORM."""

import math
from dataclasses import replace

from rfc.compiler.arch import mrope
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, glu_ffn, hparams, kv_spec, output_head, read_rope, read_sizes,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "glm4")
    sizes = read_sizes(md)
    nextn = md.int("nextn_predict_layers", 0, sizes.n_layers - 1, default=0)
    sizes = replace(sizes, n_layers=sizes.n_layers - nextn)
    # M-RoPE when the sections set t and h (use_mrope: GLM-4V's text stack), which on text is NeoX
    # RoPE where they give every rotary pair a text position; else adjacent pairs (NORM)
    sections = mrope.read(md, required=False)
    rope = read_rope(md, sizes, "neox" if mrope.used(sections) else "adjacent")
    if mrope.used(sections):
        rope = mrope.text_rope(md, sections, rope, sizes.head_dim, interleaved=False)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim))
    b.op("embed", ("tokens",), ("x",), (embd,))
    e = (sizes.n_embd,)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", e),), eps=eps)
        attention(b, i, sizes, eps, cfg)
        b.op(
            "rmsnorm", ("h",), ("h",), (b.tensor(p + "post_attention_norm.weight", "post_attention_norm", e),), eps=eps
        )
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", e),), eps=eps)
        glu_ffn(b, i, sizes.n_embd, n_ff, fused_gate_up=True, bias=False, scale=False)  # build_ffn(up, NULL, NULL, ...)
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "post_ffw_norm.weight", "post_ffw_norm", e),), eps=eps)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps)
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra={"nextn_predict_layers": nextn} if nextn else {})  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
