"""`arctic` (Snowflake Arctic), as llama.cpp's src/models/arctic.cpp builds it: llama's attention
(adjacent-pair RoPE over whole heads, Q/K/V biases where the file has them, no attn_output bias),
then a dense residual SwiGLU FFN n_embd wide after `ffn_norm`, and beside it a mixture of
`expert_count` SwiGLU experts `feed_forward_length` wide that reads the layer's input (before
attention) through its own norm `ffn_norm_exps`: softmax-routed, renormalized, not scaled (its
loader reads no expert_weights_scale), no weight scales (its graph passes none):

    m = norm_exps(x);  x += attn(attn_norm(x));  x += FFN(ffn_norm(x));  x += experts(m)

`output.weight`, else the tied embedding."""

import math

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, glu_ffn, hparams, kv_spec, output_head, read_rope, read_sizes,
    require_whole_heads,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "arctic")
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "adjacent")
    require_whole_heads(md, rope, sizes, "arctic")
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    count, used, _, groups, groups_used = read_experts_of(md, n_ff=n_ff, expert_ff=False)
    e = Experts(count, used, n_ff, groups=groups, groups_used=groups_used)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    n = sizes.n_embd
    b = ModelBuilder(model)
    declare_buffers(b, sizes, n)  # the dense FFN is n_embd wide
    declare_expert_buffers(b, n, e)
    b.buffer("m", "T", n)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n)),))
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("m",), (b.tensor(p + "ffn_norm_exps.weight", "ffn_norm_exps", (n,)),), eps=eps)
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        attention(b, i, sizes, eps, cfg, out_bias=False)  # build_attn(wo, NULL, wo_s)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        glu_ffn(b, i, n, n, bias=False, scale=False)
        b.op("add", ("x", "h"), ("x",))
        moe_block(b, i, sizes, e, src="m")
    tied = output_head(b, sizes, eps, bias=False)
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=e.hparams() | {"dense_residual_ffn": n})  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
