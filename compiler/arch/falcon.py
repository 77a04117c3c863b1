"""`falcon` (TII Falcon-7B / 40B / 180B; Falcon 3 is `llama`), as llama.cpp's src/models/falcon.cpp
builds it (compiler/arch/classic.py): one LayerNorm feeds attention and the GELU FFN in parallel
(the 40B's layers LayerNorm attention's input apart by `attn_norm_2`, the FFN still reading
attn_norm's), a fused `attn_qkv` (multi-query in the 7B), NeoX RoPE over whole heads, no bias on
attn_output or the FFN (its loader reads none); `output.weight`, else the tied embedding."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic(
    "shared", full_rotary=True, out_bias=False, ffn_bias=False, output_required=False, attn_norm_2=True
)


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "falcon", STYLE)
