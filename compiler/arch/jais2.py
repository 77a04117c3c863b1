"""`jais2` (Inception / MBZUAI Jais 2), as llama.cpp's src/models/jais2.cpp builds it
(compiler/arch/classic.py): sequential LayerNorm blocks, NeoX RoPE over whole heads, biases on
attn_output and an ungated squared-ReLU FFN (Q/K/V's where present); `output.weight`, else the
tied embedding. (The first Jais, with ALiBi, is `jais`: refused.)"""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic(
    "sequential", full_rotary=True, out_bias=True, ffn_bias=True, output_required=False, activation="relu_sqr"
)


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "jais2", STYLE)
