"""`glm5-next` (Z.ai GLM-5.3-Flash), as llama.cpp 0.3.36 builds it (src/models/glm5-next.cpp): kimi-linear's
hybrid of KDA layers (`attention.head_count_kv` 0) and latent-attention layers, on DeepSeek-V4's manifold-
constrained hyper-connections (mHC), with DeepSeek-style experts.

- mHC: the residual is `hyper_connection.count` = 4 streams of n_embd (llama.cpp asserts 4), each the token
  embedding at the start. Before each sublayer the streams, RMS-normed together without a weight, go through
  `hc_{attn,ffn}_fn` [24, 4 n_embd] to 24 mixes: 4 mixing weights sigmoid(mix x scale[0] + base) + eps, 4
  output gates 2 sigmoid(mix x scale[1] + base) (hc_gates, post_eps false) and a 4 x 4 matrix from mix x
  scale[2] + base, a softmax per source stream, + eps, then `hyper_connection.sinkhorn_iterations` Sinkhorn
  normalizations (hc_comb; `hc_*_scale` [3] read at compile time, `hc_*_base` [24],
  `hyper_connection.epsilon`). The sublayer reads the streams' weighted sum (hc_reduce); after it each stream
  d becomes its output x gate_d + sum_s stream_s x comb[s][d] (hc_mix_post). At the end the logit rows'
  streams are averaged (hc_mean), then `output_norm` and `output` (no scale).
- KDA layers: kimi-linear's (Q, K, V by their weights alone, each through its own causal conv + SiLU, the
  gate through `ssm_g_a`, `ssm_g_b`), the decay `kda.gate_lower_bound` x sigmoid(-(f_b(f_a h) + dt) x ssm_a)
  where the key is set (else the softplus decay), Q and K L2-normalized at 1e-6 (llama.cpp's FLA epsilon).
- Latent attention layers: nope-only (`rope.dimension_count` 0, as llama.cpp asserts): the q_lora bottleneck
  (required), the absorbed query over the cached latent alone (`attn_kv_a_mqa` [kv_lora, n_embd]), scores x
  1/sqrt(key_length_mla), `attn_v_b`, `attn_output` without its scale. DSA with a k-pool indexer: each query
  reads the top `attention.indexer.top_k` / `kpool` pools of `kpool` keys and, with
  `attention.indexer.kpool_select_tail` (required true here), the incomplete tail; while a sequence holds at
  most top_k tokens every pool is chosen, so the attention is the dense one exactly: the indexer's tensors are
  left unused and the served context is capped at top_k, as deepseek32's. Without the tail the newest keys
  would be left out: refused.
- FFN: `leading_dense_block_count` SwiGLU layers, then experts (`expert_gating_func`, sigmoid when absent or
  0; `exp_probs_b`; `expert_weights_norm`; `expert_weights_scale`; llama.cpp's clamps `swiglu_clamp_exp` and
  `swiglu_clamp_shexp` as swiglu silu_cap) plus `expert_shared_count` shared experts of the experts' width; no
  weight scales. MTP blocks (`nextn_predict_layers`) not run.

State per sequence and KDA layer as kimi-linear's; the KV cache holds the attention layers' latent rows.
"""

from dataclasses import replace

