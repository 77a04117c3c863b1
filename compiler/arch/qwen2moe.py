"""`qwen2moe` (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B), as llama.cpp's src/models/qwen2moe.cpp builds it:
qwen2's attention (NeoX RoPE over whole heads, Q/K/V and attn_output biases where the file has
them) and in every layer `expert_count` SwiGLU experts `expert_feed_forward_length` wide (default
feed_forward_length / expert_used_count), softmax-routed, the chosen weights not renormalized and
not scaled (its graph passes norm_w false and reads no expert_weights_scale), plus one shared
SwiGLU expert `expert_shared_feed_forward_length` wide (default feed_forward_length) whose output
is scaled per token by sigmoid(ffn_gate_inp_shexp x); no weight scales (its graph passes none).
`output.weight` is required."""

from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    n_ff = md.int("feed_forward_length", 0, MAX_FF, default=0)
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=n_ff)
    shared_ff = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0) or n_ff
    e = Experts(count, used, n_ff_exp, norm=False, groups=groups, groups_used=groups_used, shared=1,
                shared_ff=shared_ff, shared_gate=True)  # fmt: skip
    return e, n_ff


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "qwen2moe", _experts, full_rotary=True, output_required=True)
