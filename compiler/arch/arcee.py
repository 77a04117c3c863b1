"""`arcee` (Arcee AFM-4.5B), as llama.cpp's src/models/arcee.cpp builds it: llama's pre-norm block
(compiler/arch/prenorm.py) with adjacent-pair RoPE over whole heads and `rope_freqs` factors where
the file has them, Q/K/V and attn_output biases where present, and an FFN without a gate:
ffn_down(relu(ffn_up h)^2) (build_ffn's RELU_SQR, sequential; no biases or weight scales), computed
as swiglu with activation "relu" of (u, u): max(u, 0) u. `output.weight`, else the tied embedding."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, linear
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _relu_sqr_ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
    p = f"blk.{i}."
    linear(b, "h", "up", p + "ffn_up", (n_ff, sizes.n_embd), bias=False, scale=False)
    b.op("swiglu", ("up", "up"), ("up",), activation="relu")  # relu(u) u = relu(u)^2
    linear(b, "up", "h", p + "ffn_down", (sizes.n_embd, n_ff), bias=False, scale=False)
    return False


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "arcee", prenorm.Block("adjacent", factors=True), ffn=_relu_sqr_ffn)
