"""`starcoder2` (BigCode StarCoder2 3B/7B/15B), as llama.cpp's src/models/starcoder2.cpp builds it
(compiler/arch/classic.py): sequential pre-LayerNorm blocks, NeoX RoPE over whole heads, biases on
every matmul (attn_output, ffn_up, ffn_down required; Q/K/V where present), an ungated GELU FFN;
`output.weight` (no bias), else the tied embedding."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic("sequential", full_rotary=True, out_bias=True, ffn_bias=True, output_required=False)


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "starcoder2", STYLE)
