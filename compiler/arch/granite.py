"""`granite` (IBM Granite 3.x dense): llama's block with four multipliers, as llama.cpp's granite
graph applies them: the token embedding times `embedding_scale`, each sublayer's output times
`residual_scale` before its residual add, attention scores times `attention.scale` (instead of
1/sqrt(head_dim)), the logits divided by `logit_scale` (required; the others optional, 0 or
absent: none). `rope.scaling.finetuned` false turns RoPE off (llama.cpp's granite loader reads it
as that switch). With `expert_count` > 0 its loader builds granitemoe's experts under this
name (the same graph), and so does this recipe, RoPE switch included.

`granitemoe` (Granite 3.x MoE: 1B-A400M, 3B-A800M; llama.cpp's granite graph with its own loader):
the same block and multipliers with a Mixtral-style mixture of experts as the FFN (softmax
router, top expert_used_count renormalized, no weight scale: llama.cpp passes none; each expert
`feed_forward_length` wide) plus, when `expert_shared_feed_forward_length` is set (Granite MoE
Shared), a shared SwiGLU expert of that width added to the routed ones before the residual
multiplier; without `expert_count` its loader builds granite's dense FFN (and so does this
recipe). Its loader does not read rope.scaling.finetuned: RoPE is always on.

`granite_swa` (llama.cpp's granite-swa.cpp): granite's block and multipliers (the logit scale
required) with interleaved sliding-window attention (the layers `attention.sliding_window_pattern`
flags, a per-layer array, required, slide over `attention.sliding_window` positions), a learned sink
logit per query head in every layer (`attn_sinks`, required), RoPE on the layers
`attention.rope_pattern` flags (optional: every layer; no `rope.scaling.finetuned` switch), and
granitemoe's experts, whose gate and up may come fused in `ffn_gate_up_exps` and whose shared expert
keeps its gate and up fused in `ffn_up_shexp` [2 n_ff_shexp, n_embd] (gate rows first, as
ggml_swiglu splits it). Granite Vision's deepstack inputs (`deepstack_mapping` with a layer >= 0)
are refused: they add the vision projector's streams, which a text-only server does not have.

`minicpm` (MiniCPM 1B/2B, MiniCPM4): llama.cpp runs it through granite's graph with its own
loader: the multipliers default to embedding 12, residual 1.4/sqrt(block_count) and logit
256/n_embd (the logits divided by it, as for granite), the file's keys where present; no
attention.scale; RoPE always on (with LongRoPE's long/short factors under the "longrope"
scaling type, else `rope_freqs`); experts as granitemoe's, without a shared one."""

import math
from dataclasses import dataclass, replace

import numpy as np

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Attention, Rope, Sizes, attention, declare_buffers, f32, glu_ffn, hparams, kv_spec, linear, moe_ffn,
    output_head, read_experts, read_rope, read_sizes, require_whole_heads, rope_factors,
)  # fmt: skip
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, expert_gate_up
from rfc.compiler.arch.swa import require_one_head_size, sliding_layers
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    return _build(model, "granite")


def build_moe(model: GGUFModel) -> ModelSpec:
    return _build(model, "granitemoe")


def build_minicpm(model: GGUFModel) -> ModelSpec:
    return _build(model, "minicpm")


def build_swa(model: GGUFModel) -> ModelSpec:
    return _build(model, "granite_swa")


@dataclass(frozen=True)
class Layers:
    """granite_swa's per-layer switches: which layers slide (and over how many positions), which
    rotate Q and K. granite and granitemoe: every layer global and rotated (or none, by granite's
    rope.scaling.finetuned switch)."""

    window: int | None
    sliding: tuple[bool, ...]
    rope: tuple[bool, ...]

    @staticmethod
    def read(md: Metadata, sizes: Sizes, rope: Rope, use_rope: bool) -> "Layers":
        n_layers = sizes.n_layers
        if md.arch != "granite_swa":
            return Layers(None, (False,) * n_layers, (use_rope,) * n_layers)
        window, sliding = sliding_layers(md, n_layers)
        require_one_head_size(md, sizes, rope.n_rot)
        # get_arr: a scalar is not read at all, and entries past the array keep the loader's fill (rotated)
        rope_on = (True,) * n_layers
        if md.is_list("attention.rope_pattern"):
            on = md.flags("attention.rope_pattern", n_layers)
            rope_on = tuple(i >= len(on) or on[i] for i in range(n_layers))
        mapping = md.raw("deepstack_mapping", ()) if md.is_list("deepstack_mapping") else ()
        if any(not isinstance(v, int) or v >= 0 for v in mapping):
            raise CompileError(f"{md.path}: metadata {md.key('deepstack_mapping')} feeds layers from a vision "
                               "projector (Granite Vision's deepstack): rfc runs the text model only")  # fmt: skip
        return Layers(window, sliding, rope_on)

    def extra(self) -> dict:
        if self.window is None:
            return {}
        return {"sliding_window": self.window, "attention_sinks": True}

    def attention(self, cfg: Attention, i: int) -> Attention:
        if self.window is None:
            return cfg
        return replace(cfg, window=self.window if self.sliding[i] else None, sinks=True)


