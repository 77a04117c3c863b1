"""`plamo` (Preferred Networks PLaMo-13B), as llama.cpp's src/models/plamo.cpp builds it: one RMS norm
feeds attention and the SwiGLU FFN in parallel, x += attn(h) + FFN(h) (compiler/arch/prenorm.py),
NeoX RoPE over whole heads, Q/K/V biases where the file has them, no attn_output bias (its loader
has none); `output.weight` required."""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", out_bias=False, out_bias_loaded=False, output_required=True, parallel=True)


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "plamo", BLOCK)
