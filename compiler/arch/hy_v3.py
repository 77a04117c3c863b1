"""`hy_v3` (Tencent Hunyuan 3, 30B-A3B), as llama.cpp's src/models/hy-v3.cpp builds it (compiler/arch/moe.py
moe_transformer): pre-norm attention with Q/K/V biases and weight scales where present, per-head Q/K
RMS norms before NeoX RoPE over whole heads (`rope_freqs` factors where present), `attn_output` with its
bias and scale; a layer with a router (`ffn_gate_inp`) runs experts, the others (leading, as
first_k_dense_replace makes them) a SwiGLU FFN with its weight scales (its loader reads no biases).
The experts: routed by `expert_gating_func` (default sigmoid) with the selection bias `exp_probs_b` (a
tensor without a `.bias` suffix) where present, renormalized and scaled where the file says, gate and
up possibly fused, every `.scale` applied, plus one always-on shared expert
`expert_shared_feed_forward_length` wide (else the experts' width), whatever `expert_shared_count`
says (llama.cpp's graph always adds it). The dense FFN tensors its loader also reads in expert layers
are left unused, as its graph leaves them; the MTP blocks (`nextn_predict_layers`) are not run."""

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of, read_gating, read_weights_scale
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

DENSE = ("ffn_gate", "ffn_up", "ffn_down")


def _experts(md: Metadata) -> tuple[Experts, int]:
    n_layers = md.int("block_count", 1, 1 << 16) - md.int("nextn_predict_layers", 0, 1 << 16, default=0)
    routed = [f"blk.{i}.ffn_gate_inp.weight" in md.model.tensors for i in range(max(0, n_layers))]
    dense_lead = routed.index(True) if True in routed else len(routed)
    if not all(routed[dense_lead:]) or dense_lead == len(routed):
        raise CompileError(f"{md.path}: hy_v3's expert layers (those with ffn_gate_inp) must follow its dense ones")
    n_ff = md.int("feed_forward_length", 1 if dense_lead else 0, MAX_FF, default=0)
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=n_ff)
    shared_ff = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0) or n_ff_exp
    md.ignored("expert_shared_count", "hy_v3's graph always adds its one shared expert")
    e = Experts(count, used, n_ff_exp, gating=read_gating(md, "sigmoid"),
                norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                groups_used=groups_used, shared=1, shared_ff=shared_ff, dense_lead=dense_lead,
                fused_gate_up=True)  # fmt: skip
    return e, n_ff


def _unused(b: ModelBuilder, n_layers: int) -> None:
    for i in range(n_layers):
        if b.has(f"blk.{i}.ffn_gate_inp.weight"):
            for name in DENSE:
                for part in ("weight", "scale"):
                    b.unused(f"blk.{i}.{name}.{part}", "a dense FFN tensor in an expert layer: the experts run")


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "hy_v3", _experts, full_rotary=True, scales=True, factors=True,
                           moe_args=lambda md: {"probs_bias": "exp_probs_b"}, unused=_unused)  # fmt: skip
