"""`lfm2moe` (Liquid LFM2-8B-A1B, LFM2-24B-A2B): lfm2's hybrid of gated short-conv and attention
layers (lfm2.py) whose FFN, after the first `leading_dense_block_count` layers, is routed
experts (llama.cpp: src/models/lfm2moe.cpp, which runs lfm2's graph with build_moe_ffn).

What its loader reads differs from the other MoE families': `expert_gating_func` is required
(LFM2-8B-A1B: 2, sigmoid; 0 would reach build_moe_ffn's abort), every MoE layer has a selection
bias `exp_probs_b.bias`, the chosen weights are always renormalized, `expert_weights_scale` is
not read (no scale), there is no shared expert, `expert_feed_forward_length` is required, and
`attention.sliding_window` is not read. Expert groups apply when declared (llama.cpp reads
them for every architecture).

State: as lfm2's (per sequence, (l_cache - 1) x n_embd floats per conv layer; per token, the
attention layers' KV only).
"""

from rfc.compiler.arch.lfm2 import build_hybrid
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.arch.moe import Experts, read_experts_of, read_gating
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return build_hybrid(model, "lfm2moe", _experts)


def _experts(md: Metadata, n_layers: int) -> Experts:
    count, used, n_ff, groups, groups_used = read_experts_of(md, n_ff=None)
    if md.int("expert_gating_func", 0, 16) == 0:  # required here; 0 (none) is no gating build_moe_ffn has
        raise CompileError(f"{md.path}: metadata {md.key('expert_gating_func')} = 0 names no gating function")
    dense = md.int("leading_dense_block_count", 0, n_layers, default=0)
    for i in range(dense, n_layers):  # llama.cpp's loader requires the selection bias of every MoE layer
        if f"blk.{i}.exp_probs_b.bias" not in md.model.tensors:
            raise CompileError(f"{md.path}: missing tensor blk.{i}.exp_probs_b.bias ({md.arch}'s MoE layers have one)")
    return Experts(count, used, n_ff, gating=read_gating(md, "softmax"), groups=groups, groups_used=groups_used,
                   dense_lead=dense)  # fmt: skip
