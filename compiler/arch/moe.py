"""Mixtures of experts as llama.cpp's build_moe_ffn computes them, for the families whose
layers route tokens to experts (qwen3moe, glm4moe, deepseek2): their expert hyperparameters
read with bounds, and the block as plan ops.

What the families differ in is data, not code: the router is one moe_route op whose
attributes say how experts are scored and chosen (softmax or sigmoid, a selection bias,
grouped top-k) and how their weights are made (renormalized, scaled); shared experts are a
plain SwiGLU FFN beside the routed ones; leading dense layers a plain FFN instead of them.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from rfc.artifacts.plan import OPS, OpKind
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, Rope, Sizes, attention, expert_scales, glu_ffn, hparams, kv_spec, linear, output_head,
    read_experts, read_rope, read_sizes, require_output, require_whole_heads, rope_factors, stack_widths,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_EXPERTS, MAX_FF, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

# llama.cpp's expert_gating_func values (llama_expert_gating_func_type) rfc implements;
# 0 (none) means the architecture's default. 4 (sqrt softplus) is refused by name.
GATING_FUNCS = {1: "softmax", 2: "sigmoid", 3: "softmax_weight"}


@dataclass(frozen=True)
class Experts:
    """One layer kind's experts: `count` routed SwiGLU experts of width `n_ff`, `used` per
    token; how the router scores and weighs them (moe_route's attributes); `shared` experts
    that every token runs (one FFN of shared x n_ff, or `shared_ff` wide where the file says so),
    with `shared_gate` times sigmoid(ffn_gate_inp_shexp x), one gate per token (qwen35moe,
    qwen3next); the first `dense_lead` layers have a dense FFN instead. With `fused_gate_up` a
    layer's gate and up experts may come fused in `ffn_gate_up_exps` (expert_gate_up)."""

    count: int
    used: int
    n_ff: int
    gating: str = "softmax"
    norm: bool = True
    scale: float = 1.0
    groups: int = 1
    groups_used: int = 1
    shared: int = 0
    dense_lead: int = 0
    shared_ff: int = 0
    shared_gate: bool = False
    # the loader also takes gate and up fused in one ffn_gate_up_exps (create_tensor_gate_up_exps)
    fused_gate_up: bool = False

    @property
    def shared_width(self) -> int:
        return self.shared_ff or self.shared * self.n_ff

    def route_attrs(self) -> dict:
        """moe_route's attributes: n_used and the optional ones that are not at their defaults."""
        defaults = dict(OPS[OpKind.MOE_ROUTE].optional)
        attrs = {"n_used": self.used}
        for f in fields(self):
            if f.name in defaults and getattr(self, f.name) != defaults[f.name]:
                attrs[f.name] = getattr(self, f.name)
        return attrs

    def is_moe(self, layer: int) -> bool:
        return layer >= self.dense_lead

    def hparams(self) -> dict:
        """For `rfc inspect` (HParams.extra)."""
        extra = {"expert_count": self.count, "expert_used_count": self.used, "expert_feed_forward_length": self.n_ff}
        if self.shared:
            extra["expert_shared_count"] = self.shared
        if self.shared_ff:
            extra["expert_shared_feed_forward_length"] = self.shared_ff
        if self.dense_lead:
            extra["leading_dense_block_count"] = self.dense_lead
        if self.groups > 1:
            extra.update(expert_group_count=self.groups, expert_group_used_count=self.groups_used)
        if self.gating != "softmax":
            extra["expert_gating"] = self.gating
        return extra


def read_experts_of(md: Metadata, *, n_ff: int | None, expert_ff: bool = True) -> tuple[int, int, int, int, int]:
    """(count, used, n_ff, groups, groups_used) as llama.cpp's load_hparams reads them for every
    MoE architecture: both counts required here, the group counts optional (llama.cpp asserts
    groups < count, count % groups == 0 and 0 < groups_used < groups), the expert FFN width from
    `expert_feed_forward_length`, else n_ff / used (qwen3moe, glm4moe pass feed_forward_length;
    None: the key is required; `expert_ff` False: the loader never reads the key and the experts are
    n_ff wide, olmoe). The chosen experts must fit in the groups kept. (llama.cpp also takes
    per-layer arrays for the used count and the expert width; Metadata.int refuses them by name.)"""
    count, used = read_experts(md)
    if not count:
        raise CompileError(f"{md.path}: {md.arch} needs {md.key('expert_count')} and {md.key('expert_used_count')} > 0")
    groups = md.int("expert_group_count", 0, count - 1, default=0)
    groups_used = 1
    if groups > 1:
        if count % groups:
            raise CompileError(
                f"{md.path}: {md.key('expert_count')} {count} is not a multiple of expert_group_count {groups}"
            )
        groups_used = md.int("expert_group_used_count", 1, groups - 1)
        if used > groups_used * (count // groups):
            raise CompileError(
                f"{md.path}: expert_used_count {used} exceeds the {groups_used} groups of "
                f"{count // groups} "
                "experts kept"
            )
    else:
        groups = 1
    if not expert_ff and n_ff is not None:
        n_ff_exp = n_ff
    elif n_ff is None or n_ff < used:
        n_ff_exp = md.int("expert_feed_forward_length", 1, MAX_FF)
    else:
        n_ff_exp = md.int("expert_feed_forward_length", 1, MAX_FF, default=n_ff // used)
    return count, used, n_ff_exp, groups, groups_used


def read_leading_dense(md: Metadata) -> tuple[int, int, int]:
    """(leading_dense_block_count, the dense FFN width, expert_shared_count) as the DeepSeek-style
    loaders read them (deepseek, dots1, glm4moe): the dense width required when there are dense
    layers, the shared count required."""
    n_layers = md.int("block_count", 1, 1 << 16)  # read_sizes bounded it already
    dense_lead = md.int("leading_dense_block_count", 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1 if dense_lead else 0, MAX_FF, default=0)
    return dense_lead, n_ff, md.int("expert_shared_count", 0, MAX_EXPERTS)


def read_gating(md: Metadata, default: str | None, *, required: bool = False) -> str:
    """`expert_gating_func` (llama.cpp: 0 or absent means the architecture's default). `default`
    None: the graph has none (llama.cpp aborts on 0), so 0 or an absent key is refused; `required`:
    the loader requires the key itself."""
    code = md.int("expert_gating_func", 0, 16) if required else md.int("expert_gating_func", 0, 16, default=0)
    if code == 0 and default is not None:
        return default
    if code not in GATING_FUNCS:
        raise CompileError(
            f"{md.path}: metadata {md.key('expert_gating_func')} = {code} is not supported "
            f"(supported: {', '.join(f'{k} ({v})' for k, v in GATING_FUNCS.items())})"
        )
    return GATING_FUNCS[code]


# llama.cpp's build_ffn / build_moe_ffn clamp a SwiGLU only at a limit above this
CLAMP_EPS = 1e-6


def clamped(activation: str, limit: float) -> dict:
    """swiglu's attributes for llama.cpp's SwiGLU clamp at `limit`: `activation` 'silu_clamp' where it calls
    ggml_swiglu_clamp (maple's, hy_v4's experts), 'silu_cap' where it clamps silu(gate) and up apart (the other
    architectures); {} (no clamp) at a limit of CLAMP_EPS or less."""
    return {"activation": activation, "limit": limit} if limit > CLAMP_EPS else {}


def read_weights_scale(md: Metadata) -> float:
    """`expert_weights_scale`: llama.cpp scales the expert weights unless it is 0 or 1."""
    scale = md.float("expert_weights_scale", 0.0, 1e6, default=0.0)
    return 1.0 if scale == 0.0 else scale


def experts_after_dense(md: Metadata, n_layers: int, *, dense_required: bool = True) -> tuple[Experts, int]:
    """(Experts, the dense FFN width) of a stack whose first `leading_dense_block_count` layers (required, or 0
    by default) are dense and the rest routed experts with a required gating function (not softmax_weight),
    `expert_weights_norm` and `_scale` where set, expert groups and `expert_shared_count` shared experts
    (dots3note, minimax-m3)."""
    key = "leading_dense_block_count"
    dense_lead = md.int(key, 0, n_layers) if dense_required else md.int(key, 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1, MAX_FF) if dense_lead else 0
    if dense_lead == n_layers:
        return Experts(0, 0, 0, dense_lead=dense_lead), n_ff
    count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
    shared = md.int("expert_shared_count", 0, 64)
    e = Experts(count, used, n_ff_exp, gating=read_gating(md, None, required=True),
                norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                groups_used=groups_used, shared=shared, dense_lead=dense_lead)  # fmt: skip
    if e.gating == "softmax_weight":
        raise CompileError(f"{md.path}: {md.key('expert_gating_func')} softmax_weight is not a {md.arch} router")
    return e, n_ff


def declare_expert_buffers(b: ModelBuilder, n_embd: int, e: Experts) -> None:
    """The router's and the experts' activations: logits, ids and weights per token, the
    routed experts' gate/up/out per slot, their weighted sum, the shared experts' gate/up."""
    b.buffer("router", "T", e.count)
    b.buffer("expert_ids", "T", e.used, dtype="i32")
    b.buffer("expert_weights", "T", e.used)
    b.buffer("exp_gate", "T", e.used * e.n_ff)
    b.buffer("exp_up", "T", e.used * e.n_ff)
    b.buffer("experts_out", "T", e.used * n_embd)
    b.buffer("moe_out", "T", n_embd)
    if e.shared:
        b.buffer("shexp_gate", "T", e.shared_width)
        b.buffer("shexp_up", "T", e.shared_width)
    if e.shared_gate:
        b.buffer("shexp_logit", "T", 1)


def expert_gate_up(b: ModelBuilder, i: int, e: Experts, n_embd: int) -> tuple[str, str]:
    """Layer i's gate and up expert weights [count, n_ff, n_embd]: `ffn_gate_exps` and
    `ffn_up_exps`, or, where the family's loader takes it (e.fused_gate_up: deepseek2, qwen35moe,
    qwen3next) and the layer has it, the halves of the fused `ffn_gate_up_exps` [count, 2 n_ff,
    n_embd] (each expert's gate rows, then its up rows; split per expert at compile time).
    llama.cpp uses the fused tensor when it is there and then reads no split one: a layer with
    both is refused rather than run with either."""
    p = f"blk.{i}."
    fused = p + "ffn_gate_up_exps.weight"
    if e.fused_gate_up and b.has(fused):
        if b.has(p + "ffn_gate_exps.weight") or b.has(p + "ffn_up_exps.weight"):
            raise CompileError(f"{b.path}: layer {i} has both {fused} and ffn_gate_exps/ffn_up_exps")
        shape = (e.count, 2 * e.n_ff, n_embd)
        return (b.expert_rows(fused + ":gate", "ffn_gate_exps", fused, shape, 0, e.n_ff),
                b.expert_rows(fused + ":up", "ffn_up_exps", fused, shape, e.n_ff, 2 * e.n_ff))  # fmt: skip
    shape = (e.count, e.n_ff, n_embd)
    return (
        b.tensor(p + "ffn_gate_exps.weight", "ffn_gate_exps", shape),
        b.tensor(p + "ffn_up_exps.weight", "ffn_up_exps", shape),
    )


def moe_block(
    b: ModelBuilder,
    i: int,
    sizes: Sizes,
    e: Experts,
    *,
    src: str = "h",
    residual: str | None = "x",
    scales: bool = False,
    routed: bool = False,
    activation: str = "silu",
    limit: float | None = None,
    mix: float = 1.0,
    probs_bias: str = "exp_probs_b.bias",
    shared_glu: dict | None = None,
) -> None:
    """residual += routed experts(src) (+ shared experts(src)), for layer i.

    The router reads src (ffn_gate_inp), chooses and weighs `used` experts per token
    (moe_route; DeepSeek-V3's and GLM's selection bias `exp_probs_b.bias` where the file has
    one); gate and up of the chosen experts, SwiGLU, down, and their weighted sum; the shared
    experts (ffn_*_shexp) are one dense SwiGLU FFN over the same input, its matmuls with their
    weight scales and biases where the file has them (common.linear). llama.cpp adds the two
    before the residual; here each is added to it in turn (float32 rounding apart, the same),
    which lets the cpu lowering fold both adds into the ops that make them. src is
    overwritten by the shared experts' output. A gated shared expert (qwen35moe) is scaled by
    sigmoid(ffn_gate_inp_shexp src) per token: a matmul to one column, then swiglu 'sigmoid'
    with that column as the gate of every up value (before ffn_down, which is linear: the
    same product as llama.cpp's scaling of its output, float32 rounding apart).

    `scales`: the graph passes build_moe_ffn the experts' `.scale` tensors and build_ffn the
    shared experts' (qwen3moe, qwen35moe): gate's and up's scale each chosen expert's matmul
    output (moe_scale, gate's inside the activation), down's its weight in the sum
    (expert_scales). Without, every one of them is known and unused (llama.cpp's loader reads
    them for every architecture, most graphs never apply them). The shared experts' biases are
    never read: no graph adds one.

    `routed`: the recipe already wrote the router's logits into `router` from another input
    (smallthinker routes the layer's input before attention); `activation`: the experts' gate
    activation, swiglu's ("relu": smallthinker's ReLU-gated experts); `residual` None: the experts'
    sum, routed and shared, stays in `moe_out` (grok and afmoe norm it first); `limit`: the
    activation's limit ("silu_clamp": maple's swiglu_clamp_exp); `mix`: both sums times this factor
    before they are added (cohere2moe: (routed + shared) x 0.5, the same in float32 for a power of two);
    `probs_bias`: the selection bias's tensor name in the layer (hy_v3's has no `.bias` suffix);
    `shared_glu`: the shared experts' swiglu attributes (step35's clamp: activation and limit)."""
    p, n = f"blk.{i}.", sizes.n_embd
    if not scales:
        for name in ("gate_exps", "up_exps", "down_exps", "gate_up_exps", "gate_shexp", "up_shexp", "down_shexp"):
            b.unused(f"{p}ffn_{name}.scale", UNUSED_SCALE)
    if not routed:
        b.op("matmul", (src,), ("router",), (b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (e.count, n)),))
    bias = b.optional_tensor(p + probs_bias, "exp_probs_b", (e.count,))
    # ffn_down_exps.scale [n_expert]: llama.cpp scales each chosen expert's down output by it
    # (build_lora_mm_id's w_s), a factor of the expert's weight in the sum (moe_route's expert_scale)
    escale = b.optional_tensor(p + "ffn_down_exps.scale", "ffn_down_exps_scale", (e.count,)) if scales else None
    b.op(
        "moe_route",
        ("router",),
        ("expert_ids", "expert_weights"),
        tuple(w for w in (bias, escale) if w),
        **e.route_attrs(),
        **({"expert_scale": True} if escale else {}),
    )
    for w, buf in zip(expert_gate_up(b, i, e, n), ("exp_gate", "exp_up")):
        b.op("moe_matmul", (src, "expert_ids"), (buf,), (w,))
    if scales:
        expert_scales(
            b, i, e.count, "exp_gate", "exp_up", fused=e.fused_gate_up and b.has(p + "ffn_gate_up_exps.weight")
        )
    glu = ({} if activation == "silu" else {"activation": activation}) | ({"limit": limit} if limit else {})
    b.op("swiglu", ("exp_gate", "exp_up"), ("exp_gate",), **glu)
    down = b.tensor(p + "ffn_down_exps.weight", "ffn_down_exps", (e.count, n, e.n_ff))
    b.op("moe_matmul", ("exp_gate", "expert_ids"), ("experts_out",), (down,))
    b.op("moe_combine", ("experts_out", "expert_weights"), ("moe_out",))
    if mix != 1.0:
        b.op("scale", ("moe_out",), ("moe_out",), factor=mix)
    if residual is None and not e.shared:
        return
    if residual is not None:
        b.op("add", (residual, "moe_out"), (residual,))
    if e.shared:
        width = e.shared_width
        linear(b, src, "shexp_gate", p + "ffn_gate_shexp", (width, n), bias=False, scale=scales)
        linear(b, src, "shexp_up", p + "ffn_up_shexp", (width, n), bias=False, scale=scales)
        if e.shared_gate:
            gate = b.vector_row(p + "ffn_gate_inp_shexp.weight", "ffn_gate_inp_shexp", n)
            b.op("matmul", (src,), ("shexp_logit",), (gate,))
            b.op("swiglu", ("shexp_logit", "shexp_up"), ("shexp_up",), activation="sigmoid")
        b.op("swiglu", ("shexp_gate", "shexp_up"), ("shexp_gate",), **(shared_glu or {}))
        linear(b, "shexp_gate", src, p + "ffn_down_shexp", (n, width), bias=False, scale=scales)
        if mix != 1.0:
            b.op("scale", (src,), (src,), factor=mix)
        b.op("add", (residual or "moe_out", src), (residual or "moe_out",))


def moe_transformer(
    model: GGUFModel,
    arch: str,
    experts: Callable[[Metadata], tuple[Experts, int]],
    *,
    ffn_norm: str = "ffn_norm",
    full_rotary: bool = False,
    scales: bool = False,
    rope_style: str = "neox",
    factors: bool = False,
    qk_norm_rows: bool = False,
    output_required: bool = False,
    windows: Callable[[Metadata, int, Rope], tuple[int, tuple[bool, ...], Rope]] | None = None,
    moe_args: Callable[[Metadata], dict] | None = None,
    ffn_bias: bool = False,
    unused: Callable[[ModelBuilder, int], None] | None = None,
    after_moe: Callable[[ModelBuilder, int, Sizes], None] | None = None,
    dense_activation: str = "silu",
    rope: Callable[[Metadata, Sizes, Rope], Rope] | None = None,
    output_scale: bool = True,
) -> ModelSpec:
    """The llama-style MoE stacks (qwen3moe, glm4moe): pre-norm GQA attention with NeoX RoPE,
    Q/K biases and per-head Q/K norms where the file has them, then the FFN's norm (`ffn_norm`:
    glm4moe's is post_attention_norm) and the experts (a dense SwiGLU FFN in the leading dense
    layers). `experts(md)` reads the family's expert hyperparameters: (Experts, the dense FFN
    width). `full_rotary`: the family asserts rope.dimension_count == head_dim (qwen3moe).
    `scales`: the graph applies the FFNs' weight scales (moe_block's; qwen3moe), else they are
    known and unused (glm4moe, bailingmoe2, qwen3vlmoe). `rope_style` "adjacent" and `factors`
    (`rope_freqs` where the file has it): deepseek; `qk_norm_rows`: Q and K RMS-normed over their
    whole rows before RoPE, required (olmoe); `output_required`: no tied fallback in the loader;
    `windows(md, n_layers, rope)`: (the window, a flag per layer, the sliding-window layers' RoPE) for
    the sliding-window layers, which alone rotate Q and K: the global layers attend without positions
    (exaone-moe, maple); `moe_args(md)`: more of moe_block's arguments (the experts' activation and limit:
    maple; the selection bias's name: hy_v3); `ffn_bias`: the dense FFNs add their biases where present
    (hy_v3); `unused(b, n_layers)`: declares the tensors the family's loader reads and its graph leaves
    unused (hy_v3's dense FFN tensors in its expert layers); `after_moe(b, i, sizes)`: what follows the
    experts of layer i (grovemoe's adjugate experts over their sum, with moe_args' residual None);
    `dense_activation`: the dense FFNs' gate activation (minimax-m3's swiglu_oai); `rope(md, sizes,
    rope)` adjusts the file's RoPE (M-RoPE's sections: glm4moe, qwen3vlmoe); `output_scale` False:
    `output.scale` known and unused (deepseek2-ocr's plain ggml_mul_mat)."""
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    # llama.cpp reads nextn_predict_layers for every architecture: the last ones of block_count
    # are multi-token-prediction blocks (GLM-4.5's), which its forward pass skips; so does this one.
    nextn = md.int("nextn_predict_layers", 0, sizes.n_layers - 1, default=0)
    sizes = replace(sizes, n_layers=sizes.n_layers - nextn)
    hook = rope
    rope = read_rope(md, sizes, rope_style)
    if hook is not None:
        rope = hook(md, sizes, rope)
    if full_rotary:
        require_whole_heads(md, rope, sizes, arch)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    e, n_ff = experts(md)
    b = ModelBuilder(model)
    if output_required:
        require_output(b, arch)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (
        *stack_widths(sizes),
        ("xr", sizes.n_embd),
        ("hr", sizes.n_embd),
        ("logits", sizes.vocab_size),
    ):
        b.buffer(name, "R" if name in ("xr", "hr", "logits") else "T", width)
    declare_expert_buffers(b, sizes.n_embd, e)
    if e.dense_lead:
        b.buffer("gate", "T", n_ff)
        b.buffer("up", "T", n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    qk_norm = qk_norm_rows or b.has("blk.0.attn_q_norm.weight")
    rope_freqs = rope_factors(b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=False) if factors else None
    cfg = Attention(rope, scale=1.0 / math.sqrt(sizes.head_dim), qk_norm=qk_norm, qk_norm_rows=qk_norm_rows,
                    factors=rope_freqs)  # fmt: skip
    window, local, local_rope = windows(md, sizes.n_layers, rope) if windows else (None, (), rope)
    glu = moe_args(md) if moe_args else {}
    if unused is not None:
        unused(b, sizes.n_layers)
    b.op("embed", ("tokens",), ("x",), (embd,))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        if b.has(p + "attn_q_norm.weight") != qk_norm:
            raise CompileError(f"{md.path}: attn_q_norm is in some layers and not in others")
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        if windows:  # RoPE on the sliding-window layers only
            local_cfg = replace(cfg, rope=local_rope, window=window)
            attention(b, i, sizes, eps, local_cfg if local[i] else cfg, rope=local[i])
        else:
            attention(b, i, sizes, eps, cfg)
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(f"{p}{ffn_norm}.weight", ffn_norm, (sizes.n_embd,)),), eps=eps)
        if e.is_moe(i):
            moe_block(b, i, sizes, e, scales=scales, **glu)
            if after_moe is not None:
                after_moe(b, i, sizes)
        else:
            glu_ffn(b, i, sizes.n_embd, n_ff, bias=ffn_bias, scale=scales, activation=dense_activation)
            b.op("add", ("x", "h"), ("x",))
    tied = output_head(b, sizes, eps, scale=output_scale)
    b.unused_layers(
        range(sizes.n_layers, sizes.n_layers + nextn),
        "a multi-token prediction (MTP) block: llama.cpp's forward pass skips it too",
    )
    hp = hparams(md, sizes, rope, n_ff or e.n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=rope_freqs is not None,
                 extra=e.hparams() | ({"nextn_predict_layers": nextn} if nextn else {})
                 | ({"sliding_window": window, "sliding_window_layers": [i for i, on in enumerate(local) if on]}
                    if windows else {}))  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
