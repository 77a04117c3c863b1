"""`step35` (StepFun Step-3.5-Flash), as llama.cpp 0.3.36 builds it (src/models/step35.cpp):

    x += attn_output(sigmoid(attn_gate h) per head * attention(...))      h = attn_norm(x)
    x += FFN(ffn_norm(x))      (a SwiGLU FFN, or routed experts + a shared expert where the layer has a router)

- Attention: Q, K and V with their weight scales and biases where present (build_qkv), each layer
  with its own head and KV head counts (per-layer `attention.head_count` / `head_count_kv`), values
  of `attention.value_length` (narrower than the keys allowed: Sizes.v_dim), per-head RMS norms of
  Q and K where the layer has them, NeoX RoPE, scores x 1/sqrt(key_length); where the layer has
  `attn_gate` [n_head, n_embd] each head's output times sigmoid of its gate (no scale), then
  `attn_output` with its scale and no bias.
- RoPE as its loader sets it: the global layers rotate HALF of `rope.dimension_count` (llama.cpp
  halves n_rot_full for this architecture) with `rope_freqs` factors where present (the served
  context's LongRoPE set under "longrope"), the sliding layers `rope.dimension_count_swa` (default:
  the whole `rope.dimension_count`) without factors at `rope.freq_base_swa` (llama.cpp's default
  10000 where absent) and scale 1; sliding windows (`attention.sliding_window`, required) on the
  layers the `attention.sliding_window_pattern` array marks.
- The FFN: layers without `ffn_gate_inp` a SwiGLU of `feed_forward_length`, the others `expert_count`
  experts `expert_feed_forward_length` wide (gating `expert_gating_func`, sigmoid when 0 or absent;
  `exp_probs_b` where present; renormalized by `expert_weights_norm`; x `expert_weights_scale`) plus
  a shared SwiGLU expert `expert_shared_feed_forward_length` wide. No FFN weight scales (the graph
  passes none). Clamps as llama.cpp's build_ffn and build_moe_ffn make them for this architecture:
  with a layer's `swiglu_clamp_exp` > 1e-6 its experts, with its `swiglu_clamp_shexp` its shared
  expert and its dense FFN, compute min(silu(gate), c) x clamp(up, -c, c) (swiglu 'silu_cap').
- `output.weight` required; the last `nextn_predict_layers` blocks (MTP) are not run.

llama.cpp's saver does not write step35: tests/data/llama-archs/step35-dense.json is described in
tools/fixtures/llama_archs.py.
"""

