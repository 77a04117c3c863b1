"""`mpt` (MosaicML MPT-7B/30B and their fine-tunes), as llama.cpp's src/models/mpt.cpp builds it
(compiler/arch/classic.py): no RoPE; ALiBi with the file's `attention.max_alibi_bias` (0 or absent:
none) and learned positions where the file has `position_embd`; sequential LayerNorm blocks whose
biases are optional (MPT's are absent), a fused `attn_qkv` (bias where present), Q, K and V clamped
by `attention.clamp_kqv` where set, then, where a layer has `attn_q_norm`, Q and K LayerNormed over
their whole rows (qk_ln; an `attn_k_norm` alone is loaded and not applied, as there); an ungated
GELU FFN whose output is divided by AWQ's per-channel `ffn.act.scales` where a layer has them;
`output.weight`, else tied."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic(
    "sequential", full_rotary=False, out_bias=True, ffn_bias=True, output_required=False, rope=False,
    learned="optional", alibi="key", norm_bias="optional", qk_norm=True, clamp_kqv=True, act_scales=True,
)  # fmt: skip


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "mpt", STYLE)
