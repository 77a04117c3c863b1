"""`deepseek` (DeepSeek-MoE 16B, DeepSeek-V1 MoE models), as llama.cpp's src/models/deepseek.cpp
builds it: llama's attention (adjacent-pair RoPE over whole heads, `rope_freqs` factors where the
file has them, Q/K/V and attn_output biases where present), then the first
`leading_dense_block_count` layers a dense SwiGLU FFN `feed_forward_length` wide and the others
`expert_count` SwiGLU experts `expert_feed_forward_length` wide, softmax-routed, the chosen weights
not renormalized and times `expert_weights_scale` (0 or absent: none), plus `expert_shared_count`
shared experts (one SwiGLU FFN of that many times the expert width) that every token runs; no weight
scales (its graph passes none). `output.weight`, else the tied embedding. (DeepSeek-V2/V3 with
multi-head latent attention are `deepseek2`.)"""

from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of, read_leading_dense, read_weights_scale
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    dense_lead, n_ff, shared = read_leading_dense(md)
    e = Experts(count, used, n_ff_exp, norm=False, scale=read_weights_scale(md), groups=groups,
                groups_used=groups_used, shared=shared, dense_lead=dense_lead)  # fmt: skip
    return e, n_ff


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "deepseek", _experts, full_rotary=True, rope_style="adjacent", factors=True)
