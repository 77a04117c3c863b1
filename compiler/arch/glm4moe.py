"""`glm4moe` (GLM-4.5, GLM-4.6, GLM-4.5-Air), as llama.cpp builds it (src/models/glm4-moe.cpp):
moe.py's MoE stack with
- attention: Q/K/V biases where the file has them, per-head Q/K norms where it has them (the
  355B variant), NeoX RoPE over the first `rope.dimension_count` of each head (partial: GLM-4.5
  rotates 64 of 128), scale 1/sqrt(head_dim);
- the FFN's input norm named `post_attention_norm`;
- the first `leading_dense_block_count` layers a dense SwiGLU FFN (`feed_forward_length` wide);
  the others routed experts (`expert_feed_forward_length` wide, required) scored by a sigmoid
  (expert_gating_func, default sigmoid), chosen with the selection bias `exp_probs_b` (required
  in every MoE layer), their weights renormalized when `expert_weights_norm` and scaled by
  `expert_weights_scale`, beside `expert_shared_count` shared experts (required);
- the last `nextn_predict_layers` blocks are multi-token prediction (MTP) heads, not part of the
  forward pass: skipped, as llama.cpp skips them (moe_transformer).
When `rope.dimension_sections` sets the t and h counts (GLM-4.5V's text stack) llama.cpp's rope
type is M-RoPE, which for text tokens turns the pairs as NeoX RoPE does where the sections give each
a text position (compiler/arch/mrope.py): planned as without them."""

from rfc.compiler.arch import mrope
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.arch.moe import (
    Experts,
    moe_transformer,
    read_experts_of,
    read_leading_dense,
    read_gating,
    read_weights_scale,
)
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "glm4moe"


def _experts(md: Metadata) -> tuple[Experts, int]:
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    dense_lead, n_ff, shared = read_leading_dense(md)
    n_layers = md.int("block_count", 1, 1 << 16)  # read_sizes bounded it already
    e = Experts(count, used, n_ff_exp, gating=read_gating(md, "sigmoid"),
                norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                groups_used=groups_used, shared=shared, dense_lead=dense_lead)  # fmt: skip
    for i in range(dense_lead, n_layers - md.int("nextn_predict_layers", 0, n_layers - 1, default=0)):
        if f"blk.{i}.exp_probs_b.bias" not in md.model.tensors:
            raise CompileError(
                f"{md.path}: missing tensor blk.{i}.exp_probs_b.bias ({ARCH}'s router has a selection bias)"
            )
    return e, n_ff


_ROPE = mrope.rope_hook(required=False, interleaved=False, when_used=True)  # M-RoPE where use_mrope()


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, ARCH, _experts, ffn_norm="post_attention_norm", rope=_ROPE)
