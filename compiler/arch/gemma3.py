"""`gemma3` (Gemma 3 text): the Gemma 2 block (gemma2.py) with per-head RMS norms of Q and K
(`attn_q_norm` / `attn_k_norm`) before RoPE and no attention soft-capping. As llama.cpp's
src/models/gemma3.cpp reads it:
- sliding-window attention only when attention.sliding_window is present and > 0; then the
  pattern's default period is 6 (five local layers, one global);
- local layers: rope.freq_base_swa (default 10000) and unscaled positions; global layers:
  rope.freq_base and the file's rope scaling (linear, factor 8 on Gemma 3 4B and larger);
  without a sliding window every layer is global;
- final-logit soft-capping only when final_logit_softcapping is present and nonzero;
- the output is `output.weight` when present, else the tied embedding.
"""

from dataclasses import replace

from rfc.compiler.arch.common import Attention, Rope, Sizes
from rfc.compiler.arch.gemma2 import GemmaLayers, build_gemma, query_scale
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.arch.metadata import MAX_CONTEXT, Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _gemma3_layers(md: Metadata, sizes: Sizes, rope: Rope) -> GemmaLayers:
    full = Attention(rope, scale=query_scale(sizes, big=sizes.n_layers == 62), qk_norm=True)
    window = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0)
    final = md.float("final_logit_softcapping", 0.0, 1e6, default=0.0) or None
    if not window:
        return GemmaLayers(full, full, (False,) * sizes.n_layers, final)
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=10000.0, open_lo=True)
    local = replace(full, window=window).with_rope(freq_base=base_swa, freq_scale=1.0)
    return GemmaLayers(full, local, sliding_window_layers(md, sizes.n_layers, 6), final)


def build(model: GGUFModel) -> ModelSpec:
    return build_gemma(model, "gemma3", _gemma3_layers, tied_output=False)
