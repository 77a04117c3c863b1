"""`arcee` (Arcee AFM-4.5B), as llama.cpp's src/models/arcee.cpp builds it: llama's pre-norm block
(compiler/arch/prenorm.py) with adjacent-pair RoPE over whole heads and `rope_freqs` factors where
the file has them, Q/K/V and attn_output biases where present, and an FFN without a gate:
ffn_down(relu(ffn_up h)^2) (build_ffn's RELU_SQR, sequential; no biases or weight scales).
`output.weight`, else the tied embedding."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, ungated_ffn
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
    ungated_ffn(b, i, sizes.n_embd, n_ff, "relu_sqr", bias=False)
    return False


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "arcee", prenorm.Block("adjacent", factors=True), ffn=_ffn)