@dataclass(frozen=True)
class Multipliers:
    """granite's four multipliers (0: none), float32 as llama.cpp keeps them."""

    logit: float
    residual: float
    embedding: float
    attention: float

    @staticmethod
    def read(md: Metadata, *, logit_required: bool) -> "Multipliers":
        if logit_required:  # granite's and granitemoe's loader; granitehybrid's lets it be 0 or absent
            logit = md.float("logit_scale", 0.0, 1e6, open_lo=True)
        else:
            logit = md.float("logit_scale", 0.0, 1e6, default=0.0)
        return Multipliers(f32(logit), f32(md.float("residual_scale", 0.0, 1e6, default=0.0)),
                           f32(md.float("embedding_scale", 0.0, 1e6, default=0.0)),
                           f32(md.float("attention.scale", 0.0, 1e6, default=0.0)))  # fmt: skip

    @staticmethod
    def read_minicpm(md: Metadata, n_layers: int, n_embd: int) -> "Multipliers":
        """minicpm's loader: embedding 12, residual 1.4 / sqrtf(n_layer), logit 256 / n_embd (float32)
        unless the file says otherwise; no attention.scale (1/sqrt(head_dim))."""
        n32 = np.float32
        residual = n32(1.4) / np.sqrt(n32(n_layers))
        return Multipliers(f32(md.float("logit_scale", 0.0, 1e6, default=n32(256.0) / n32(n_embd), open_lo=True)),
                           f32(md.float("residual_scale", 0.0, 1e6, default=residual)),
                           f32(md.float("embedding_scale", 0.0, 1e6, default=12.0)), 0.0)  # fmt: skip

    def extra(self) -> dict:
        return {"logit_scale": self.logit, "residual_scale": self.residual, "embedding_scale": self.embedding,
                "attention_scale": self.attention}  # fmt: skip


@dataclass(frozen=True)
class Ffn:
    """granite's FFN: dense SwiGLU with biases, or granitemoe's routed experts, each n_ff wide,
    with a shared expert n_ff_shexp wide when that is set."""

    n_ff: int
    n_expert: int
    n_used: int
    n_ff_shexp: int
    fused: bool = False  # granite_swa: gate and up experts possibly fused, the shared expert's always

    @staticmethod
    def read(md: Metadata, n_expert: int, n_used: int) -> "Ffn":
        shared = n_expert and md.arch != "minicpm"  # minicpm's loader reads no shared expert width
        n_ff_shexp = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0) if shared else 0
        return Ffn(md.int("feed_forward_length", 1, MAX_FF), n_expert, n_used, n_ff_shexp, md.arch == "granite_swa")

    def declare_shared_expert(self, b: ModelBuilder, n_embd: int) -> None:
        if self.n_ff_shexp:
            for name, width in (("moe_out", n_embd), ("shexp_gate", self.n_ff_shexp), ("shexp_up", self.n_ff_shexp)):
                b.buffer(name, "T", width)

    def extra(self) -> dict:
        if not self.n_expert:
            return {}
        extra = {"expert_count": self.n_expert, "expert_used_count": self.n_used}
        if self.n_ff_shexp:
            extra["expert_shared_feed_forward_length"] = self.n_ff_shexp
        return extra


