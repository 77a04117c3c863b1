"""`exaone` (LG EXAONE 3.0 and 3.5), as llama.cpp's src/models/exaone.cpp builds it: llama's pre-norm
block (compiler/arch/prenorm.py) with NeoX RoPE over whole heads and `rope_freqs` factors where the
file has them, Q/K/V and attn_output biases where present, a SwiGLU FFN without biases or weight
scales; `output.weight`, else the tied embedding. (EXAONE 4.0 is `exaone4`: compiler/arch/exaone4.py.)"""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "exaone", prenorm.Block("neox", factors=True))
