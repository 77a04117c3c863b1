"""`dots1` (rednote dots.llm1), as llama.cpp's src/models/dots1.cpp builds it: pre-norm attention with
Q and K RMS-normed per head (`attn_q_norm` / `attn_k_norm` [head_dim]) before NeoX RoPE over whole
heads, Q/K/V and attn_output biases where the file has them; then the first
`leading_dense_block_count` layers a dense SwiGLU FFN and the others `expert_count` SwiGLU experts
`expert_feed_forward_length` wide, scored by `expert_gating_func` (required: llama.cpp aborts
without one), chosen with the selection bias `exp_probs_b.bias` where present, renormalized when
`expert_weights_norm` and times `expert_weights_scale`, plus `expert_shared_count` shared experts;
no weight scales (its graph passes none). `output.weight` is required."""

from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.arch.moe import (
    Experts,
    moe_transformer,
    read_experts_of,
    read_gating,
    read_leading_dense,
    read_weights_scale,
)
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    dense_lead, n_ff, shared = read_leading_dense(md)
    gating = read_gating(md, None)
    e = Experts(count, used, n_ff_exp, gating=gating, norm=md.bool("expert_weights_norm", default=False),
                scale=read_weights_scale(md), groups=groups, groups_used=groups_used, shared=shared,
                dense_lead=dense_lead)  # fmt: skip
    return e, n_ff


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "dots1", _experts, full_rotary=True, output_required=True)
