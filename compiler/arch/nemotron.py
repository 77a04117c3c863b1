"""`nemotron` (NVIDIA Nemotron-3 / Nemotron-4 / Minitron), as llama.cpp's src/models/nemotron.cpp
builds it: the pre-norm block of compiler/arch/prenorm.py with LayerNorms (weight and bias,
`attention.layer_norm_epsilon`; the converter already stores Nemotron's layernorm1p weights as
1 + w) before attention, FFN and output, NeoX RoPE over the first `rope.dimension_count` dims of
each head, Q/K/V and attn_output biases where the file has them, and an ungated FFN
ffn_down(relu(ffn_up h)^2) with its biases where present; `output.weight` required. (The hybrid
Nemotron-H is `nemotron_h`.)"""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, ungated_ffn
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

BLOCK = prenorm.Block("neox", full_rotary=False, output_required=True, norm="layer")


def _ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
    ungated_ffn(b, i, sizes.n_embd, n_ff, "relu_sqr", bias=True)
    return False


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "nemotron", BLOCK, ffn=_ffn)
