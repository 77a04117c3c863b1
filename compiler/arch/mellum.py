"""`mellum` (JetBrains Mellum MoE), as llama.cpp's src/models/mellum.cpp builds it: pre-norm attention
with Q and K RMS-normed per head before NeoX RoPE over whole heads, Q/K/V and attn_output biases
where the file has them; with `attention.sliding_window` > 0 the layers `attention.sliding_window_pattern`
marks (default period 4) attend within the window and rotate unscaled (freq_scale 1, no YaRN: the
graph passes rope.freq_base with 1.0, 0.0 and 1.0; `rope.freq_base_swa` is read and unused, as there),
the others globally with the file's rope scaling; then in every layer `expert_count` SwiGLU experts
`expert_feed_forward_length` wide, softmax-routed, renormalized, not scaled (its loader reads no
expert_weights_scale), with the experts' weight scales where the file has them. `output.weight` is
required."""

import math
from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, declare_buffers, hparams, kv_spec, output_head, read_rope, read_sizes, require_output,
    require_whole_heads,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.metadata import MAX_CONTEXT, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "mellum")
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    require_whole_heads(md, rope, sizes, "mellum")
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    e = Experts(count, used, n_ff_exp, groups=groups, groups_used=groups_used)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    window = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0)
    local = sliding_window_layers(md, sizes.n_layers, 4) if window else (False,) * sizes.n_layers
    if window:
        md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)  # read, never applied
    b = ModelBuilder(model)
    require_output(b, "mellum")
    declare_buffers(b, sizes, n_ff_exp)
    declare_expert_buffers(b, sizes.n_embd, e)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd)),))
    full = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), qk_norm=True)
    swa = replace(full, window=window or None).with_rope(freq_scale=1.0, ext_factor=0.0, attn_factor=1.0)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        attention(b, i, sizes, eps, swa if local[i] else full)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (sizes.n_embd,)),), eps=eps)
        moe_block(b, i, sizes, e, scales=True)
    tied = output_head(b, sizes, eps, bias=False)
    extra = e.hparams()
    if window:
        extra.update(sliding_window=window, sliding_window_layers=[i for i, on in enumerate(local) if on])
    hp = hparams(md, sizes, rope, n_ff_exp, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
