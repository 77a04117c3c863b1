"""`hy_v4` (Tencent Hunyuan v4), as llama.cpp 0.3.36 builds it (src/models/hy-v4.cpp):

- independent hyper-connections (iHC): the residual is `hyper_connection.count` = n streams of
  n_embd (artifacts/ops/hc.py), all n the token embedding at the start. Before each sublayer the
  streams, RMS-normed together without a weight, go through `hc_{attn,ffn}_fn` [2 n, n x n_embd] to
  2 n mixes; `hc_gates` makes from them n mixing weights sigmoid(mix x scale[0] + base) + eps and n
  output gates magnitude x sigmoid(mix x scale[1] + base) + eps (`hc_*_scale` [2] read at compile
  time, `hc_*_base` [2 n], `hyper_connection.epsilon`, `hyper_connection.magnitude`); the sublayer
  reads the streams' weighted sum (`hc_reduce`) and its output goes back to each stream times its
  gate (`hc_post`). At the end `output_hc_fn` / `_base` / `_scale` mix the streams once more (n
  weights only) before `output_norm` and `output` (no scale).
- attention: deepseek2's absorbed multi-head latent attention (q_lora bottleneck required; adjacent
  RoPE on the rope parts; scores x 1/sqrt(key_length_mla)) with a sink logit per head
  (`attn_sinks`) and the heads' values times sigmoid(`attn_gate` h) before `attn_output`; neither
  gate nor output is scaled (the graph passes no `.scale`).
- DeepSeek Sparse Attention where `attention.indexer.top_k` > 0: the dense attention while a
  sequence holds at most top_k tokens (deepseek32's: the served context is capped at top_k and the
  indexer's tensors are unused).
- FFN: the first `leading_dense_block_count` layers a SwiGLU FFN, the others `expert_count` experts
  (gating `expert_gating_func`, required; `exp_probs_b` where present; `expert_weights_norm`;
  `expert_weights_scale`; groups) with each layer's `swiglu_clamp_exp` as ggml_swiglu_clamp
  (swiglu 'silu_clamp'), plus `expert_shared_count` shared experts; no FFN weight scales. The shared
  experts and the dense FFN are not clamped (the loader does not read `swiglu_clamp_shexp`).
"""

import math
from dataclasses import replace

