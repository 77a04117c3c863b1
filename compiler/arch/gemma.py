"""`gemma` (Gemma 1: 2B, 7B; CodeGemma), as llama.cpp's src/models/gemma.cpp builds it: the token
embedding times sqrtf(n_embd); pre-norm attention (NeoX RoPE, Q scaled by 1/sqrtf(head_dim) with
head_dim from attention.key_length, Q/K/V biases where the file has them, no attn_output bias) and
a GELU(tanh)-gated FFN without biases or weight scales, each added to the residual without Gemma 2's
post-norms; no soft-capping, no sliding window; the output is always the tied embedding (its
loader reads no output.weight). The converter already stores Gemma's norm weights as 1 + w."""

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, glu_ffn, hparams, kv_spec, output_head, read_rope, read_sizes,
)  # fmt: skip
from rfc.compiler.arch.gemma2 import embedding_scale, query_scale
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "gemma")
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,), scale=embedding_scale(sizes))
    cfg = Attention(rope, scale=query_scale(sizes, big=False))
    e = (sizes.n_embd,)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", e),), eps=eps)
        attention(b, i, sizes, eps, cfg, out_bias=False)  # build_attn(wo, NULL, wo_s)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", e),), eps=eps)
        glu_ffn(b, i, sizes.n_embd, n_ff, activation="gelu_tanh", bias=False, scale=False)
        b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, always_tied=True)
    extra = {"embedding_scale": embedding_scale(sizes), "query_scale": cfg.scale}
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
