"""`qwen2vl` (Qwen2-VL, Qwen2.5-VL) and `paddleocr` (PaddleOCR-VL): the text stacks of the vision
models, as llama.cpp's src/models/qwen2vl.cpp and paddleocr.cpp build them for text tokens: llama's
pre-norm block (compiler/arch/prenorm.py), attention with Q/K/V biases where present and M-RoPE over
whole heads, which for a text token is NeoX RoPE (compiler/arch/mrope.py checks that the sections
turn every rotary pair by the token's position); the FFN SwiGLU (build_ffn without biases or scales);
`output.weight`, else tied. Images are the vision tower's (a separate mmproj file rfc does not run):
this serves the text part.

qwen2vl: `rope.dimension_sections` required (llama.cpp requires it); no attn_output.bias in its
loader (a file with one is refused); `output.bias` loaded and not added by its graph. llama.cpp
0.3.36's qwen2vl loader reads no `attention.layer_norm_rms_epsilon` (so it runs with 0); rfc takes the
file's (the model's own, 1e-6 in Qwen2-VL's conversions; its saver writes 0, accepted as written).

paddleocr: ernie4_5's loader with only its dense layers (the expert keys are not read for this
architecture), so `attn_output.bias` where present, added by this graph; the rope type is always
M-RoPE, so the optional sections must describe text positions (all zeros are refused, as ggml
asserts a count).
"""

from rfc.compiler.arch import mrope, prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

QWEN2VL = prenorm.Block("neox", out_bias=False, out_bias_loaded=False, output_bias=False, zero_eps=True)
PADDLEOCR = prenorm.Block("neox")


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "qwen2vl", QWEN2VL, rope=mrope.rope_hook(required=True, interleaved=False))


def build_paddleocr(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "paddleocr", PADDLEOCR, rope=mrope.rope_hook(required=False, interleaved=False))