from rfc.artifacts.limits import MAX_HC_STREAMS
from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import glu_ffn, hparams, read_rope
from rfc.compiler.arch.deepseek2 import INDEXER_TENSORS, _sizes, mla_attention
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.arch.moe import (
    Experts, clamped, declare_expert_buffers, moe_block, read_experts_of, read_gating, read_weights_scale,
)  # fmt: skip
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, "hy_v4")
    sizes, q_lora, kv_lora, nope, v_dim = _sizes(md)
    if not q_lora:
        raise CompileError(
            f"{md.path}: hy_v4 needs {md.key('attention.q_lora_rank')} > 0 (its loader requires attn_q_a)"
        )
    n, nh = sizes.n_embd, sizes.n_heads
    rope = read_rope(md, sizes, "adjacent")
    key_mla = nope + rope.n_rot
    scale = float(1.0 / math.sqrt(key_mla))
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    hc = md.int("hyper_connection.count", 2, MAX_HC_STREAMS)
    hc_eps = md.float("hyper_connection.epsilon", 0.0, 1.0)
    magnitude = md.float("hyper_connection.magnitude", -1e6, 1e6)
    n_layers = sizes.n_layers
    n_all = md.int("block_count", 1, 1 << 16)
    dense_lead = md.int("leading_dense_block_count", 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1, MAX_FF) if dense_lead else 0
    e = None
    if dense_lead < n_layers:
        count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
        shared = md.int("expert_shared_count", 0, 64)
        norm = md.bool("expert_weights_norm", default=False)
        e = Experts(count, used, n_ff_exp, gating=read_gating(md, None), norm=norm, scale=read_weights_scale(md),
                    groups=groups, groups_used=groups_used, shared=shared, dense_lead=dense_lead)  # fmt: skip
    clamp_exp = md.per_layer_float("swiglu_clamp_exp", n_all, 0.0, 1e6, default=0.0)
    md.ignored(
        "swiglu_clamp_shexp", "hy_v4's loader does not read it: its shared experts and dense FFN are not clamped"
    )
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)
    top_k = md.int("attention.indexer.top_k", 0, 1 << 30, default=0)
    b = ModelBuilder(model)
    if top_k:  # the indexer chooses every key while a sequence holds at most top_k tokens
        for i in range(n_layers):
            for name in INDEXER_TENSORS:
                b.unused(f"blk.{i}.{name}", f"DSA's indexer: every key is chosen within the served {top_k} tokens")
    b.unused_layers(range(n_layers, 1 << 16), "a multi-token prediction (MTP) block: llama.cpp's forward pass skips it")
    rot = rope.n_rot
    b.buffer("tokens", "T", dtype="i32")
    widths = {"x": n, "h": n, "hs": hc * n, "hn": hc * n, "mix": 2 * hc, "gates": 2 * hc, "q_a": q_lora,
              "q_nope": nh * nope, "q_pe": nh * rot, "q_latent": nh * kv_lora, "latent": kv_lora, "k_pe": rot,
              "q": nh * sizes.head_dim, "k": sizes.head_dim, "att": nh * sizes.head_dim, "att_v": nh * v_dim,
              "attn_gate": nh * v_dim}  # fmt: skip
    widths |= {f"hs{k}": k * n for k in range(2, hc)}  # the embedding repeated, stream by stream
    for name, width in widths.items():
        b.buffer(name, "T", width)
    if n_ff:
        b.buffer("gate", "T", n_ff)
        b.buffer("up", "T", n_ff)
    if e is not None:
        declare_expert_buffers(b, n, e)
    for name, width in (("hsr", hc * n), ("hnr", hc * n), ("mixr", hc), ("gatesr", hc), ("xr", n), ("hr", n),
                        ("logits", sizes.vocab_size)):  # fmt: skip
        b.buffer(name, "R", width)

    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n)),))
    prev = "x"
    for k in range(2, hc + 1):  # hc_init: ggml_repeat_4d of the embedding over the streams
        dst = "hs" if k == hc else f"hs{k}"
        b.op("concat_heads", (prev, "x"), (dst,), heads=1)
        prev = dst
    for i in range(n_layers):
        p = f"blk.{i}."
        _hc_pre(b, p + "hc_attn", hc, n, eps, hc_eps, magnitude)
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        mla_attention(b, i, sizes, rope, eps, q_lora, kv_lora, nope, v_dim, scale, sinks=True, gate=True,
                      out_scale=False)  # fmt: skip
        b.op("hc_post", ("h", "hs", "gates"), ("hs",), streams=hc)
        _hc_pre(b, p + "hc_ffn", hc, n, eps, hc_eps, magnitude)
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        out = "h"
        if e is not None and e.is_moe(i):
            routed = clamped("silu_clamp", clamp_exp[i])
            moe_block(b, i, sizes, e, residual=None, **routed)  # routed + shared into moe_out
            out = "moe_out"
        else:
            glu_ffn(b, i, n, n_ff, bias=False, scale=False)
        b.op("hc_post", (out, "hs", "gates"), ("hs",), streams=hc)

    # the head: the streams mixed once more for the logit rows (llama.cpp prunes to them first)
    b.op("gather_rows", ("hs",), ("hsr",))
    b.op("rmsnorm", ("hsr",), ("hnr",), (), eps=eps)
    b.op("matmul", ("hnr",), ("mixr",), (b.tensor("output_hc_fn.weight", "output_hc_fn", (hc, hc * n)),))
    (head_scale,) = b.scalars("output_hc_scale.weight", 1)
    base = b.tensor("output_hc_base.weight", "output_hc_base", (hc,))
    b.op("hc_gates", ("mixr",), ("gatesr",), (base,), streams=hc, eps=hc_eps, scale_pre=head_scale)
    b.op("hc_reduce", ("hsr", "gatesr"), ("xr",), streams=hc)
    b.op("rmsnorm", ("xr",), ("hr",), (b.tensor("output_norm.weight", "output_norm", (n,)),), eps=eps)
    b.unused("output.scale", "hy_v4's graph multiplies by output without its scale")
    b.op("matmul", ("hr",), ("logits",), (b.tensor("output.weight", "output", (sizes.vocab_size, n)),))
    extra = {"q_lora_rank": q_lora, "kv_lora_rank": kv_lora, "key_length_mla": key_mla, "value_length_mla": v_dim,
             "hyper_connection_count": hc, "attention_sinks": True}  # fmt: skip
    if e is not None:
        extra |= e.hparams()
    context = n_ctx
    if top_k:
        extra |= {"indexer_top_k": top_k, "context_length_of_file": n_ctx}
        context = min(n_ctx, top_k)
    hp = hparams(md, sizes, rope, n_ff or (e.n_ff if e else 0), eps, tied_embeddings=False, qkv_bias=False,
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    hp = replace(hp, context_length=context)
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr",
                    kv=KVSpec(n_layers=n_layers, n_kv_heads=1, head_dim=sizes.head_dim, dtype="f16"))  # fmt: skip


def _hc_pre(b: ModelBuilder, name: str, hc: int, n: int, eps: float, hc_eps: float, magnitude: float) -> None:
    """h = the streams' weighted sum for a sublayer, and `gates` its output's gates per stream
    (llama.cpp's build_hc_pre): RMS norm of the streams together, `name`_fn to 2 hc mixes, hc_gates."""
    b.op("rmsnorm", ("hs",), ("hn",), (), eps=eps)
    b.op(
        "matmul", ("hn",), ("mix",), (b.tensor(name + "_fn.weight", name.rsplit(".", 1)[-1] + "_fn", (2 * hc, hc * n)),)
    )
    pre, post = b.scalars(name + "_scale.weight", 2)
    base = b.tensor(name + "_base.weight", name.rsplit(".", 1)[-1] + "_base", (2 * hc,))
    b.op("hc_gates", ("mix",), ("gates",), (base,), streams=hc, eps=hc_eps, scale_pre=pre, scale_post=post,
         magnitude=magnitude)  # fmt: skip
    b.op("hc_reduce", ("hs", "gates"), ("h",), streams=hc)
