"""`deepseek2` (DeepSeek-V2 / V2-Lite / V3 / R1, Kimi-K2, GLM-4.7-Flash) and `mistral4` (the same loader
and graph in llama.cpp), as llama.cpp builds it
(src/models/deepseek2.cpp and its load_hparams):
- multi-head latent attention, absorbed: Q from `attn_q` or through the q_lora_rank bottleneck
  (`attn_q_a`, its norm, `attn_q_b`), each head's Q [nope, rope]; `attn_kv_a_mqa` makes one latent
  (kv_lora_rank, normed by `attn_kv_a_norm`) and one rope key (n_rot) per token, shared by every
  head. The nope part of each head's query goes through `attn_k_b` into latent space, so
  attention runs as one KV head of width kv_lora_rank + n_rot over [latent, rope key] (what the
  KV cache holds per token and layer, not per-head keys and values), and each head's output
  (its latent part) goes through `attn_v_b` before `attn_output`. RoPE: GGML mode 0 (adjacent
  pairs) on the rope parts only.
- the attention scale: mscale^2 / sqrt(key_length_mla), mscale = the unscaled attn_factor x
  (1 + 0.1 yarn_log_multiplier ln(factor)) (llama.cpp's kq_scale: [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX],
  the file's multiplier divided by 0.1 as the converter wrote it times 0.1);
- experts: leading_dense_block_count dense layers, then routed experts (softmax or sigmoid
  scores, the selection bias `exp_probs_b`, grouped top-k, renormalized when
  expert_weights_norm, times expert_weights_scale) plus expert_shared_count shared experts.

The KV cache holds the [latent, rope key] row as the key and the same row again as the value
(the attention kernels take K and V apart; the value's rope columns come out of attention
unused): 2 x (kv_lora_rank + n_rot) float16 per token and layer. At DeepSeek-V3's sizes (61
layers, 512 + 64) that is 137 KiB per token: twice llama.cpp's K-only cache (69 KiB), 1/36 of
per-head keys and values (128 heads x (192 + 128): 4.8 MiB).
"""

import math
from dataclasses import replace

import numpy as np

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Sizes, embedding_rows, glu_ffn, hparams, linear, output_head, read_rope, rope_weights,
)  # fmt: skip
from rfc.compiler.arch.metadata import (
    MAX_CONTEXT,
    MAX_EMBD,
    MAX_FF,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_LAYERS,
    Metadata,
)
from rfc.compiler.arch.moe import (
    Experts,
    declare_expert_buffers,
    moe_block,
    read_experts_of,
    read_gating,
    read_weights_scale,
)
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "deepseek2"
MAX_LORA_RANK = 1 << 16  # q_lora_rank, kv_lora_rank (DeepSeek-V3: 1536 and 512)


def _sizes(md: Metadata) -> tuple[Sizes, int, int, int, int]:
    """(Sizes of the absorbed attention: 1 KV head of kv_lora + n_rot, q_lora, kv_lora, nope, v_dim)."""
    model = md.model
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    nextn = md.int("nextn_predict_layers", 0, n_layers - 1, default=0)  # MTP blocks: not run (llama.cpp's n_layer())
    n_heads = md.int("attention.head_count", 1, MAX_HEADS)
    md.int("attention.head_count_kv", 1, n_heads, default=1)  # the absorbed attention has one KV head whatever it says
    kv_lora = md.int("attention.kv_lora_rank", 1, MAX_LORA_RANK)
    q_lora = md.int("attention.q_lora_rank", 0, MAX_LORA_RANK, default=0)
    n_rot = md.int("rope.dimension_count", 2, MAX_HEAD_DIM)
    if n_rot % 2:
        raise CompileError(f"{md.path}: {md.key('rope.dimension_count')} {n_rot} must be even")
    if not md.has("attention.key_length_mla"):
        raise CompileError(
            f"{md.path}: no {md.key('attention.key_length_mla')}: files with the legacy unsplit "
            f"attn_kv_b "
            "are not supported (convert again with a current llama.cpp: attn_k_b / attn_v_b)"
        )
    key_mla = md.int("attention.key_length_mla", n_rot + 1, MAX_HEAD_DIM)
    v_dim = md.int("attention.value_length_mla", 1, MAX_HEAD_DIM)
    for key, want in (("attention.key_length", kv_lora + n_rot), ("attention.value_length", kv_lora)):
        got = md.int(key, 1, MAX_LORA_RANK + MAX_HEAD_DIM, default=want)
        if got != want:
            raise CompileError(
                f"{md.path}: {md.key(key)} {got} != {want} (kv_lora_rank {kv_lora}, rope dims {n_rot}): "
                "an MLA file's attention sizes disagree"
            )
    if md.float("attention.temperature_scale", 0.0, 1e6, default=0.0):
        raise CompileError(
            f"{md.path}: {md.key('attention.temperature_scale')} (attention temperature tuning) is not supported"
        )
    vocab = embedding_rows(md)
    sizes = Sizes(n_embd, n_layers - nextn, n_heads, 1, kv_lora + n_rot, vocab)
    return sizes, q_lora, kv_lora, key_mla - n_rot, v_dim


