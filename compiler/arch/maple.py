"""`maple`, as llama.cpp's src/models/maple.cpp builds it (compiler/arch/moe.py moe_transformer):
pre-norm attention with Q and K RMS-normed per head; the sliding-window layers (flags of
`attention.sliding_window_pattern`, required, a window of `attention.sliding_window`) alone rotate
Q and K, with NeoX RoPE over `rope.dimension_count_swa` dims and base `rope.freq_base_swa` (else the
global base; the global scaling), the global layers attending without positions; every FFN a mixture
of `expert_count` experts `expert_feed_forward_length` wide, softmax-routed, renormalized, not scaled,
each gated by ggml_swiglu_clamp: silu(min(g, c)) * clamp(u, -c, c), c = `swiglu_clamp_exp` (one value
for every layer; 0: plain SwiGLU); no weight scales; `output.weight` required."""

from dataclasses import replace

from rfc.compiler.arch.common import Rope
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_HEAD_DIM, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    return Experts(count, used, n_ff_exp, groups=groups, groups_used=groups_used), 0


def _windows(md: Metadata, n_layers: int, rope: Rope) -> tuple[int, tuple[bool, ...], Rope]:
    if not md.is_list("attention.sliding_window_pattern"):
        raise CompileError(f"{md.path}: metadata {md.key('attention.sliding_window_pattern')} must be a per-layer "
                           "array (llama.cpp's maple loader reads no period)")  # fmt: skip
    flags = md.flags("attention.sliding_window_pattern", n_layers)
    local = tuple(i < len(flags) and flags[i] for i in range(n_layers))
    n_rot = md.int("rope.dimension_count_swa", 2, MAX_HEAD_DIM, default=rope.n_rot)
    if n_rot % 2:
        raise CompileError(f"{md.path}: rope.dimension_count_swa {n_rot} must be even")
    base = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
    return md.int("attention.sliding_window", 1, MAX_CONTEXT), local, replace(rope, n_rot=n_rot, freq_base=base)


def _glu(md: Metadata) -> dict:
    limit = md.float("swiglu_clamp_exp", 0.0, 1e6, default=0.0)
    md.ignored("swiglu_clamp_shexp", "maple has no shared experts")
    return {"activation": "silu_clamp", "limit": limit} if limit > 1e-6 else {}


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "maple", _experts, output_required=True, windows=_windows, expert_glu=_glu)
