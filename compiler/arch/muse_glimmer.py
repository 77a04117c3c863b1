"""`muse-glimmer` and `afmoe`, as llama.cpp's src/models/muse-glimmer.cpp and afmoe.cpp build them:
the same block, which differs in data.

    x += post_attention_norm(attn_output(attention(...) * sigmoid(attn_gate h)))    h = attn_norm(x)
    x += post_ffw_norm(FFN(ffn_norm(x)))

Attention: Q/K/V with their biases and weight scales where present, per-head Q/K RMS norms before
RoPE, scores × 1/√head_dim, the output multiplied value by value by sigmoid(`attn_gate` h) before
`attn_output` (its scale where present, no bias). Sliding-window layers from
`attention.sliding_window_pattern` (flags or a period, default 4: three sliding, one global) over
`attention.sliding_window` positions. Sliding layers of another head size or RoPE width are refused.

muse-glimmer: the token embedding RMS-normed without a weight; RoPE (NeoX) on the sliding layers only,
at `rope.freq_base_swa` and freq scale 1 (llama.cpp's sliding-layer default, which this loader does
not set; YaRN, whose ramp that changes, is refused), the global layers without positions; the
post-norms at a fixed epsilon of 1e-8; a SwiGLU FFN without biases or scales; `output.weight`
required, times its scale, the logits × `logit_scale` (required), then soft-capped by
`final_logit_softcapping` where set.

afmoe (Arcee's AFM MoE): the token embedding × sqrtf(n_embd); RoPE (NeoX) on every layer but each
4th (llama.cpp's fixed n_no_rope_layer_step), the sliding layers at `rope.freq_base_swa` (the window
and pattern only where `attention.sliding_window` > 0); the post-norms at the model's epsilon; the
first `leading_dense_block_count` layers a SwiGLU FFN, the others `expert_count` experts
`expert_feed_forward_length` wide, routed by `expert_gating_func` (default sigmoid) with the required
selection bias `exp_probs_b`, renormalized by `expert_weights_norm`, scaled by
`expert_weights_scale`, plus `expert_shared_count` shared experts (count × the experts' width), no
biases or scales anywhere in the FFN; `output.weight` (times its scale), else tied."""

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, Rope, Sizes, attention, glu_ffn, hparams, kv_spec, output_head, read_rope, read_sizes, require_output,
    stack_widths,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_EXPERTS, MAX_FF, Metadata
from rfc.compiler.arch.moe import (
    Experts, declare_expert_buffers, moe_block, read_experts_of, read_gating, read_weights_scale,
)  # fmt: skip
from rfc.compiler.arch.swa import require_one_head_size, sliding_window_layers
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

MUSE_POST_NORM_EPS = 1e-8  # muse-glimmer's graph's own, for post_attention_norm and post_ffw_norm
AFMOE_NO_ROPE_STEP = 4  # afmoe: layers i with (i + 1) % 4 == 0 attend without positions


@dataclass(frozen=True)
class Layers:
    """Per layer: sliding or not (with the window), rotated or not, and the RoPE of each kind."""

    window: int | None
    sliding: tuple[bool, ...]
    rotated: tuple[bool, ...]
    rope: Rope
    rope_swa: Rope

    def attention(self, base: Attention, i: int) -> Attention:
        if not self.sliding[i]:
            return base
        return replace(base, rope=self.rope_swa, window=self.window)


def _muse_layers(md: Metadata, sizes: Sizes, rope: Rope) -> Layers:
    if rope.ext_factor:
        raise CompileError(f"{md.path}: YaRN RoPE scaling: muse-glimmer's sliding layers rotate at scale 1")
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
    sliding = sliding_window_layers(md, sizes.n_layers, 4)
    base = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
    return Layers(window, sliding, sliding, rope, replace(rope, freq_base=base, freq_scale=1.0))


def _afmoe_layers(md: Metadata, sizes: Sizes, rope: Rope) -> Layers:
    rotated = tuple((i + 1) % AFMOE_NO_ROPE_STEP != 0 for i in range(sizes.n_layers))
    window = md.int("attention.sliding_window", 0, MAX_CONTEXT, default=0)
    if not window:
        return Layers(None, (False,) * sizes.n_layers, rotated, rope, rope)
    base = md.float("rope.freq_base_swa", 0.0, 1e12, default=rope.freq_base, open_lo=True)
    return Layers(window, sliding_window_layers(md, sizes.n_layers, 4), rotated, rope, replace(rope, freq_base=base))


