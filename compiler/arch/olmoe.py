"""`olmoe` (AllenAI OLMoE-1B-7B), as llama.cpp's src/models/olmoe.cpp builds it: pre-norm attention
with Q and K RMS-normed over their whole rows (`attn_q_norm` / `attn_k_norm`) before NeoX RoPE over
whole heads, then in every layer `expert_count` SwiGLU experts `feed_forward_length` wide (its
loader sizes the experts by it), softmax-routed, the chosen weights neither renormalized nor scaled
(norm_w false; no expert_weights_scale read), no shared expert, no weight scales (its graph passes
none). `output.weight` is required."""

from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    count, used, _, groups, groups_used = read_experts_of(md, n_ff=n_ff, expert_ff=False)
    return Experts(count, used, n_ff, norm=False, groups=groups, groups_used=groups_used), 0


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "olmoe", _experts, full_rotary=True, qk_norm_rows=True, output_required=True)
