"""`mistral3` (Ministral 3, Devstral 2 text models): llama's block (adjacent-pair RoPE over whole
heads, SwiGLU, RMS norms, biases where the file has them, LongRoPE factors when the scaling
type says so) whose loader also reads YaRN's rope.scaling.yarn_beta_fast / yarn_beta_slow /
yarn_log_multiplier, and llama 4 style attention temperature tuning: with
attention.temperature_scale s != 0 each query, after RoPE, is multiplied by
1 + s ln(floor(pos / n_ctx_orig) + 1), n_ctx_orig the YaRN original context
(rope.scaling.original_context_length, else context_length), as llama.cpp's mistral3 graph
multiplies Q by its attn_scale input (the rope op's temp_scale / temp_floor). With `expert_count`
the FFN is llama's Mixtral-style mixture (softmax router, top `expert_used_count` renormalized,
experts `feed_forward_length` wide): llama.cpp's mistral3 loader reads neither a weight scale nor
a shared expert width, so its graph runs exactly that."""

import numpy as np

from rfc.compiler.arch.common import llama_like, require_whole_heads
from rfc.compiler.arch.metadata import Metadata
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "mistral3")
    # a float32 in llama.cpp (hparams.f_attn_temp_scale)
    temp = float(np.float32(md.float("attention.temperature_scale", -1e3, 1e3, default=0.0)))
    spec = llama_like(model, "mistral3", rope_style="adjacent", yarn_keys=True, temp_scale=temp)
    hp = spec.hparams
    require_whole_heads(md, hp, hp, "mistral3")
    return spec