GATING_DEFAULTS = {"deepseek32": (None, True), "glm-dsa": ("sigmoid", False)}  # read_gating's default, required


def _experts(md: Metadata, n_layers: int) -> tuple[Experts, int]:
    dense_lead = md.int("leading_dense_block_count", 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1, MAX_FF) if dense_lead else 0
    if dense_lead == n_layers:
        return Experts(0, 0, 0, dense_lead=dense_lead), n_ff
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    shared = md.int("expert_shared_count", 0, 64, default=0)
    # deepseek2's default softmax; deepseek32's loader requires the key, glm-dsa's defaults to sigmoid
    default, required = GATING_DEFAULTS.get(md.arch, ("softmax", False))
    e = Experts(
        count,
        used,
        n_ff_exp,
        gating=read_gating(md, default, required=required),
        norm=md.bool("expert_weights_norm", default=False),
        scale=read_weights_scale(md),
        groups=groups,
        groups_used=groups_used,
        shared=shared,
        dense_lead=dense_lead,
        fused_gate_up=True,
    )
    if e.gating == "softmax_weight":
        raise CompileError(f"{md.path}: {md.key('expert_gating_func')} softmax_weight is not a deepseek2 router")
    return e, n_ff


def _scales(md: Metadata, rope, key_mla: int):
    """The rope op's attn_factor and the attention's scale, as llama.cpp's context and graph
    make them for deepseek2. With YaRN and a log multiplier, cparams.yarn_attn_factor is
    get_mscale(f, m) / get_mscale(f, log_mul) = 1 (m = log_mul, or 1 when it is 1), before the
    1 / (1 + 0.1 ln f) that ggml multiplies back and the file's rope.scaling.attn_factor."""
    log_mul = float(np.float32(md.float("rope.scaling.yarn_log_multiplier", 0.0, 1e3, default=0.0)) / np.float32(0.1))
    if rope.ext_factor and log_mul:
        factor = 1.0 / rope.freq_scale
        file_factor = md.float("rope.scaling.attn_factor", 0.0, 1e6, default=1.0, open_lo=True)
        rope = replace(rope, attn_factor=file_factor / (1.0 + 0.1 * math.log(factor)))
    ln = math.log(1.0 / rope.freq_scale)
    mscale = rope.attn_factor * (1.0 + 0.1 * ln) * (1.0 + 0.1 * log_mul * ln)
    return rope, float(np.float32(mscale * mscale / math.sqrt(key_mla)))


