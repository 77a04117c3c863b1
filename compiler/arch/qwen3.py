"""`qwen3` (Qwen 3 dense): llama with NeoX-style RoPE and per-head RMS norms of Q and K
(`attn_q_norm` / `attn_k_norm`, [head_dim]) before RoPE; head_dim from attention.key_length,
so the attention width may differ from the model width."""

from rfc.compiler.arch.common import llama_like
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return llama_like(model, "qwen3", rope_style="neox", qk_norm=True, ffn_bias=False)
