"""`olmo` (AllenAI OLMo 1: 1B, 7B), as llama.cpp's src/models/olmo.cpp builds it: llama's pre-norm block
(compiler/arch/prenorm.py) with LayerNorms that have neither weight nor bias (before attention, FFN
and output), adjacent-pair RoPE over whole heads, no biases (its loader reads none), a SwiGLU FFN;
`output.weight`, else the tied embedding; with `attention.clamp_kqv` > 0 (OLMo 1.7) Q, K and V are
clamped to [-c, c] after their matmuls. (OLMo 2 and 3 are `olmo2`.)"""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("adjacent", out_bias=False, out_bias_loaded=False, norm="plain", clamp_kqv=True)


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "olmo", BLOCK)
