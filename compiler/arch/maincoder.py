"""`maincoder` (Maincode's Maincoder), as llama.cpp's src/models/maincoder.cpp builds it: llama's
pre-norm block (compiler/arch/prenorm.py) with adjacent-pair RoPE over whole heads, then Q and K
RMS-normed per head (`attn_q_norm` / `attn_k_norm` [head_dim]) after RoPE, Q/K/V and attn_output
biases where the file has them, a SwiGLU FFN without biases or weight scales; `output.weight`,
else the tied embedding."""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "maincoder", prenorm.Block("adjacent", qk_norm_after_rope=True))