def mla_attention(
    b: ModelBuilder,
    i: int,
    sizes: Sizes,
    rope,
    eps: float,
    q_lora: int,
    kv_lora: int,
    nope: int,
    v_dim: int,
    scale: float,
    *,
    sinks: bool = False,
    gate: bool | str = False,
    out_scale: bool = True,
    rotate: bool = True,
    layer: int | None = None,
    sfx: str = "",
    k_pe_norm: bool = False,
    window: int | None = None,
) -> None:
    """h = attn_output(MLA(h)) for layer i, absorbed (the module docstring). `sinks`: a sink logit
    per head (`attn_sinks`); `gate`: the heads' values times sigmoid(`attn_gate` h) (no scale) before
    attn_output, into buffer `attn_gate` [T, heads x v_dim] (hy_v4's gated MLA); `out_scale` False:
    attn_output's `.scale` known and unused (hy_v4's graph passes none); `rotate` False: no RoPE on the
    rope parts (kimi-linear's rope type is none); `layer`: the KV cache layer when it is not i (a
    hybrid stack's cache holds its attention layers only); `sfx`: appended to every buffer's name (a
    stack of two MLA geometries: dots3note's sliding layers); `k_pe_norm`: the rope key RMS-normed by
    `attn_k_norm` [n_rot] before RoPE (dots3note); `window`: a sliding window on the attention."""
    p, e, nh, rot = f"blk.{i}.", sizes.n_embd, sizes.n_heads, rope.n_rot
    head = nope + rot
    q_a, latent, k_pe, q_nope, q_pe = (name + sfx for name in ("q_a", "latent", "k_pe", "q_nope", "q_pe"))
    q_latent, q, k, att, att_v, g = (name + sfx for name in ("q_latent", "q", "k", "att", "att_v", "attn_gate"))
    if q_lora:
        q_src, q_name, q_shape = q_a, p + "attn_q_b.weight", (nh * head, q_lora)
        b.op("matmul", ("h",), (q_a,), (b.tensor(p + "attn_q_a.weight", "attn_q_a", (q_lora, e)),))
    else:
        q_src, q_name, q_shape = "h", p + "attn_q.weight", (nh * head, e)
    kv_name, kv_shape = p + "attn_kv_a_mqa.weight", (kv_lora + rot, e)
    b.op("matmul", ("h",), (latent,), (b.rows(kv_name + ":latent", "attn_kv_a_mqa", kv_name, kv_shape, 0, kv_lora),))
    if rot:
        b.op(
            "matmul",
            ("h",),
            (k_pe,),
            (b.rows(kv_name + ":rope", "attn_kv_a_mqa", kv_name, kv_shape, kv_lora, kv_lora + rot),),
        )
    if q_lora:
        b.op("rmsnorm", (q_a,), (q_a,), (b.tensor(p + "attn_q_a_norm.weight", "attn_q_a_norm", (q_lora,)),), eps=eps)
    role = q_name.split(".", 2)[-1].removesuffix(".weight")
    nope_rows = [(h * head, h * head + nope) for h in range(nh)]
    rope_rows = [(h * head + nope, (h + 1) * head) for h in range(nh)]
    b.op("matmul", (q_src,), (q_nope,), (b.row_ranges(q_name + ":nope", role, q_name, q_shape, nope_rows),))
    if rot:
        b.op("matmul", (q_src,), (q_pe,), (b.row_ranges(q_name + ":rope", role, q_name, q_shape, rope_rows),))
    b.op(
        "rmsnorm",
        (latent,),
        (latent,),
        (b.tensor(p + "attn_kv_a_norm.weight", "attn_kv_a_norm", (kv_lora,)),),
        eps=eps,
    )
    if k_pe_norm:
        b.op("rmsnorm", (k_pe,), (k_pe,), (b.tensor(p + "attn_k_norm.weight", "attn_k_norm", (rot,)),), eps=eps)
    if rotate and rot:
        b.op("rope", (q_pe, k_pe), (q_pe, k_pe), rope_weights(b, rope, None),
             **rope.attrs(replace(sizes, n_kv_heads=1, head_dim=rot)))  # fmt: skip
    wk_b = b.tensor_as(p + "attn_k_b.weight", "attn_k_b", (nh, kv_lora, nope))  # one head: 2-D in the file
    b.op("head_matmul", (q_nope,), (q_latent,), (wk_b,), heads=nh)
    if rot:
        b.op("concat_heads", (q_latent, q_pe), (q,), heads=nh)
        b.op("concat_heads", (latent, k_pe), (k,), heads=1)
    else:  # no rope part (glm5-next's nope-only MLA): the query is the absorbed one, the key the latent
        q, k = q_latent, latent
    kv = i if layer is None else layer
    b.op("kv_write", (k, k), (), layer=kv)
    sink = (b.tensor(p + "attn_sinks.weight", "attn_sinks", (nh,)),) if sinks else ()
    windowed = {"window": window} if window is not None else {}
    b.op("attention", (q,), (att,), sink, layer=kv, n_heads=nh, n_kv_heads=1, head_dim=sizes.head_dim, scale=scale,
         **windowed)  # fmt: skip
    wv_b = b.tensor_as(p + "attn_v_b.weight", "attn_v_b", (nh, v_dim, kv_lora))
    b.op("head_matmul", (att,), (att_v,), (wv_b,), heads=nh, stride=sizes.head_dim)
    if gate:  # True: a gate per value (hy_v4); "head": one per head (bailingmoe3), tensor_as: [n_embd] for one head
        rows = nh if gate == "head" else nh * v_dim
        b.unused(p + "attn_gate.scale", UNUSED_SCALE)
        b.op("matmul", ("h",), (g,), (b.tensor_as(p + "attn_gate.weight", "attn_gate", (rows, e)),))
        b.op("swiglu", (g, att_v), (att_v,), activation="sigmoid")
    # build_attn: wo with wo_s, no wo_b
    linear(b, att_v, "h", p + "attn_output", (e, nh * v_dim), bias=False, scale=out_scale)


