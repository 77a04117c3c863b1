"""`codeshell` (WisdomShell CodeShell-7B), as llama.cpp's src/models/codeshell.cpp builds it
(compiler/arch/classic.py): sequential LayerNorm blocks, NeoX RoPE over whole heads, biases on
attn_output and the ungated GELU FFN (Q/K/V's where present), `output.weight` required; without a
`token_embd.weight` the embedding is `output.weight` (its loader's fallback)."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic("sequential", full_rotary=True, out_bias=True, ffn_bias=True, embd_from_output=True)


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "codeshell", STYLE)
