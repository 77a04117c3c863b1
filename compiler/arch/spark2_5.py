"""`spark2_5`, as llama.cpp's src/models/spark2-5.cpp builds it (compiler/arch/prenorm.py): llama's
pre-norm block with NeoX RoPE, Q/K/V biases and weight scales where present, no `attn_output` bias
(its loader reads none) and each head's attention output times sigmoid(`attn_gate` x) [n_heads]
before `attn_output` (times its scale where present); interleaved sliding-window attention (the
layers the per-layer array `attention.sliding_window_pattern` flags, required, over
`attention.sliding_window` positions, their RoPE at `rope.freq_base_swa` over
`rope.dimension_count_swa` dims, each defaulting to the model's); a GELU-gated FFN (ggml's geglu:
the tanh approximation) without biases or scales; `output.weight`, else tied. Sliding layers of
another head size are refused."""

from rfc.compiler.arch import prenorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Rope, Sizes, glu_ffn
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.arch.swa import require_one_head_size, sliding_layers, sliding_rope
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _windows(md: Metadata, sizes: Sizes, rope: Rope) -> tuple[int, tuple[bool, ...], Rope]:
    require_one_head_size(md, sizes, None)
    window, sliding = sliding_layers(md, sizes.n_layers)
    return window, sliding, sliding_rope(md, rope)


def _ffn(b: ModelBuilder, i: int, sizes: Sizes, n_ff: int) -> bool:
    glu_ffn(b, i, sizes.n_embd, n_ff, activation="gelu_tanh", bias=False, scale=False)
    return False


BLOCK = prenorm.Block("neox", full_rotary=False, out_bias=False, out_bias_loaded=False, gate="head")


def build(model: GGUFModel) -> ModelSpec:
    return prenorm.build(model, "spark2_5", BLOCK, ffn=_ffn, windows=_windows)
