"""`llama` (Llama 1-3, Mistral, TinyLlama, SmolLM, ...): adjacent-pair RoPE, no biases unless
the file has them, `rope_freqs.weight` when present (Llama 3.1 frequency factors)."""

from rfc.compiler.arch.common import llama_like
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return llama_like(model, "llama", rope_style="adjacent", qkv_bias=False)
