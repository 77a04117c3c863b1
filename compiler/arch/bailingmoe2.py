"""`bailingmoe2` (inclusionAI Ling 2.0 / Ring 2.0: mini 16B-A1B, flash 100B-A6B), as llama.cpp's
src/models/bailingmoe2.cpp builds it: compiler/arch/moe.py's MoE stack (pre-norm GQA attention,
Q and K RMS-normed per head before NeoX RoPE over the first `rope.dimension_count` dims; Q, K, V
from the fused `attn_qkv` the loader requires) whose FFN after the first
`leading_dense_block_count` layers is `expert_count` SwiGLU experts `expert_feed_forward_length`
wide: gating by `expert_gating_func` (required), the choice by score + `exp_probs_b` where
present, weights renormalized when `expert_weights_norm` and scaled by `expert_weights_scale`,
plus `expert_shared_count` (required, at least 1: the graph always adds them) shared experts
`expert_shared_feed_forward_length` (else the expert width) wide each, as one SwiGLU FFN;
`output.weight` required; the last `nextn_predict_layers` (MTP) blocks are not run.
"""

from rfc.compiler.arch.metadata import MAX_EXPERTS, MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of, read_gating, read_weights_scale
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "bailingmoe2"


def _experts(md: Metadata) -> tuple[Experts, int]:
    n_layers = md.int("block_count", 1, 1 << 16)  # read_sizes bounded it already
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    dense_lead = md.int("leading_dense_block_count", 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1 if dense_lead else 0, MAX_FF, default=0)
    gating = read_gating(md, None, required=True)
    shared = md.int("expert_shared_count", 1, MAX_EXPERTS)
    shared_ff = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0) or n_ff_exp
    e = Experts(count, used, n_ff_exp, gating=gating, norm=md.bool("expert_weights_norm", default=False),
                scale=read_weights_scale(md), groups=groups, groups_used=groups_used, shared=shared,
                shared_ff=shared * shared_ff, dense_lead=dense_lead)  # fmt: skip
    return e, n_ff


def build(model: GGUFModel) -> ModelSpec:
    for name in ("output.weight", "blk.0.attn_qkv.weight"):
        if name not in model.tensors:
            raise CompileError(f"{model.path.name}: missing tensor {name} ({ARCH}'s loader requires it)")
    return moe_transformer(model, ARCH, _experts)
