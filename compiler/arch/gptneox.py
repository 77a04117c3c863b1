"""`gptneox` (EleutherAI GPT-NeoX-20B, Pythia, RedPajama-INCITE), as llama.cpp's
src/models/gptneox.cpp builds it (compiler/arch/classic.py): LayerNorms with bias, a fused
`attn_qkv` with its bias, NeoX RoPE over the first `rope.dimension_count` dims of each head, an
ungated GELU FFN with biases; `use_parallel_residual` (required) true: attention and FFN each read
their own LayerNorm of the same x and both add to it, false: sequential blocks. `output.weight`
required (no bias)."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic("key", full_rotary=False, out_bias=True, ffn_bias=True)


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "gptneox", STYLE)
