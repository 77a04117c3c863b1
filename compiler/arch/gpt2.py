"""`gpt2` (OpenAI GPT-2 and its fine-tunes), as llama.cpp's src/models/gpt2.cpp builds it
(compiler/arch/classic.py): learned absolute positions (`position_embd`, one row per position of
the trained context, added to the token embedding), sequential pre-LayerNorm blocks, a fused
`attn_qkv` with its bias, biases on attn_output, ffn_up and ffn_down, an ungated GELU FFN;
`output.weight` (no bias), else the tied embedding."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic(
    "sequential", full_rotary=False, out_bias=True, ffn_bias=True, output_required=False, rope=False, learned="required"
)


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "gpt2", STYLE)
