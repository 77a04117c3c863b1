"""`xverse` (XVERSE 7B, 13B, 65B), as llama.cpp's src/models/xverse.cpp builds it: llama's pre-norm
block (compiler/arch/prenorm.py) with adjacent-pair RoPE over whole heads, Q/K/V biases where the
file has them, no attn_output bias (its loader has none: a file with one is refused), a SwiGLU FFN
without biases or weight scales, and a required `output.weight`."""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("adjacent", out_bias=False, out_bias_loaded=False, output_required=True)


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "xverse", BLOCK)