def mla_widths(nh: int, q_lora: int, kv_lora: int, nope: int, rot: int, v_dim: int, gate: int = 0) -> dict[str, int]:
    """The token buffers mla_attention uses and their widths, in declaration order (gate: attn_gate's width,
    0: none; q_a only with a q_lora bottleneck)."""
    head = kv_lora + rot
    widths = {"q_nope": nh * nope, "q_pe": nh * rot, "q_latent": nh * kv_lora, "latent": kv_lora, "k_pe": rot,
              "q": nh * head, "k": head, "att": nh * head, "att_v": nh * v_dim}  # fmt: skip
    if not rot:  # nope-only: the absorbed query and the latent are q and k
        widths = {k: w for k, w in widths.items() if k not in ("q_pe", "k_pe", "q", "k")}
    return widths | ({"q_a": q_lora} if q_lora else {}) | ({"attn_gate": gate} if gate else {})


def mla_buffers(b: ModelBuilder, nh: int, q_lora: int, kv_lora: int, nope: int, rot: int, v_dim: int,
                sfx: str = "", gate: int = 0) -> None:  # fmt: skip
    """The token buffers of mla_attention with suffix `sfx` (a stack of two geometries: dots3note)."""
    for name, width in mla_widths(nh, q_lora, kv_lora, nope, rot, v_dim, gate).items():
        b.buffer(name + sfx, "T", width)


def build(model: GGUFModel) -> ModelSpec:
    return _build(model, ARCH)


def build_mistral4(model: GGUFModel) -> ModelSpec:
    """`mistral4` (Mistral Small 4): llama.cpp's mistral4 is deepseek2's loader and graph under its own name."""
    return _build(model, "mistral4")


def build_deepseek32(model: GGUFModel) -> ModelSpec:
    """`deepseek32` (DeepSeek-V3.2): deepseek2's model with DeepSeek Sparse Attention, whose lightning indexer
    lets each query attend to its `attention.indexer.top_k` best-scoring keys only; unlike deepseek2's graph,
    its FFNs and experts take their weight scales. While a sequence holds at
    most top_k tokens every key is among them (llama.cpp takes the top min(top_k, cache cells), the masked
    cells scoring -inf), so the attention is the dense one exactly: the indexer's tensors are left unused and
    the served context is capped at top_k (`rfc inspect` shows the file's own as context_length_of_file).
    Beyond it the selection would change which keys count, which rfc does not compute: refused, not approximated."""
    return _build(model, "deepseek32", sparse=True)


