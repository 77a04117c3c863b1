"""`jais` (Inception/Cerebras Jais 13B/30B), as llama.cpp's src/models/jais.cpp builds it
(compiler/arch/classic.py): sequential LayerNorm blocks, a fused `attn_qkv` with its bias, scores
q.k / head_dim (muP's scaling, not its square root), ALiBi with the file's
`attention.max_alibi_bias` (0 or absent: no positions at all, as there), no RoPE, a biased
`attn_output`, a SwiGLU FFN with a bias on each of its three matmuls; `output.weight` required."""

from rfc.compiler.arch import classic
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

STYLE = classic.Classic(
    "sequential", full_rotary=False, out_bias=True, ffn_bias=True, activation="swiglu", rope=False, alibi="key",
    scale_by_head_dim=True,
)  # fmt: skip


def build(model: GGUFModel) -> ModelSpec:
    return classic.build(model, "jais", STYLE)
