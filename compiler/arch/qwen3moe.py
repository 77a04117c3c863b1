"""`qwen3moe` (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder): qwen3's attention (NeoX RoPE over
the whole head, per-head Q/K norms) and in every layer a mixture of experts without Mixtral's
assumptions: each expert `expert_feed_forward_length` wide (default feed_forward_length /
expert_used_count, as llama.cpp), softmax router, the chosen weights always renormalized
(llama.cpp passes norm_w = true for qwen3moe: Qwen3's norm_topk_prob), no weight scale (it reads
none for qwen3moe), no shared expert. Expert groups apply when the file declares them (llama.cpp
reads expert_group_count for every architecture)."""

from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    n_ff = md.int("feed_forward_length", 0, MAX_FF, default=0)
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=n_ff)
    return Experts(count, used, n_ff_exp, groups=groups, groups_used=groups_used), n_ff


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "qwen3moe", _experts, full_rotary=True, scales=True)
