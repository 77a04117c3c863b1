"""`internlm2` (InternLM2, InternLM2.5), as llama.cpp's src/models/internlm2.cpp builds it: llama's
pre-norm block (compiler/arch/prenorm.py) with adjacent-pair RoPE over whole heads, Q/K/V and
attn_output biases where the file has them, a SwiGLU FFN without biases or weight scales, and a
required `output.weight` (no tied fallback in its loader)."""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "internlm2", prenorm.Block("adjacent", output_required=True))
