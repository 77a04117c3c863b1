"""`gemma-embedding` (EmbeddingGemma 300M), as llama.cpp's src/models/gemma-embedding.cpp builds it:
gemma3's block (gemma2.py: the embedding x sqrtf(n_embd), pre- and post-norms, per-head Q/K RMS
norms, a GELU(tanh)-gated FFN, Q scaled by 1/sqrt(head_dim)) with attention that sees the whole
input, then `output_norm` and no head: the normed rows are the model's hidden output, through
`dense_2` and `dense_3` where the file has them (sentence-transformers' dense modules, converted
with --sentence-transformers-dense-modules), pooled by `pooling_type` (mean).

- llama.cpp applies the dense projections to the pooled vector; rfc applies them to each row
  before pooling. They are linear (no bias, no activation: build_dense_out), and a linear map
  commutes with mean, CLS and last-token pooling, so the embedding is the same up to float32
  rounding.
- Sliding-window layers (`attention.sliding_window`, required, on the layers the pattern marks,
  period 6) mask symmetrically, as llama.cpp's LLAMA_SWA_TYPE_SYMMETRIC: keys more than n_swa / 2
  positions away either side are out (the op's non-causal window n_swa / 2 + 1: keys less than
  that away), with their own RoPE base (`rope.freq_base_swa`, default 10000, unscaled).
"""

from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Attention, Rope, Sizes
from rfc.compiler.arch.gemma2 import GemmaLayers, build_gemma, query_scale
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "gemma-embedding"


def _layers(md: Metadata, sizes: Sizes, rope: Rope) -> GemmaLayers:
    full = Attention(rope, scale=query_scale(sizes, big=False), qk_norm=True, causal=False)
    n_swa = md.int("attention.sliding_window", 1, MAX_CONTEXT)  # required (llama.cpp's get_key)
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=10000.0, open_lo=True)
    local = replace(full.with_rope(freq_base=base_swa, freq_scale=1.0), window=n_swa // 2 + 1)
    return GemmaLayers(full, local, sliding_window_layers(md, sizes.n_layers, 6), None)


def _dense_head(b: ModelBuilder, md: Metadata, sizes: Sizes, eps: float) -> str:
    """output_norm over the hidden rows, then dense_3(dense_2 h) where the file has them."""
    e = sizes.n_embd
    b.op("gather_rows", ("x",), ("xr",))
    b.op("rmsnorm", ("xr",), ("hr",), (b.tensor("output_norm.weight", "output_norm", (e,)),), eps=eps)
    b.unused("output.weight", "an embedding model's output head: llama.cpp loads it and never runs it")
    d2_in, d2_out = (md.int(f"dense_2_feat_{k}", 0, MAX_FF, default=0) for k in ("in", "out"))
    d3_in, d3_out = (md.int(f"dense_3_feat_{k}", 0, MAX_FF, default=0) for k in ("in", "out"))
    if d2_in not in (0, e) or d3_out not in (0, e):  # llama.cpp asserts both
        raise CompileError(f"{b.path}: dense_2_feat_in ({d2_in}) and dense_3_feat_out ({d3_out}) must be n_embd ({e})")
    if not (b.has("dense_2.weight") or b.has("dense_3.weight")):
        return "hr"
    if not (b.has("dense_2.weight") and b.has("dense_3.weight")) or not d2_out or d3_in != d2_out:
        raise CompileError(f"{b.path}: dense_2 and dense_3 must come together, dense_2's outputs dense_3's inputs")
    b.buffer("dense_mid", "R", d2_out)
    b.buffer("dense_out", "R", e)
    b.op("matmul", ("hr",), ("dense_mid",), (b.tensor("dense_2.weight", "dense_2", (d2_out, e)),))
    b.op("matmul", ("dense_mid",), ("dense_out",), (b.tensor("dense_3.weight", "dense_3", (e, d3_in)),))
    return "dense_out"


def build(model: GGUFModel) -> ModelSpec:
    spec = build_gemma(model, ARCH, _layers, tied_output=False, encoder_head=_dense_head)
    extra = {**spec.hparams.extra, "causal": False, "serves": "embeddings"}
    return replace(spec, hparams=replace(spec.hparams, extra=extra))
