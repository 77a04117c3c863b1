"""`cohere2moe`, as llama.cpp's src/models/cohere2moe.cpp builds it: cohere2's parallel blocks,
x + attention(h) + FFN(h) from one h = norm(x) × `attn_norm` (an RMS norm where the file has
`attention.layer_norm_rms_epsilon`, else a LayerNorm without bias at `attention.layer_norm_epsilon`;
the final norm likewise); GQA attention with adjacent-pair RoPE over whole heads on the sliding-window
layers and the leading dense layers only (with `rope_freqs` factors where present, the model's base:
`rope.freq_base_swa` is read and unused), the other layers without positions; Q/K/V and `attn_output`
with their biases and weight scales where present. The first `leading_dense_block_count` layers have
a SwiGLU FFN (weight scales, no biases), the others a mixture of `expert_count` experts
`expert_feed_forward_length` wide (0: `feed_forward_length`), routed by `expert_gating_func` (default
sigmoid), renormalized by `expert_weights_norm` and scaled by `expert_weights_scale` where set, their
gate and up possibly fused in `ffn_gate_up_exps`, every `.scale` applied; with `expert_shared_count`
shared experts (`expert_shared_feed_forward_length` wide, else count × the experts' width) the two sums
are averaged (× 0.5). `output.weight`, else tied (no scale), the logits × `logit_scale` unless 0.
Sliding layers: `attention.sliding_window_pattern` flags or a period (default 4, the first of each
period global), over `attention.sliding_window` positions. The `nextn_predict_layers` MTP blocks are
not run."""

import math
from dataclasses import replace

from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, attention, glu_ffn, hparams, kv_spec, linear, read_rope, read_sizes, require_whole_heads,
    rope_factors, stack_widths,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.arch.moe import (
    Experts, declare_expert_buffers, moe_block, read_experts_of, read_gating, read_leading_dense, read_weights_scale,
)  # fmt: skip
from rfc.compiler.arch.swa import sliding_window_layers
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def _experts(md: Metadata) -> tuple[Experts, int]:
    dense_lead, _, shared = read_leading_dense(md)
    n_ff = md.int("feed_forward_length", 1, MAX_FF)
    count, used, _, groups, groups_used = read_experts_of(md, n_ff=n_ff, expert_ff=False)
    n_ff_exp = md.int("expert_feed_forward_length", 0, MAX_FF) or n_ff  # required; 0: feed_forward_length
    shared_ff = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0) if shared else 0
    e = Experts(count, used, n_ff_exp, gating=read_gating(md, "sigmoid"),
                norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                groups_used=groups_used, shared=shared, dense_lead=dense_lead, shared_ff=shared_ff,
                fused_gate_up=True)  # fmt: skip
    return e, n_ff


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "cohere2moe")
    sizes = read_sizes(md)
    nextn = md.int("nextn_predict_layers", 0, sizes.n_layers - 1, default=0)
    sizes = replace(sizes, n_layers=sizes.n_layers - nextn)
    rope = read_rope(md, sizes, "adjacent")
    require_whole_heads(md, rope, sizes, "cohere2moe")
    rms = md.has("attention.layer_norm_rms_epsilon")
    eps = md.float("attention.layer_norm_rms_epsilon" if rms else "attention.layer_norm_epsilon", 0.0, 1.0,
                   open_lo=True)  # fmt: skip
    e, n_ff = _experts(md)
    window = md.int("attention.sliding_window", 1, MAX_CONTEXT)
    sliding = sliding_window_layers(md, sizes.n_layers, 4, dense_first=True)
    logit_scale = md.float("logit_scale", 0.0, 1e6)
    b = ModelBuilder(model)
    b.unused_layers(range(sizes.n_layers, sizes.n_layers + nextn), "a multi-token-prediction block: not run")
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (*stack_widths(sizes), ("a", sizes.n_embd)):
        b.buffer(name, "T", width)
    for name, width in (("xr", sizes.n_embd), ("hr", sizes.n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    declare_expert_buffers(b, sizes.n_embd, e)
    if e.dense_lead:
        b.buffer("gate", "T", n_ff)
        b.buffer("up", "T", n_ff)
    if not rms:
        layernorm.declare(b, sizes.n_embd, "T")
        layernorm.declare(b, sizes.n_embd, "R")

    def norm(src: str, dst: str, name: str, rows: str = "T") -> None:
        w = b.tensor(name + ".weight", name.rsplit(".", 1)[-1], (sizes.n_embd,))
        if rms:
            b.op("rmsnorm", (src,), (dst,), (w,), eps=eps)
        else:
            layernorm.layer_norm(b, src, dst, sizes.n_embd, eps, w, rows=rows)

    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    factors = rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=False)
    glob = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), factors=factors)
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        norm("x", "h", p + "attn_norm")
        dense = not e.is_moe(i)
        cfg = replace(glob, window=window) if sliding[i] else glob
        attention(b, i, sizes, eps, cfg, src="h", dst="a", rope=sliding[i] or dense)
        if dense:  # build_ffn with the weight scales, no biases
            glu_ffn(b, i, sizes.n_embd, n_ff, src="h", dst="h", bias=False)
            b.op("add", ("x", "h"), ("x",))
        else:
            moe_block(b, i, sizes, e, src="h", scales=True, mix=0.5 if e.shared else 1.0)
        b.op("add", ("x", "a"), ("x",))
    b.op("gather_rows", ("x",), ("xr",))
    norm("xr", "hr", "output_norm", rows="R")
    tied = not b.has("output.weight")
    if tied:
        b.op("matmul", ("hr",), ("logits",), (embd,))
    else:  # build_lora_mm(model.output, cur): no scale, and the loader reads no bias
        linear(b, "hr", "logits", "output", (sizes.vocab_size, sizes.n_embd), bias=False, scale=False)
    if logit_scale:
        b.op("scale", ("logits",), ("logits",), factor=logit_scale)
    extra = {**e.hparams(), "logit_scale": logit_scale, "parallel_blocks": True, "sliding_window": window,
             "sliding_window_layers": [i for i, on in enumerate(sliding) if on],
             **({} if rms else {"norm": "layernorm"})}  # fmt: skip
    if nextn:
        extra["nextn_predict_layers"] = nextn
    hp = hparams(md, sizes, rope, n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None, extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
