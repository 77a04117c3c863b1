"""`maple`, as llama.cpp's src/models/maple.cpp builds it (compiler/arch/moe.py moe_transformer):
pre-norm attention with Q and K RMS-normed per head; the sliding-window layers (flags of
`attention.sliding_window_pattern`, required, a window of `attention.sliding_window`) alone rotate
Q and K, with NeoX RoPE over `rope.dimension_count_swa` dims and base `rope.freq_base_swa` (else the
global base; the global scaling), the global layers attending without positions; every FFN a mixture
of `expert_count` experts `expert_feed_forward_length` wide, softmax-routed, renormalized, not scaled,
each gated by ggml_swiglu_clamp: silu(min(g, c)) * clamp(u, -c, c), c = `swiglu_clamp_exp` (one value
for every layer; 0: plain SwiGLU); no weight scales; `output.weight` required."""

from rfc.compiler.arch.common import Rope
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.arch.moe import Experts, clamped, moe_transformer, read_experts_of
from rfc.compiler.arch.swa import sliding_layers, sliding_rope
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    return Experts(count, used, n_ff_exp, groups=groups, groups_used=groups_used), 0


def _windows(md: Metadata, n_layers: int, rope: Rope) -> tuple[int, tuple[bool, ...], Rope]:
    window, local = sliding_layers(md, n_layers)
    return window, local, sliding_rope(md, rope)


def _glu(md: Metadata) -> dict:
    limit = md.float("swiglu_clamp_exp", 0.0, 1e6, default=0.0)
    md.ignored("swiglu_clamp_shexp", "maple has no shared experts")
    return clamped("silu_clamp", limit)


def build(model: GGUFModel) -> ModelSpec:
    return moe_transformer(model, "maple", _experts, output_required=True, windows=_windows, moe_args=_glu)
