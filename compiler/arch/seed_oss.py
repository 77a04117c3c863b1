"""`seed_oss` (ByteDance Seed-OSS-36B), as llama.cpp's src/models/seed-oss.cpp builds it: llama's
pre-norm block (compiler/arch/prenorm.py) with NeoX RoPE over whole heads, Q/K/V biases where the
file has them, the FFN's norm named `post_attention_norm`, scores × 1/√head_dim (the loader reads
no attention.scale); `output.weight`, else the tied embedding."""

from rfc.compiler.arch import prenorm
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "seed_oss", prenorm.Block("neox", ffn_norm="post_attention_norm"))
