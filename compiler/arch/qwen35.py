"""`qwen35` (Qwen3.5 / Qwen3.6 dense): a hybrid stack of Gated DeltaNet (linear-attention)
layers and full-attention layers, as llama.cpp's src/models/qwen35.cpp builds it:

- which layers are recurrent: `attention.recurrent_layers` (a flag per layer) or else every
  layer but each `full_attention_interval`-th (default 4: layers 3, 7, 11, ... attend);
- a recurrent layer: attn_qkv (Q, K, V of the delta rule) through a causal conv of
  `ssm.conv_kernel` taps + SiLU (op ssm_conv, its state the last kernel - 1 inputs), the gated
  delta rule (op gated_delta_net: L2-normalized Q/K, decay softplus(alpha + dt_bias) * ssm_a,
  beta = sigmoid(ssm_beta x), its state an S x S matrix per value head), an RMS norm per value
  head (ssm_norm) times SiLU(attn_gate x), then ssm_out;
- an attention layer: attn_q holds, per head, the query and then an output gate: the plan
  splits it into two weights (rows of each head); per-head Q/K RMS norms, NeoX RoPE over the
  first rope.dimension_count dims (partial rotary; interleaved M-RoPE, which for text turns
  the pairs of its t, h and w sections by the token's position), attention, the output times
  sigmoid(gate), attn_output;
- after either, the residual, `post_attention_norm`, a SwiGLU FFN and the residual.
The KV cache holds the attention layers only; the recurrent layers' state is per sequence
(the plan's StateSpec): (kernel - 1) x conv channels + value heads x S x S floats per layer.
`nextn_predict_layers` multi-token-prediction blocks at the end are not run (as llama.cpp).
"""

import math
from collections.abc import Callable
from dataclasses import replace

from rfc.artifacts.limits import MAX_CONV_KERNEL, MAX_DELTA_STATE
from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch import mrope as mrope_sections
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    Attention, Sizes, glu_ffn, hparams, linear, output_head, read_rope, read_sizes, rope_weights, weight_scale,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_FF, MAX_HEADS, MAX_LAYERS, Metadata
from rfc.compiler.arch.moe import Experts, declare_expert_buffers, moe_block
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def recurrent_layers(md: Metadata, n_layers: int) -> tuple[bool, ...]:
    if md.has("attention.recurrent_layers"):
        flags = md.flags("attention.recurrent_layers", 1 << 12)
        if len(flags) < n_layers:
            raise CompileError(
                f"{md.path}: {md.key('attention.recurrent_layers')} has {len(flags)} entries for {n_layers} layers"
            )
        return flags[:n_layers]
    interval = md.int("full_attention_interval", 1, MAX_LAYERS, default=4)
    return tuple((i + 1) % interval != 0 for i in range(n_layers))


def build(model: GGUFModel) -> ModelSpec:
    return hybrid(model, "qwen35")


def hybrid(
    model: GGUFModel,
    arch: str,
    *,
    experts: Callable[[Metadata], tuple[Experts, int]] | None = None,
    mrope: bool = True,
    linear_layer: Callable | None = None,
    plan_heads: "Callable[[DeltaNet], DeltaNet] | None" = None,
) -> ModelSpec:
    """The qwen35 stack, shared by its MoE relatives: `experts(md)` reads a mixture of experts
    that replaces the FFN in every layer (qwen35moe, qwen3next: moe.py's block with a gated
    shared expert); `mrope` reads and checks rope.dimension_sections (qwen3next has plain NeoX
    RoPE); `linear_layer(b, i, e, dn, eps)` plans a DeltaNet layer's input projections and
    recurrence (qwen3next's fused layout; default delta_net_layer), `plan_heads(dn)` the sizes
    its ops use when they differ from the file's (qwen3next repeats key heads)."""
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    nextn = md.int("nextn_predict_layers", 0, sizes.n_layers - 1, default=0)
    sizes = replace(sizes, n_layers=sizes.n_layers - nextn)
    rope = read_rope(md, sizes, "neox")
    if mrope:  # interleaved M-RoPE (required, as llama.cpp requires it)
        rope = mrope_sections.text_rope(md, mrope_sections.read(md, required=True), rope, sizes.head_dim,
                                        interleaved=True)  # fmt: skip
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    e, n_ff = experts(md) if experts else (None, md.int("feed_forward_length", 1, MAX_FF))
    b = ModelBuilder(model)
    dn = read_delta_net(md)
    recurrent = recurrent_layers(md, sizes.n_layers)
    attn_layers = [i for i in range(sizes.n_layers) if not recurrent[i]]
    if not attn_layers:
        raise CompileError(f"{md.path}: no full-attention layer (every layer is recurrent)")
    declare(b, sizes, 0 if e else n_ff, plan_heads(dn) if plan_heads else dn)
    if e:
        declare_expert_buffers(b, sizes.n_embd, e)
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), qk_norm=True)
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd)),))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        if recurrent[i]:
            (linear_layer or delta_net_layer)(b, i, sizes.n_embd, dn, eps)
        else:
            gated_attention(b, i, attn_layers.index(i), sizes, eps, cfg)
        b.op("add", ("x", "h"), ("x",))
        b.op(
            "rmsnorm",
            ("x",),
            ("h",),
            (b.tensor(p + "post_attention_norm.weight", "post_attention_norm", (sizes.n_embd,)),),
            eps=eps,
        )
        if e:
            moe_block(b, i, sizes, e, scales=True)  # qwen35moe.cpp / qwen3next.cpp pass them
        else:
            glu_ffn(b, i, sizes.n_embd, n_ff)
            b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps)
    extra = {"full_attention_layers": len(attn_layers), "ssm_conv_kernel": dn.kernel, "ssm_state_size": dn.head_dim,
             "ssm_group_count": dn.k_heads, "ssm_time_step_rank": dn.v_heads}  # fmt: skip
    if e:
        extra |= e.hparams()
    if nextn:
        extra["nextn_predict_layers"] = nextn
    hp = hparams(
        md,
        sizes,
        rope,
        n_ff or e.n_ff,
        eps,
        tied_embeddings=tied,
        qkv_bias=b.has(f"blk.{attn_layers[0]}.attn_q.bias"),
        rope_freq_factors=False,
        extra=extra,
    )
    kv = KVSpec(n_layers=len(attn_layers), n_kv_heads=sizes.n_kv_heads, head_dim=sizes.head_dim, dtype="f16")
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