def _moe_ffn(b: ModelBuilder, i: int, n_embd: int, ffn: Ffn) -> None:
    """h = routed experts(h) (+ the shared expert(h)), as llama.cpp's granite build_layer_ffn."""
    gate_up = None
    if ffn.fused:
        gate_up = expert_gate_up(b, i, Experts(ffn.n_expert, ffn.n_used, ffn.n_ff, fused_gate_up=True), n_embd)
    if not ffn.n_ff_shexp:
        moe_ffn(b, i, n_embd, ffn.n_ff, ffn.n_expert, ffn.n_used, gate_up=gate_up)
        return
    moe_ffn(b, i, n_embd, ffn.n_ff, ffn.n_expert, ffn.n_used, dst="moe_out", gate_up=gate_up)
    p, width = f"blk.{i}.", ffn.n_ff_shexp
    if ffn.fused:  # ffn_up_shexp [2 width, n_embd]: ggml_swiglu's gate half first, then up
        fused = p + "ffn_up_shexp.weight"
        for buf, lo in (("shexp_gate", 0), ("shexp_up", width)):
            w = b.rows(f"{fused}:{buf[6:]}", f"ffn_{buf[6:]}_shexp", fused, (2 * width, n_embd), lo, lo + width)
            b.op("matmul", ("h",), (buf,), (w,))
        b.unused(p + "ffn_up_shexp.scale", UNUSED_SCALE)
    else:  # granite's graph passes build_ffn no bias and no scale for its shared expert
        linear(b, "h", "shexp_gate", p + "ffn_gate_shexp", (width, n_embd), bias=False, scale=False)
        linear(b, "h", "shexp_up", p + "ffn_up_shexp", (width, n_embd), bias=False, scale=False)
    b.op("swiglu", ("shexp_gate", "shexp_up"), ("shexp_gate",))
    linear(b, "shexp_gate", "h", p + "ffn_down_shexp", (n_embd, ffn.n_ff_shexp), bias=False, scale=False)
    b.op("add", ("h", "moe_out"), ("h",))


def _residual(b: ModelBuilder, factor: float) -> None:
    """x += h, h first times residual_scale (when set)."""
    if factor:
        b.op("scale", ("h",), ("h",), factor=factor)
    b.op("add", ("x", "h"), ("x",))


def ffn_sublayer(b: ModelBuilder, i: int, n_embd: int, eps: float, ffn: Ffn, residual: float) -> None:
    """The rest of layer i once its mixer (attention, or granitehybrid's Mamba2) has written h:
    the residual, ffn_norm, the FFN, the residual again (each residual times residual_scale)."""
    _residual(b, residual)
    b.op("rmsnorm", ("x",), ("h",), (b.tensor(f"blk.{i}.ffn_norm.weight", "ffn_norm", (n_embd,)),), eps=eps)
    if ffn.n_expert:
        _moe_ffn(b, i, n_embd, ffn)
    else:
        glu_ffn(b, i, n_embd, ffn.n_ff, bias=True, scale=False)  # as granite(-hybrid).cpp call build_ffn
    _residual(b, residual)


def _build(model: GGUFModel, arch: str) -> ModelSpec:
    md = Metadata(model, arch)
    sizes = read_sizes(md)
    rope = read_rope(md, sizes, "adjacent")
    require_whole_heads(md, rope, sizes, arch)
    n_expert, n_used = read_experts(md)
    ffn = Ffn.read(md, n_expert, n_used)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    if arch == "minicpm":
        mult = Multipliers.read_minicpm(md, sizes.n_layers, sizes.n_embd)
    else:
        mult = Multipliers.read(md, logit_required=True)
    use_rope = md.bool("rope.scaling.finetuned", default=True) if arch == "granite" else True
    layers = Layers.read(md, sizes, rope, use_rope)
    b = ModelBuilder(model)
    declare_buffers(b, sizes, ffn.n_ff, ffn.n_used, ffn.n_expert)
    ffn.declare_shared_expert(b, sizes.n_embd)
    embd = b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, sizes.n_embd))
    factors = rope_factors(
        b, rope, md.int("context_length", 1, MAX_CONTEXT), long_short=rope.scaling_type == "longrope"
    )
    cfg = Attention(
        rope, scale=mult.attention or 1.0 / math.sqrt(sizes.head_dim), factors=factors if use_rope else None
    )
    b.op("embed", ("tokens",), ("x",), (embd,), **({"scale": mult.embedding} if mult.embedding else {}))
    for i in range(sizes.n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (sizes.n_embd,)),), eps=eps)
        attention(b, i, sizes, eps, layers.attention(cfg, i), out_bias=True, rope=layers.rope[i])
        ffn_sublayer(b, i, sizes.n_embd, eps, ffn, mult.residual)
    tied = output_head(b, sizes, eps)
    b.op("scale", ("logits",), ("logits",), factor=f32(1.0 / mult.logit))
    hp = hparams(md, sizes, rope, ffn.n_ff, eps, tied_embeddings=tied, qkv_bias=b.has("blk.0.attn_q.bias"),
                 rope_freq_factors=factors is not None and any(layers.rope),
                 extra={**mult.extra(), **ffn.extra(), **layers.extra()})  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv_spec(sizes))