import math
from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, attention, glu_ffn, hparams, kv_spec, output_head, read_rope, require_output, rope_factors,
)  # fmt: skip
from rfc.compiler.arch.layer_shapes import declare_layer_buffers, read_layer_shapes
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, MAX_HEAD_DIM, Metadata
from rfc.compiler.arch.moe import (
    Experts, clamped, declare_expert_buffers, moe_block, read_experts_of, read_gating, read_weights_scale,
)  # fmt: skip
from rfc.compiler.arch.swa import SWA_BASE_DEFAULT, pattern_array, require_one_head_size
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "step35")
    sizes, layers, n_ffs = read_layer_shapes(md, sublayers_optional=False, narrow_values=True)
    n_all = sizes.n_layers
    nextn = md.int("nextn_predict_layers", 0, n_all - 1, default=0)
    n_layers = n_all - nextn
    rope = read_rope(md, sizes, "neox")
    if rope.ext_factor:
        raise CompileError(f"{md.path}: YaRN RoPE scaling: step35's sliding layers rotate at scale 1")
    require_one_head_size(md, sizes, None)
    if rope.n_rot // 2 < 2 or (rope.n_rot // 2) % 2:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count')} {rope.n_rot}: step35's global layers rotate "
                           "half of it, which must be even")  # fmt: skip
    n_rot_swa = md.int("rope.dimension_count_swa", 2, MAX_HEAD_DIM, default=rope.n_rot)
    if n_rot_swa % 2 or n_rot_swa > sizes.head_dim:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count_swa')} {n_rot_swa} is odd or over the head size")
    base_swa = md.float("rope.freq_base_swa", 0.0, 1e12, default=SWA_BASE_DEFAULT, open_lo=True)
    rope_full = replace(rope, n_rot=rope.n_rot // 2)
    rope_swa = replace(rope, n_rot=n_rot_swa, freq_base=base_swa, freq_scale=1.0)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
    sliding = pattern_array(md, n_all)
    clamp_exp = md.per_layer_float("swiglu_clamp_exp", n_all, 0.0, 1e6, default=0.0)
    clamp_shexp = md.per_layer_float("swiglu_clamp_shexp", n_all, 0.0, 1e6, default=0.0)
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)
    b = ModelBuilder(model)
    factors = rope_factors(b, rope_full, n_ctx, long_short=rope.scaling_type == "longrope")
    moe_layers = [i for i in range(n_layers) if b.has(f"blk.{i}.ffn_gate_inp.weight")]
    e = None
    if moe_layers:
        count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
        shared_ff = md.int("expert_shared_feed_forward_length", 1, MAX_FF)
        e = Experts(count, used, n_ff_exp, gating=read_gating(md, "sigmoid"),
                    norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                    groups_used=groups_used, shared=1, shared_ff=shared_ff)  # fmt: skip
    b.unused_layers(range(n_layers, 1 << 16), "a multi-token prediction (MTP) block: llama.cpp's forward pass skips it")
    sfx = declare_layer_buffers(b, sizes, layers[:n_layers], n_ffs[:n_layers])
    for (heads, kv_heads), s in sfx.items():
        b.buffer("attn_gate" + s, "T", heads)
    if e is not None:
        declare_expert_buffers(b, sizes.n_embd, e)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,))
    n = (sizes.n_embd,)
    for i in range(n_layers):
        p, ls = f"blk.{i}.", layers[i]
        if b.has(p + "attn_q_norm.weight") != b.has(p + "attn_k_norm.weight"):
            raise CompileError(f"{b.path}: layer {i} norms one of Q and K per head and not the other")
        cfg = Attention(rope_full, scale=1.0 / math.sqrt(ls.head_dim), qk_norm=b.has(p + "attn_q_norm.weight"),
                        factors=factors)  # fmt: skip
        if sliding[i]:
            cfg = replace(cfg, rope=rope_swa, window=window, factors=None)
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", n),), eps=eps)
        gate = "head" if b.has(p + "attn_gate.weight") else None
        attention(b, i, ls, eps, cfg, out_bias=False, sfx=sfx[(ls.n_heads, ls.n_kv_heads)], gate=gate)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", n),), eps=eps)
        shexp = clamped("silu_cap", clamp_shexp[i])
        if i in moe_layers:
            for name in ("ffn_gate", "ffn_up", "ffn_down"):  # loaded where present, not run beside the experts
                b.unused(
                    f"{p}{name}.weight", "a dense FFN in a layer with a router: llama.cpp's graph runs the experts"
                )
                b.unused(f"{p}{name}.scale", UNUSED_SCALE)
            routed = clamped("silu_cap", clamp_exp[i])
            moe_block(b, i, ls, e, shared_glu=shexp, **routed)
        else:
            glu_ffn(b, i, sizes.n_embd, n_ffs[i], bias=False, scale=False, bufs=(f"gate_{n_ffs[i]}", f"up_{n_ffs[i]}"),
                    activation=shexp.get("activation", "silu"), limit=shexp.get("limit"))  # fmt: skip
            b.op("add", ("x", "h"), ("x",))
    require_output(b, "step35")
    output_head(b, sizes, eps, bias=False)
    extra = {"sliding_window": window, "sliding_window_layers": [i for i in range(n_layers) if sliding[i]],
             "value_length": sizes.v_head, "rope_freq_base_swa": base_swa, "n_rot_swa": n_rot_swa}  # fmt: skip
    if e is not None:
        extra.update(e.hparams())
    trunk = replace(sizes, n_layers=n_layers)
    hp = hparams(md, trunk, rope_full, max(n_ffs), eps, tied_embeddings=False, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(trunk))