class DeltaNet:
    """The Gated DeltaNet sizes: Hk key heads (ssm.group_count), Hv value heads
    (ssm.time_step_rank), head size S (ssm.state_size), conv taps (ssm.conv_kernel)."""

    def __init__(self, k_heads: int, v_heads: int, head_dim: int, kernel: int):
        self.k_heads, self.v_heads, self.head_dim, self.kernel = k_heads, v_heads, head_dim, kernel

    @property
    def conv_dim(self) -> int:
        return (2 * self.k_heads + self.v_heads) * self.head_dim

    @property
    def v_width(self) -> int:
        return self.v_heads * self.head_dim


def read_delta_net(md: Metadata) -> DeltaNet:
    kernel = md.int("ssm.conv_kernel", 2, MAX_CONV_KERNEL)
    head_dim = md.int("ssm.state_size", 1, MAX_DELTA_STATE)
    k_heads = md.int("ssm.group_count", 1, MAX_HEADS)
    v_heads = md.int("ssm.time_step_rank", 1, MAX_HEADS)
    inner = md.int("ssm.inner_size", 1, MAX_FF)
    if v_heads % k_heads:
        raise CompileError(
            f"{md.path}: {md.key('ssm.time_step_rank')} {v_heads} (value heads) is not a multiple of "
            f"{md.key('ssm.group_count')} {k_heads} (key heads)"
        )
    if inner != v_heads * head_dim:
        raise CompileError(
            f"{md.path}: {md.key('ssm.inner_size')} {inner} != value heads {v_heads} x state size {head_dim}"
        )
    return DeltaNet(k_heads, v_heads, head_dim, kernel)