from rfc.artifacts.limits import MAX_CONTEXT, MAX_SINKHORN_ITERS
from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Rope, Sizes, embedding_rows, glu_ffn, hparams
from rfc.compiler.arch.deepseek2 import MAX_LORA_RANK, mla_attention, mla_widths
from rfc.compiler.arch.kimi_linear import kda_layer, optional_lower_bound, read_hybrid
from rfc.compiler.arch.metadata import MAX_FF, MAX_HEAD_DIM, MAX_LAYERS, Metadata
from rfc.compiler.arch.moe import Experts, clamped, declare_expert_buffers, moe_block, read_experts_of
from rfc.compiler.arch.moe import read_gating, read_weights_scale
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "glm5-next"
HC = 4  # llama.cpp asserts dsv4_hc_mult == 4
L2_EPS = 1e-6  # the KDA's Q/K L2 norm ("Match FLA l2 norm")
INDEXER_UNUSED = "DSA's k-pool indexer: every pool is chosen within the served top_k tokens"


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    n_all = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    n_layers = n_all - md.int("nextn_predict_layers", 0, n_all - 1, default=0)
    hy = read_hybrid(md, n_layers, min_key=1)  # nope-only: the key is the nope part alone
    n, nh, kda_layers, mla_layers = hy.n_embd, hy.n_heads, hy.kda_layers, hy.mla_layers
    s, kernel, kv_lora, key_mla, v_dim = hy.head_dim, hy.kernel, hy.kv_lora, hy.key_mla, hy.v_dim
    q_lora = md.int("attention.q_lora_rank", 1, MAX_LORA_RANK)
    sizes = Sizes(n, n_layers, nh, 1, kv_lora, embedding_rows(md))
    n_rot = md.int("rope.dimension_count", 0, MAX_HEAD_DIM, default=0)
    if n_rot:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count')} {n_rot}: {ARCH}'s latent attention is "
                           "nope-only (llama.cpp asserts n_rot 0)")  # fmt: skip
    rope = Rope(0, "none", 10000.0, 1.0, "none")  # never rotates
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    lower_bound = optional_lower_bound(md)
    if md.int("hyper_connection.count", 1, 64) != HC:
        raise CompileError(f"{md.path}: {md.key('hyper_connection.count')} must be {HC} (llama.cpp asserts it)")
    iters = md.int("hyper_connection.sinkhorn_iterations", 1, MAX_SINKHORN_ITERS)
    hc_eps = md.float("hyper_connection.epsilon", 0.0, 1.0)
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)
    kpool = md.int("attention.indexer.kpool", 2, MAX_CONTEXT)
    top_k = md.int("attention.indexer.top_k", kpool, MAX_CONTEXT)
    if top_k % kpool:
        raise CompileError(f"{md.path}: {md.key('attention.indexer.top_k')} {top_k} is not a multiple of kpool "
                           f"{kpool} (llama.cpp asserts it)")  # fmt: skip
    if not md.bool("attention.indexer.kpool_select_tail", default=True):
        raise CompileError(f"{md.path}: {md.key('attention.indexer.kpool_select_tail')} false: each query would "
                           "skip its pool's newest keys, which rfc does not compute")  # fmt: skip
    for key in ("attention.indexer.head_count", "attention.indexer.key_length", "attention.indexer.types"):
        md.ignored(key, INDEXER_UNUSED)
    dense_lead = md.int("leading_dense_block_count", 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1, MAX_FF) if dense_lead else 0
    e = None
    if dense_lead < n_layers:
        count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
        shared = md.int("expert_shared_count", 0, 64)
        e = Experts(count, used, n_ff_exp, gating=read_gating(md, "sigmoid"),
                    norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                    groups_used=groups_used, shared=shared, dense_lead=dense_lead)  # fmt: skip
        if not shared:
            raise CompileError(f"{md.path}: {md.key('expert_shared_count')} 0: {ARCH}'s loader requires shared experts")
    clamp_exp = md.per_layer_float("swiglu_clamp_exp", n_all, 0.0, 1e6, default=0.0)
    key = "swiglu_clamp_shexp"  # the loader's default: the experts' clamps
    clamp_shexp = md.per_layer_float(key, n_all, 0.0, 1e6, default=0.0) if md.has(key) else clamp_exp

    b = ModelBuilder(model)
    b.unused_layers(range(n_layers, 1 << 16), "a multi-token prediction (MTP) block: llama.cpp's forward pass skips it")
    b.buffer("tokens", "T", dtype="i32")
    widths = {"x": n, "h": n, "hs": HC * n, "hs_b": HC * n, "hn": HC * n, "mix": 2 * HC, "gates": 2 * HC,
              "cmix": HC * HC, "comb": HC * HC}  # fmt: skip
    for k in range(2, HC):
        widths[f"hs{k}"] = k * n
    if mla_layers:
        widths |= mla_widths(nh, q_lora, kv_lora, key_mla, 0, v_dim)
    if kda_layers:
        d = nh * s
        widths |= {"kq": d, "kk": d, "kv": d, "kqk": 2 * d, "mixed": 3 * d, "conv": 3 * d, "f_a": s, "alpha": d,
                   "beta": nh, "dn": d, "g_a": s, "g": d}  # fmt: skip
    if n_ff:
        widths |= {"gate": n_ff, "up": n_ff}
    for name, width in widths.items():
        b.buffer(name, "T", width)
    if e is not None:
        declare_expert_buffers(b, n, e)
    for name, width in (("hsr", HC * n), ("xr", n), ("hr", n), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)

    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n)),))
    prev = "x"
    for k in range(2, HC + 1):  # ggml_repeat_4d of the embedding over the streams
        dst = "hs" if k == HC else f"hs{k}"
        b.op("concat_heads", (prev, "x"), (dst,), heads=1)
        prev = dst
    hs = "hs"
    scale = float(1.0 / key_mla**0.5)
    for i in range(n_layers):
        p = f"blk.{i}."
        _hc_pre(b, p + "hc_attn", hs, n, eps, hc_eps, iters)
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n,)),), eps=eps)
        if i in kda_layers:
            kda_layer(b, i, n, nh, s, kernel, eps, lower_bound=lower_bound, style=ARCH, l2_eps=L2_EPS)
        else:
            for name in ("k_norm.weight", "k_norm.bias", "proj.weight", "attn_k.weight", "attn_q_b.weight"):
                b.unused(f"{p}indexer.{name}", INDEXER_UNUSED)
            for name in ("indexer_compressor_gate.weight", "indexer_compressor_ape.weight"):
                b.unused(p + name, INDEXER_UNUSED)
            for name in ("attn_q_a", "attn_q_b"):
                b.unused(f"{p}{name}.scale", f"{ARCH}'s MLA multiplies by {name} without its scale (ggml_mul_mat)")
            mla_attention(b, i, sizes, rope, eps, q_lora, kv_lora, key_mla, v_dim, scale, rotate=False,
                          layer=mla_layers.index(i), out_scale=False)  # fmt: skip
        hs = _hc_post(b, "h", hs)
        _hc_pre(b, p + "hc_ffn", hs, n, eps, hc_eps, iters)
        b.op("rmsnorm", ("h",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=eps)
        out = "h"
        if e is not None and e.is_moe(i):
            shexp = clamped("silu_cap", clamp_shexp[i])
            moe_block(b, i, sizes, e, residual=None, shared_glu=shexp, **clamped("silu_cap", clamp_exp[i]))
            out = "moe_out"
        else:
            limit = clamped("silu_cap", clamp_shexp[i])
            glu_ffn(b, i, n, n_ff, bias=False, scale=False, activation=limit.get("activation", "silu"),
                    limit=limit.get("limit"))  # fmt: skip
        hs = _hc_post(b, out, hs)
    # the head: the logit rows' streams averaged (llama.cpp narrows to them first)
    b.op("gather_rows", (hs,), ("hsr",))
    b.op("hc_mean", ("hsr",), ("xr",), streams=HC)
    b.op("rmsnorm", ("xr",), ("hr",), (b.tensor("output_norm.weight", "output_norm", (n,)),), eps=eps)
    b.unused("output.scale", f"{ARCH}'s graph multiplies by output without its scale")
    b.op("matmul", ("hr",), ("logits",), (b.tensor("output.weight", "output", (sizes.vocab_size, n)),))
    extra = {"kda_layers": kda_layers, "kda_head_dim": s, "ssm_conv_kernel": kernel, "q_lora_rank": q_lora,
             "kv_lora_rank": kv_lora, "key_length_mla": key_mla, "value_length_mla": v_dim,
             "hyper_connection_count": HC, "sinkhorn_iterations": iters, "indexer_top_k": top_k,
             "indexer_kpool": kpool, "context_length_of_file": n_ctx}  # fmt: skip
    if e is not None:
        extra |= e.hparams()
    hp = hparams(md, sizes, rope, n_ff or (e.n_ff if e else 0), eps, tied_embeddings=False, qkv_bias=False,
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    hp = replace(hp, context_length=min(n_ctx, top_k))
    kv = KVSpec(n_layers=len(mla_layers), n_kv_heads=1, head_dim=kv_lora, dtype="f16")  # the latent rows only
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


def _hc_pre(b: ModelBuilder, name: str, hs: str, n: int, eps: float, hc_eps: float, iters: int) -> None:
    """h = the streams' weighted sum for a sublayer, `gates` its mixing weights and output gates and `comb`
    its stream mixing matrix (llama.cpp's build_hc_pre): the streams RMS-normed together, `name`_fn to the
    24 mixes (its first 8 rows for the gates, the other 16 for the matrix), hc_gates, hc_comb, hc_reduce."""
    role = name.rsplit(".", 1)[-1]
    fn, base = name + "_fn.weight", name + "_base.weight"
    mixes = 2 * HC + HC * HC
    b.op("rmsnorm", (hs,), ("hn",), (), eps=eps)
    b.op("matmul", ("hn",), ("mix",), (b.rows(fn + ":gates", role + "_fn", fn, (mixes, HC * n), 0, 2 * HC),))
    b.op("matmul", ("hn",), ("cmix",), (b.rows(fn + ":comb", role + "_fn", fn, (mixes, HC * n), 2 * HC, mixes),))
    pre, post, comb = b.scalars(name + "_scale.weight", 3)
    gate_base = b.vector_ranges(base + ":gates", role + "_base", base, mixes, [(0, 2 * HC)])
    comb_base = b.vector_ranges(base + ":comb", role + "_base", base, mixes, [(2 * HC, mixes)])
    b.op("hc_gates", ("mix",), ("gates",), (gate_base,), streams=HC, eps=hc_eps, scale_pre=pre, scale_post=post,
         magnitude=2.0, post_eps=False)  # fmt: skip
    b.op("hc_comb", ("cmix",), ("comb",), (comb_base,), streams=HC, scale=comb, eps=hc_eps, iters=iters)
    b.op("hc_reduce", (hs, "gates"), ("h",), streams=HC)


def _hc_post(b: ModelBuilder, y: str, hs: str) -> str:
    """The streams after a sublayer of output y (llama.cpp's build_hc_post), into the other stream buffer."""
    out = "hs_b" if hs == "hs" else "hs"
    b.op("hc_mix_post", (y, hs, "gates", "comb"), (out,), streams=HC)
    return out
