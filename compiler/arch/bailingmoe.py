"""`bailingmoe` (inclusionAI Ling-lite / Ling-plus, the first Bailing MoE), as llama.cpp's
src/models/bailingmoe.cpp builds it: llama's attention (adjacent-pair RoPE over whole heads of
`rope.dimension_count`, `rope_freqs` factors where the file has them, Q/K/V and attn_output biases
where present, scores x 1/sqrt(rope.dimension_count)), then in every layer `expert_count` SwiGLU
experts `expert_feed_forward_length` wide, softmax-routed, renormalized when `expert_weights_norm`,
times `expert_weights_scale`, plus `expert_shared_count` (required) shared experts; no weight
scales (its graph passes none). `output.weight` is required. (Ling 2 is `bailingmoe2`.)"""

from rfc.compiler.arch.metadata import MAX_EXPERTS, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of, read_weights_scale
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    # the loader reads leading_dense_block_count and then builds experts in every layer: so does this
    md.int("leading_dense_block_count", 0, 1 << 16, default=0)
    shared = md.int("expert_shared_count", 0, MAX_EXPERTS)
    e = Experts(count, used, n_ff_exp, norm=md.bool("expert_weights_norm", default=False),
                scale=read_weights_scale(md), groups=groups, groups_used=groups_used, shared=shared)  # fmt: skip
    return e, 0


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(
        model, "bailingmoe", _experts, full_rotary=True, rope_style="adjacent", factors=True, output_required=True
    )
