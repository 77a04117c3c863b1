"""`bloom` (BigScience BLOOM, BLOOMZ), as llama.cpp's src/models/bloom.cpp builds it
(compiler/arch/classic.py): the embedding LayerNormed by `token_embd_norm`, ALiBi with llama.cpp's
fixed maximum bias of 8 (no RoPE), sequential LayerNorm blocks, a fused `attn_qkv` with its bias,
biases on `attn_output` and the ungated GELU FFN; `output.weight`, else the tied embedding."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic(
    "sequential", full_rotary=False, out_bias=True, ffn_bias=True, output_required=False, rope=False, alibi="fixed",
    embd_norm=True,
)  # fmt: skip


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "bloom", STYLE)
