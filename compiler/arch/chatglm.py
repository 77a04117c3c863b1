"""`chatglm` (ChatGLM3-6B, GLM-4-9B as the older converter wrote it), as llama.cpp's
src/models/chatglm.cpp builds it: llama's pre-norm block (compiler/arch/prenorm.py) with
adjacent-pair RoPE over the first `rope.dimension_count` dims of each head (ChatGLM rotates half),
Q/K/V biases where the file has them, no attn_output bias (its loader has none), and gate and up
fused in one `ffn_up` [2 n_ff] (gate first: ggml_swiglu of the fused row) without biases or weight
scales; `output.weight`, else the tied embedding. (GLM-4 as the newer converter writes it is `glm4`.)"""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, glu_ffn
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("adjacent", full_rotary=False, out_bias=False, out_bias_loaded=False)


def _ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
    glu_ffn(b, i, sizes.n_embd, n_ff, fused_gate_up=True, bias=False, scale=False)
    return False


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "chatglm", BLOCK, ffn=_ffn)