def _afmoe_experts(md: Metadata) -> Experts:
    dense_lead = md.int("leading_dense_block_count", 0, md.int("block_count", 1, 1 << 16), default=0)
    shared = md.int("expert_shared_count", 0, MAX_EXPERTS)  # required by its loader
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    return Experts(count, used, n_ff_exp, gating=read_gating(md, "sigmoid"),
                   norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                   groups_used=groups_used, shared=shared, dense_lead=dense_lead)  # fmt: skip


@dataclass(frozen=True)
class Variant:
    layers: Callable[[Metadata, Sizes, Rope], Layers]
    embed_norm: bool  # muse: the embedding RMS-normed without a weight; afmoe: x sqrtf(n_embd)
    post_norm_eps: float | None  # None: the model's
    experts: Callable[[Metadata], Experts] | None = None
    output_required: bool = False
    logit_scale: bool = False  # logit_scale (required) and final_logit_softcapping (optional)


MUSE = Variant(_muse_layers, embed_norm=True, post_norm_eps=MUSE_POST_NORM_EPS, output_required=True,
               logit_scale=True)  # fmt: skip
AFMOE = Variant(_afmoe_layers, embed_norm=False, post_norm_eps=None, experts=_afmoe_experts)


def build(model: GGUFModel) -> ModelSpec:
    return _build(model, "muse-glimmer", MUSE)


def build_afmoe(model: GGUFModel) -> ModelSpec:
    return _build(model, "afmoe", AFMOE)


def _build(model: GGUFModel, arch: str, v: Variant) -> ModelSpec:
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "neox")
    require_one_head_size(md, sizes, rope.n_rot)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    post_eps = v.post_norm_eps if v.post_norm_eps is not None else eps
    layers = v.layers(md, sizes, rope)
    e = v.experts(md) if v.experts else None
    n_ff = md.int("feed_forward_length", 1 if e is None or e.dense_lead else 0, MAX_FF, default=0)
    if v.logit_scale:
        logit_scale = float(np.float32(md.float("logit_scale", 0.0, 1e6, open_lo=True)))
        softcap = md.float("final_logit_softcapping", 0.0, 1e6, default=0.0)
    b = ModelBuilder(model)
    if v.output_required:
        require_output(b, arch)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (*stack_widths(sizes), ("attn_gate", sizes.q_width)):
        b.buffer(name, "T", width)
    if e is None or e.dense_lead:
        b.buffer("gate", "T", n_ff)
        b.buffer("up", "T", n_ff)
    if e is not None:
        declare_expert_buffers(b, sizes.n_embd, e)
    for name, width in (("xr", sizes.n_embd), ("hr", sizes.n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    base = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), qk_norm=True)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    if v.embed_norm:
        b.op("embed", ("tokens",), ("x",), (embd,))
        b.op("rmsnorm", ("x",), ("x",), (), eps=eps)
    else:
        b.op("embed", ("tokens",), ("x",), (embd,), scale=float(np.sqrt(np.float32(sizes.n_embd))))
    n = (sizes.n_embd,)
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", n),), eps=eps)
        attention(b, i, sizes, eps, layers.attention(base, i), out_bias=False, rope=layers.rotated[i], gate="value")
        post = b.tensor(p + "post_attention_norm.weight", "post_attention_norm", n)
        b.op("rmsnorm", ("h",), ("h",), (post,), eps=post_eps)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", n),), eps=eps)
        out = "h"
        if e is not None and e.is_moe(i):
            if not b.has(p + "exp_probs_b.bias"):  # afmoe's loader requires the selection bias
                raise CompileError(f"{b.path}: missing tensor {p}exp_probs_b.bias ({arch}'s loader requires it)")
            moe_block(b, i, sizes, e, residual=None)  # routed + shared into moe_out
            out = "moe_out"
        else:
            glu_ffn(b, i, sizes.n_embd, n_ff, bias=False, scale=False)
        b.op("rmsnorm", (out,), (out,), (b.tensor(p + "post_ffw_norm.weight", "post_ffw_norm", n),), eps=post_eps)
        b.op("add", ("x", out), ("x",))
    tied = output_head(b, sizes, eps, bias=False)
    extra = {}
    if layers.window is not None:
        extra["sliding_window"] = layers.window
        extra["sliding_window_layers"] = [i for i, on in enumerate(layers.sliding) if on]
    if v.logit_scale:
        b.op("scale", ("logits",), ("logits",), factor=logit_scale)
        extra["logit_scale"] = logit_scale
        if softcap:
            b.op("softcap", ("logits",), ("logits",), cap=softcap)
            extra["final_logit_softcapping"] = softcap
    if e is not None:
        extra.update(e.hparams())
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