def build_glm_dsa(model: GGUFModel) -> ModelSpec:
    """`glm-dsa` (GLM-5.x): deepseek32's graph with the indexer's choice shared by the layers `attention.indexer.types`
    marks as shared; dense while a sequence holds at most top_k tokens, as deepseek32's; sigmoid routing by default."""
    return _build(model, "glm-dsa", sparse=True)


INDEXER_TENSORS = ("indexer.k_norm.weight", "indexer.k_norm.bias", "indexer.proj.weight", "indexer.attn_k.weight",
                   "indexer.attn_q_b.weight")  # fmt: skip


def _build(model: GGUFModel, arch: str, *, sparse: bool = False) -> ModelSpec:
    md = Metadata(model, arch)
    sizes, q_lora, kv_lora, nope, v_dim = _sizes(md)
    rope = read_rope(md, sizes, "adjacent")
    rope, scale = _scales(md, rope, nope + rope.n_rot)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    e, n_ff = _experts(md, sizes.n_layers)
    n_ctx = md.int("context_length", 1, MAX_CONTEXT)
    top_k = md.int("attention.indexer.top_k", 1, MAX_CONTEXT) if sparse else n_ctx
    b = ModelBuilder(model)
    if sparse:  # the indexer chooses every key while a sequence holds at most top_k tokens
        for i in range(sizes.n_layers):
            for name in INDEXER_TENSORS:
                b.unused(f"blk.{i}.{name}", f"DSA's indexer: every key is chosen within the served {top_k} tokens")
    rot, nh = rope.n_rot, sizes.n_heads
    b.buffer("tokens", "T", dtype="i32")
    b.buffer("x", "T", sizes.n_embd)
    b.buffer("h", "T", sizes.n_embd)
    mla_buffers(b, nh, q_lora, kv_lora, nope, rot, v_dim)
    for name, width in (("xr", sizes.n_embd), ("hr", sizes.n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)
    if e.count:
        declare_expert_buffers(b, sizes.n_embd, e)
    if e.dense_lead:
        b.buffer("gate", "T", n_ff)
        b.buffer("up", "T", n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        mla_attention(b, i, sizes, rope, eps, q_lora, kv_lora, nope, v_dim, scale)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (sizes.n_embd,)),), eps=eps)
        if e.count and e.is_moe(i):
            moe_block(b, i, sizes, e, scales=sparse)
        else:  # as deepseek2.cpp calls build_ffn; deepseek32.cpp passes the weight scales
            glu_ffn(b, i, sizes.n_embd, n_ff, bias=False, scale=sparse)
            b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps)
    b.unused_layers(
        range(sizes.n_layers, 1 << 16), "a multi-token prediction (MTP) block: llama.cpp's forward pass skips it too"
    )
    extra = (e.hparams() if e.count else {"leading_dense_block_count": e.dense_lead}) | {
        "q_lora_rank": q_lora, "kv_lora_rank": kv_lora, "key_length_mla": nope + rot, "value_length_mla": v_dim,
        "attention_scale": scale}  # fmt: skip
    if sparse:
        extra |= {"indexer_top_k": top_k, "context_length_of_file": n_ctx}
    hp = hparams(
        md, sizes, rope, n_ff or e.n_ff, eps, tied_embeddings=tied, qkv_bias=False, rope_freq_factors=False, extra=extra
    )
    hp = replace(hp, context_length=min(n_ctx, top_k))
    return b.finish(
        hp,
        input_tokens="tokens",
        output_logits="logits",
        output_hidden="hr",
        kv=KVSpec(n_layers=sizes.n_layers, n_kv_heads=1, head_dim=sizes.head_dim, dtype="f16"),
    )
