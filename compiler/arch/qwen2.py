"""`qwen2` (Qwen 1.5, Qwen 2, Qwen 2.5): llama with NeoX-style RoPE and Q/K/V biases."""

from rfc.compiler.arch.common import llama_like
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return llama_like(
        model, "qwen2", rope_style="neox", qkv_bias=True, ffn_bias=False, ffn_scale=False, output_bias=True
    )
