"""`pangu-embedded` (Huawei openPangu-Embedded 1B/7B), as llama.cpp's src/models/pangu-embed.cpp
builds it: llama's pre-norm block (compiler/arch/prenorm.py) with NeoX RoPE over whole heads (the
graph asserts it) and no frequency factors (its loader reads `rope_freqs` / LongRoPE factors and its
graph passes none: known and unused), Q/K/V biases and weight scales where present, a biased
`attn_output`, a SwiGLU FFN without biases or scales; `output.weight`, else tied."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

UNAPPLIED = "llama.cpp's pangu-embedded loader reads it and its graph does not apply it"


def _declare(b: ModelBuilder, sizes: Sizes) -> None:
    for name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"):
        b.unused(name, UNAPPLIED)


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "pangu-embedded", prenorm.Block("neox"), declare=_declare)
