"""`mimo2` (Xiaomi MiMo-V2-Flash), as llama.cpp 0.3.36 builds it (src/models/mimo2.cpp):

    x += value_scale? * attn_output(attention(rope(Q), rope(K), V of attn_norm(x)))
    x += FFN(ffn_norm(x))            (a SwiGLU FFN, or routed experts where the layer has a router)

- Attention: Q, K and V by their weights alone (llama.cpp's graph passes no scale or bias: the
  loader's `.scale` and `.bias` of them are known and unused), each layer with its own head and KV
  head counts (per-layer `attention.head_count` / `head_count_kv`), keys of `attention.key_length`
  and values of `attention.value_length`, which may be narrower (MiMo-V2-Flash's config gives 192
  and 128; Sizes.v_dim: the values zero-padded to the key's head size in the KV cache, cut back after
  attention). NeoX RoPE
  over `rope.dimension_count` dims; scores x 1/sqrt(key_length); a learned sink logit per query head
  where the layer has `attn_sinks`; `attn_output` with its `.scale`, no bias.
- Sliding windows on the layers `attention.sliding_window_pattern` (an array, required) marks over
  `attention.sliding_window` (required) positions; those layers rotate at `rope.freq_base_swa`
  (llama.cpp's default 10000 where the key is absent, not the model's base) and scale 1. Sliding
  layers of another head size or RoPE width are refused (the graph sizes every layer's heads by one).
- `attention.value_scale`, where set and not 1 (nor 0), multiplies the attention's output after
  attn_output.
- The FFN: a SwiGLU of `feed_forward_length` (no biases; the `.scale` tensors known and unused) in
  layers without `ffn_gate_inp` (experts there are loaded and unused, as a dense FFN is in a layer with
  a router: the loader takes both where present), else `expert_count` experts `expert_feed_forward_length` wide,
  sigmoid-routed (llama.cpp's graph fixes it and the renormalization; `expert_gating_func` and
  `expert_weights_norm` are not read) with the selection bias `exp_probs_b` where present, times
  `expert_weights_scale` (0 or absent: 1); the experts' `.scale` tensors known and unused.
- `output.weight` required; the last `nextn_predict_layers` blocks (MTP) are not run.
"""

import math
from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, attention, glu_ffn, hparams, kv_spec, output_head, read_rope, require_output,
)  # fmt: skip
from rfc.compiler.arch.layer_shapes import declare_layer_buffers, read_layer_shapes
from rfc.compiler.arch.metadata import MAX_CONTEXT, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block, read_experts_of, read_weights_scale
from rfc.compiler.arch.swa import SWA_BASE_DEFAULT, pattern_array, require_one_head_size
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

DENSE = tuple(f"ffn_{m}.{t}" for m in ("gate", "up", "down") for t in ("weight", "scale"))
EXPERTS = tuple(f"ffn_{m}_exps.{t}" for m in ("gate", "up", "down") for t in ("weight", "scale")) + (
    "exp_probs_b.bias",
)


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "mimo2")
    sizes, layers, n_ffs = read_layer_shapes(md, sublayers_optional=False, narrow_values=True)
    nextn = md.int("nextn_predict_layers", 0, sizes.n_layers - 1, default=0)
    n_layers = sizes.n_layers - nextn
    rope = read_rope(md, sizes, "neox")
    if rope.ext_factor:
        raise CompileError(f"{md.path}: YaRN RoPE scaling: mimo2's sliding layers rotate at scale 1")
    require_one_head_size(md, sizes, rope.n_rot)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
    sliding = pattern_array(md, sizes.n_layers)
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=SWA_BASE_DEFAULT, open_lo=True)
    rope_swa = replace(rope, freq_base=base_swa, freq_scale=1.0)
    value_scale = md.float("attention.value_scale", -1e6, 1e6, default=0.0)
    value_scale = 0.0 if value_scale == 1.0 else value_scale  # llama.cpp: 0 and 1 both mean none
    b = ModelBuilder(model)
    moe_layers = [i for i in range(n_layers) if b.has(f"blk.{i}.ffn_gate_inp.weight")]
    e = None
    if moe_layers:
        count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
        e = Experts(count, used, n_ff_exp, gating="sigmoid", norm=True, scale=read_weights_scale(md), groups=groups,
                    groups_used=groups_used)  # fmt: skip
    for key in ("expert_gating_func", "expert_weights_norm"):
        md.ignored(key, "mimo2's graph fixes sigmoid routing with renormalized weights")
    b.unused_layers(range(n_layers, 1 << 16), "a multi-token prediction (MTP) block: llama.cpp's forward pass skips it")
    sfx = declare_layer_buffers(b, sizes, layers[:n_layers], n_ffs[:n_layers])
    if e is not None:
        declare_expert_buffers(b, sizes.n_embd, e)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,))
    n = (sizes.n_embd,)
    for i in range(n_layers):
        p, ls = f"blk.{i}.", layers[i]
        cfg = Attention(rope, scale=1.0 / math.sqrt(ls.head_dim), sinks=b.has(p + "attn_sinks.weight"))
        if sliding[i]:
            cfg = replace(cfg, rope=rope_swa, window=window)
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", n),), eps=eps)
        attention(b, i, ls, eps, cfg, out_bias=False, sfx=sfx[(ls.n_heads, ls.n_kv_heads)], qkv_extras=False)
        if value_scale:
            b.op("scale", ("h",), ("h",), factor=value_scale)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", n),), eps=eps)
        if i in moe_layers:
            for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
                b.unused(f"{p}{name}.scale", UNUSED_SCALE)
            for name in DENSE:  # loaded where present (not required), not run beside the experts
                b.unused(p + name, "a dense FFN in a layer with a router: llama.cpp's graph runs the experts")
            moe_block(b, i, ls, e)
        else:
            for name in EXPERTS:
                b.unused(p + name, "experts in a layer without a router: llama.cpp's graph runs the dense FFN")
            glu_ffn(b, i, sizes.n_embd, n_ffs[i], bias=False, scale=False, bufs=(f"gate_{n_ffs[i]}", f"up_{n_ffs[i]}"))
            b.op("add", ("x", "h"), ("x",))
    require_output(b, "mimo2")
    output_head(b, sizes, eps, bias=False)
    extra = {"sliding_window": window, "sliding_window_layers": [i for i in range(n_layers) if sliding[i]],
             "value_length": sizes.v_head, "rope_freq_base_swa": base_swa}  # fmt: skip
    if value_scale:
        extra["attention_value_scale"] = value_scale
    if e is not None:
        extra.update(e.hparams())
    hp = hparams(md, replace(sizes, n_layers=n_layers), rope, max(n_ffs), eps, tied_embeddings=False,
                 qkv_bias=False, rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(
        hp,
        input_tokens="tokens",
        output_logits="logits",
        output_hidden="hr",
        kv=kv_spec(replace(sizes, n_layers=n_layers)),
    )