def declare(b: ModelBuilder, sizes: Sizes, n_ff: int, dn: DeltaNet) -> None:
    """The activations (n_ff 0: no dense FFN, the experts' are moe.py's)."""
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (("x", sizes.n_embd), ("h", sizes.n_embd), ("q", sizes.q_width), ("qgate", sizes.q_width),
                        ("k", sizes.kv_width), ("v", sizes.kv_width), ("att", sizes.q_width), ("gate", n_ff),
                        ("up", n_ff), ("mixed", dn.conv_dim), ("conv", dn.conv_dim), ("z", dn.v_width),
                        ("alpha", dn.v_heads), ("beta", dn.v_heads), ("dn", dn.v_width)):  # fmt: skip
        if width:
            b.buffer(name, "T", width)
    for name, width in (("xr", sizes.n_embd), ("hr", sizes.n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)


def delta_net_layer(b: ModelBuilder, i: int, e: int, dn: DeltaNet, eps: float) -> None:
    """h = ssm_out(rmsnorm_heads(gated_delta_net(ssm_conv(attn_qkv h), ...)) * silu(attn_gate h)).
    Each projection times its weight scale where the file has one (qwen35.cpp's build_lora_mm
    with wqkv_s, wqkv_gate_s, ssm_alpha_s, ssm_beta_s, ssm_out_s); none has a bias."""
    p = f"blk.{i}."
    linear(b, "h", "mixed", p + "attn_qkv", (dn.conv_dim, e), bias=False)
    linear(b, "h", "z", p + "attn_gate", (dn.v_width, e), bias=False)
    linear(b, "h", "alpha", p + "ssm_alpha", (dn.v_heads, e), bias=False)
    linear(b, "h", "beta", p + "ssm_beta", (dn.v_heads, e), bias=False)
    conv_state = b.state(i, (dn.kernel - 1, dn.conv_dim))
    b.op(
        "ssm_conv",
        ("mixed",),
        ("conv",),
        (b.tensor(p + "ssm_conv1d.weight", "ssm_conv1d", (dn.conv_dim, dn.kernel)),),
        state=conv_state,
    )
    gates = (b.tensor(p + "ssm_a", "ssm_a", (dn.v_heads,)), b.tensor(p + "ssm_dt.bias", "ssm_dt", (dn.v_heads,)))
    b.op(
        "gated_delta_net",
        ("conv", "alpha", "beta"),
        ("dn",),
        gates,
        state=b.state(i, (dn.v_heads, dn.head_dim, dn.head_dim)),
        n_k_heads=dn.k_heads,
        n_v_heads=dn.v_heads,
        head_dim=dn.head_dim,
        eps=eps,
    )
    b.op(
        "rmsnorm",
        ("dn",),
        ("dn",),
        (b.tensor(p + "ssm_norm.weight", "ssm_norm", (dn.head_dim,)),),
        eps=eps,
        heads=dn.v_heads,
    )
    b.op("swiglu", ("z", "dn"), ("dn",))
    linear(b, "dn", "h", p + "ssm_out", (e, dn.v_width), bias=False)


def gated_attention(b: ModelBuilder, i: int, kv_layer: int, sizes: Sizes, eps: float, cfg: Attention) -> None:
    """Qwen3-Next's attention: Q and an output gate from one projection (per head: hd query
    rows, then hd gate rows), per-head Q/K norms, partial NeoX RoPE, att * sigmoid(gate). As
    build_qkv: each of attn_q, attn_k, attn_v times its weight scale, then plus its bias, where
    the file has them (attn_q's scale scales the query and the gate rows alike; its bias holds
    their entries interleaved per head as the weight holds their rows); attn_output times its
    scale (build_lora_mm), no bias (build_attn is given none)."""
    p, hd, e = f"blk.{i}.", sizes.head_dim, sizes.n_embd
    fused = p + "attn_q.weight"
    shape = (2 * sizes.q_width, e)
    q_rows = [(2 * h * hd, (2 * h + 1) * hd) for h in range(sizes.n_heads)]
    g_rows = [((2 * h + 1) * hd, (2 * h + 2) * hd) for h in range(sizes.n_heads)]
    q = b.row_ranges(fused + ":q", "attn_q", fused, shape, q_rows)
    g = b.row_ranges(fused + ":gate", "attn_q_gate", fused, shape, g_rows)
    bias = p + "attn_q.bias"
    q_bias, g_bias = (
        (
            b.vector_ranges(bias + ":q", "attn_q_bias", bias, 2 * sizes.q_width, q_rows),
            b.vector_ranges(bias + ":gate", "attn_q_gate_bias", bias, 2 * sizes.q_width, g_rows),
        )
        if b.has(bias)
        else (None, None)
    )
    q_scale = weight_scale(b, p + "attn_q")
    for buf, w, w_bias in (("q", q, q_bias), ("qgate", g, g_bias)):
        b.op("matmul", ("h",), (buf,), (w,))
        if q_scale is not None and q_scale != 1.0:
            b.op("scale", (buf,), (buf,), factor=q_scale)
        if w_bias is not None:
            b.op("add_bias", (buf,), (buf,), (w_bias,))
    linear(b, "h", "k", p + "attn_k", (sizes.kv_width, e))
    linear(b, "h", "v", p + "attn_v", (sizes.kv_width, e))
    b.op(
        "rmsnorm",
        ("q",),
        ("q",),
        (b.tensor(p + "attn_q_norm.weight", "attn_q_norm", (hd,)),),
        eps=eps,
        heads=sizes.n_heads,
    )
    b.op(
        "rmsnorm",
        ("k",),
        ("k",),
        (b.tensor(p + "attn_k_norm.weight", "attn_k_norm", (hd,)),),
        eps=eps,
        heads=sizes.n_kv_heads,
    )
    b.op("rope", ("q", "k"), ("q", "k"), rope_weights(b, cfg.rope, cfg.factors), **cfg.rope.attrs(sizes))
    b.op("kv_write", ("k", "v"), (), layer=kv_layer)
    b.op(
        "attention",
        ("q",),
        ("att",),
        layer=kv_layer,
        n_heads=sizes.n_heads,
        n_kv_heads=sizes.n_kv_heads,
        head_dim=hd,
        scale=cfg.scale,
    )
    b.op("swiglu", ("qgate", "att"), ("att",), activation="sigmoid")
    linear(b, "att", "h", p + "attn_output", (e, sizes.q_width), bias=False)
