"""`phi2` (Microsoft Phi-2, Phi-1.5), as llama.cpp's src/models/phi2.cpp builds it
(compiler/arch/classic.py): one LayerNorm feeds attention and the GELU FFN in parallel, NeoX RoPE
over the first `rope.dimension_count` dims of each head, Q scaled by 1/sqrt(head_dim), every
matmul with its bias (attn_output, ffn_up, ffn_down and the output's required), Q/K/V separate or
one fused attn_qkv; `output.weight` required."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic("shared", full_rotary=False, out_bias=True, ffn_bias=True, output_bias=True)


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "phi2", STYLE)
