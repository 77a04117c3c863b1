"""`phi3` (Phi-3, Phi-3.5, Phi-4 mini): llama-style blocks with NeoX RoPE, a fused `attn_qkv`
(Q, K, V rows) and a fused `ffn_up` (gate rows, then up rows), both split into plain weights
at compile time (see common.qkv_weights). llama.cpp ignores phi3's `attention.sliding_window`
(its phi3 loader turns sliding windows off), and so does this recipe.

Phi-3 long-context files carry two sets of RoPE frequency factors, which llama.cpp's phi3
loader reads whatever the scaling type: `rope_factors_long` when the context served exceeds
`rope.scaling.original_context_length`, else `rope_factors_short` (common.rope_factors), with
the file's `rope.scaling.attn_factor` as the magnitude."""

from rfc.compiler.arch.common import llama_like
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return llama_like(
        model,
        "phi3",
        rope_style="neox",
        fused_gate_up=True,
        long_short_factors=True,
        ffn_bias=False,
        ffn_scale=False,
        output_bias=True,
    )
