"""`exaone-moe` (LG K-EXAONE), as llama.cpp's src/models/exaone-moe.cpp builds it (compiler/arch/moe.py
moe_transformer): pre-norm attention, Q and K RMS-normed per head, then NeoX RoPE (with `rope_freqs`
factors) on the sliding-window layers only: a window of `attention.sliding_window` (required) on the
layers `attention.sliding_window_pattern` marks (flags, or a period, default 4), the global layers
without positions; `rope.freq_base_swa` is read and not applied (the graph rotates with the one base).
The first `leading_dense_block_count` layers a dense SwiGLU FFN, the others experts
`expert_feed_forward_length` wide (required) scored by `expert_gating_func` (required), with
`exp_probs_b` where present, renormalized when `expert_weights_norm`, times `expert_weights_scale`,
plus a shared SwiGLU expert `expert_shared_feed_forward_length` wide (required); no weight scales;
`output.weight` required; the MTP blocks (`nextn_predict_layers`) are not run."""

from rfc.compiler.arch.common import Rope
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of, read_gating, read_weights_scale
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    n_layers = md.int("block_count", 1, 1 << 16)
    dense_lead = md.int("leading_dense_block_count", 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1 if dense_lead else 0, MAX_FF, default=0)
    md.int("expert_shared_count", 0, 1 << 16, default=0)  # read by the loader; the shared FFN's width decides
    e = Experts(count, used, n_ff_exp, gating=read_gating(md, None, required=True),
                norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                groups_used=groups_used, shared=1, shared_ff=md.int("expert_shared_feed_forward_length", 1, MAX_FF),
                dense_lead=dense_lead)  # fmt: skip
    return e, n_ff


def _windows(md: Metadata, n_layers: int, rope: Rope) -> tuple[int, tuple[bool, ...], Rope]:
    md.ignored("rope.freq_base_swa", "llama.cpp's exaone-moe loader reads it and its graph rotates with rope.freq_base")
    return md.int("attention.sliding_window", 1, MAX_CONTEXT), sliding_window_layers(md, n_layers, 4), rope


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "exaone-moe", _experts, full_rotary=True, factors=True, output_required=True,
                           windows=_windows)  # fmt: skip
