"""`orion` (OrionStar Orion-14B), as llama.cpp's src/models/orion.cpp builds it: the pre-norm block
of compiler/arch/prenorm.py with LayerNorms (weight and bias, `attention.layer_norm_epsilon`) before
attention, before the FFN and before the output, NeoX RoPE over whole heads, Q/K/V biases where the
file has them, no attn_output bias (its loader has none), a SwiGLU FFN without biases or weight
scales, and a required `output.weight`."""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", out_bias=False, out_bias_loaded=False, output_required=True, norm="layer")


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "orion", BLOCK)
