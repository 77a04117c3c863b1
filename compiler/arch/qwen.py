"""`qwen` (the first Qwen: Qwen-1.8B/7B/14B/72B), as llama.cpp's src/models/qwen.cpp builds it: llama's
pre-norm block (compiler/arch/prenorm.py) with a fused `attn_qkv` and its bias, NeoX RoPE, no
attn_output bias (its loader has none), a SwiGLU FFN `feed_forward_length` / 2 wide (the loader's
reading of Qwen's intermediate_size) without biases or weight scales; `output.weight` required.
(Qwen 1.5 and later are `qwen2`.)"""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", full_rotary=False, out_bias=False, out_bias_loaded=False, output_required=True,
                      halved_ff=True)  # fmt: skip


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "qwen", BLOCK)
