"""`qwen35moe` (Qwen3.5-35B-A3B, Qwen3.6-35B-A3B, Qwen3.5-122B-A10B, -397B-A17B): qwen35's hybrid
stack (Gated DeltaNet layers and gated full attention, qwen35.py) with a mixture of experts in
place of every layer's FFN, as llama.cpp's src/models/qwen35moe.cpp builds it:

- routed experts `expert_feed_forward_length` wide (default feed_forward_length / used), a
  softmax router whose chosen weights are always renormalized (llama.cpp hard-codes softmax
  and norm_w for this architecture: it reads neither expert_gating_func nor
  expert_weights_scale, so neither does this recipe);
- one shared expert `expert_shared_feed_forward_length` wide (default feed_forward_length),
  required in every layer, its output times sigmoid(ffn_gate_inp_shexp · x): a 1-wide gate per
  token (moe.py: a matmul to one column and swiglu 'sigmoid' broadcasting it);
- nextn_predict_layers multi-token-prediction blocks at the end are not run (as llama.cpp).
Every layer has the same router shape, which the cpu step program needs."""

from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, read_experts_of
from rfc.compiler.arch.qwen35 import hybrid
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def read_gated_experts(md: Metadata) -> tuple[Experts, int]:
    """(the experts with their gated shared expert, feed_forward_length or 0; no layer has a dense
    FFN): llama.cpp's load_hparams for qwen35moe and qwen3next (the same keys and defaults;
    expert_shared_count is not read)."""
    n_ff = md.int("feed_forward_length", 0, MAX_FF, default=0)
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=n_ff)
    if n_ff:
        shared_ff = md.int("expert_shared_feed_forward_length", 1, MAX_FF, default=n_ff)
    else:
        shared_ff = md.int("expert_shared_feed_forward_length", 1, MAX_FF)
    e = Experts(count, used, n_ff_exp, groups=groups, groups_used=groups_used, shared=1, shared_ff=shared_ff,
                shared_gate=True, fused_gate_up=True)  # fmt: skip
    return e, n_ff


def build(model: GGUFModel) -> ModelSpec:
    return hybrid(model, "qwen35moe", experts=read_gated_experts)
