"""`phimoe` (Phi-3.5-MoE), as llama.cpp's phimoe loader reads it and phi3's graph runs it
(compiler/arch/common.py llama_like): phi3's attention (Q/K/V fused or apart, biases where present,
NeoX RoPE with LongRoPE's long/short factors, a biased `attn_output`), RMS norms that also add a
bias (build_norm's LLM_NORM_RMS with one: `attn_norm`, `ffn_norm`, `output_norm`), every FFN a
mixture of SwiGLU experts (softmax router, top `expert_used_count` renormalized, no weight scale:
its loader reads none, and the graph passes the experts' `.scale` tensors to nothing), and a
required `output.weight` with its `output.bias`."""

from rfc.compiler.arch.common import llama_like, require_output
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    require_output(ModelBuilder(model), "phimoe")
    return llama_like(
        model,
        "phimoe",
        rope_style="neox",
        long_short_factors=True,
        output_bias=True,
        norm_bias=True,
        expert_scales=False,
    )
