"""The RWKVs, as llama.cpp 0.3.36 builds them (src/models/rwkv6*.cpp, rwkv7*.cpp, arwkv7.cpp): attention-free
stacks whose whole context is a per-sequence state, each layer a time mix (a WKV recurrence) and an FFN.

- `rwkv6` (RWKV-6 "Finch"): the embedding LayerNorm-ed (token_embd_norm), then per layer x += time_mix(LN(x)),
  x += channel_mix(LN(x)) (attn_norm, attn_norm_2: LayerNorms with biases), the residual halved after every
  `rescale_every_n_layers`-th layer; the output LayerNorm-ed. Each mix sees the previous token's normed row
  (op token_shift: one state per mix, [1, n_embd]).
- `rwkv6qwen2` (RWKV6-Qwen2, QRWKV6): a Qwen2.5 stack with RWKV-6's time mix for attention: RMS norms, one
  token shift, a SwiGLU FFN; without `time_mix_first` the recurrence is llama.cpp's gated linear attention
  (k (1 - w), scaled by head_size^-0.5, no group norm, a sigmoid gate) and K/V may have fewer heads
  (attention.head_count_kv), head h reading KV head h / (heads / kv heads).
- `rwkv7` (RWKV-7 "Goose"): rwkv6's stack around RWKV-7's time mix; the channel mix relu(key)^2 -> value.
- `arwkv7` (ARWKV-7): rwkv6qwen2's stack around RWKV-7's time mix, its gate and group norm optional.

RWKV-6's time mix: xx = lerp(x, x_prev, lerp_x); five mixes x_i = lerp(x, x_prev, m_i + mu_i) with m =
time_mix_w2_i(tanh(time_mix_w1 xx)) (the data-dependent token shift; mu the fused lerps or lerp_w/k/v/r/g),
r/k/v/g their matmuls, the decay LoRA time_mix_decay_w2(tanh(time_mix_decay_w1 x_w)), op wkv6, the
per-head group norm (LayerNorm eps 64e-5, time_mix_ln), x silu(g), time_mix_output.
RWKV-7's: six mixes (r, w, k, v, a, g) by the fused lerps; r, k, v; the decay LoRA w2(tanh(w1 x_w)); from
layer 1 on v = lerp(v, v_first, sigmoid(v2(v1 x_v) + v0)) (v_first: layer 0's v); g = g2(sigmoid(g1 x_g));
a = a2(a1 x_a); op wkv7 (w0, a0, k_k, k_a, r_k); the group norm; + the bonus; x g; time_mix_output.

The time and channel mixes' projections take no `.scale` (llama.cpp loads none for them: a file with one is
refused); the Qwen-based FFNs' are loaded and not applied, as llama.cpp; `output.scale` applies. State per sequence and
layer: the token shifts ((1 or 2) x n_embd floats) and the WKV matrices (n_embd x head_size floats): RWKV-7
World 2.9B's 32 layers of 2560 in heads of 64: 32 x (2 x 2560 + 2560 x 64) x 4 B = 21 MiB per sequence.
"""

from dataclasses import dataclass

import numpy as np

from rfc.artifacts.limits import MAX_DELTA_STATE
from rfc.compiler.arch import layernorm
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, embedding_rows, glu_ffn, linear, output_head
from rfc.compiler.arch.mamba2 import NO_KV
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_EMBD, MAX_FF, MAX_LAYERS, Metadata
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import HParams, ModelSpec

GROUP_NORM_EPS = 64e-5  # llama.cpp's fixed group-norm epsilon (ggml_norm(cur, 64e-5f))
V6_MIXES = ("w", "k", "v", "r", "g")  # RWKV-6's data-dependent mixes, in time_mix_w2's and the fused lerps' order
V7_MIXES = ("r", "w", "k", "v", "a", "g")  # RWKV-7's, in time_mix_lerp_fused's order


@dataclass(frozen=True)
class Rwkv:
    arch: str
    n_embd: int
    n_layers: int
    head: int  # wkv.head_size S
    n_ff: int
    vocab: int
    eps: float
    v7: bool  # RWKV-7's time mix (else RWKV-6's)
    qwen: bool  # the Qwen-based stack: RMS norms, one token shift, a SwiGLU FFN (else LayerNorms, two shifts)
    kv_heads: int = 0  # rwkv6qwen2's K/V heads (0: all)
    extra: int = 0  # RWKV-6's time_mix_extra_dim
    decay_extra: int = 0  # RWKV-6's time_decay_extra_dim
    ranks: tuple[int, int, int, int] = (0, 0, 0, 0)  # RWKV-7's decay, iclr, value-residual and gate LoRA ranks
    rescale: int = 0  # rwkv6's rescale_every_n_layers

    @property
    def heads(self) -> int:
        return self.n_embd // self.head

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads


def build_rwkv6(model: GGUFModel) -> ModelSpec:
    return _build(model, "rwkv6")


def build_rwkv6qwen2(model: GGUFModel) -> ModelSpec:
    return _build(model, "rwkv6qwen2")


def build_rwkv7(model: GGUFModel) -> ModelSpec:
    return _build(model, "rwkv7")


def build_arwkv7(model: GGUFModel) -> ModelSpec:
    return _build(model, "arwkv7")


def _read(md: Metadata, arch: str, vocab: int) -> Rwkv:
    n = md.int("embedding_length", 1, MAX_EMBD)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(md.model.tensors))))
    head = md.int("wkv.head_size", 1, MAX_DELTA_STATE)
    if n % head:
        raise CompileError(f"{md.path}: {md.key('embedding_length')} {n} is not a multiple of "
                           f"{md.key('wkv.head_size')} {head}")  # fmt: skip
    v7, qwen = arch in ("rwkv7", "arwkv7"), arch in ("rwkv6qwen2", "arwkv7")
    # llama.cpp asserts two shifts (time and channel mix) for rwkv6 / rwkv7, one for the Qwen-based stacks
    shifts = md.int("token_shift_count", 1, 2, default=2)
    if shifts != (1 if qwen else 2):
        raise CompileError(f"{md.path}: {md.key('token_shift_count')} is {shifts}; {arch} takes "
                           f"{1 if qwen else 2} (llama.cpp asserts it)")  # fmt: skip
    eps_key = "attention.layer_norm_rms_epsilon" if qwen else "attention.layer_norm_epsilon"
    r = Rwkv(arch, n, n_layers, head, md.int("feed_forward_length", 1, MAX_FF), vocab,
             md.float(eps_key, 0.0, 1.0, open_lo=True), v7, qwen)  # fmt: skip
    heads = n // head
    if not v7:
        kv = md.int("attention.head_count_kv", 0, heads, default=0)
        if kv and kv != heads and (not qwen or heads % kv):
            raise CompileError(f"{md.path}: {md.key('attention.head_count_kv')} {kv} does not divide the {heads} "
                               f"heads of {head}" + ("" if qwen else " (rwkv6's K and V have every head)"))  # fmt: skip
        rescale = 0
        if arch == "rwkv6":
            rescale = md.int("rescale_every_n_layers", 0, MAX_LAYERS, default=0)
        else:
            md.ignored("rescale_every_n_layers", "rwkv6qwen2's graph does not rescale")
        return Rwkv(**{**r.__dict__, "kv_heads": 0 if kv == heads else kv, "rescale": rescale,
                       "extra": md.int("time_mix_extra_dim", 1, MAX_FF),
                       "decay_extra": md.int("time_decay_extra_dim", 1, MAX_FF)})  # fmt: skip
    gate = md.int("attention.gate_lora_rank", 0, MAX_FF, default=0)
    ranks = tuple(md.int(f"attention.{k}_lora_rank", 1, MAX_FF) for k in ("decay", "iclr", "value_residual_mix"))
    return Rwkv(**{**r.__dict__, "ranks": (*ranks, gate)})


def _build(model: GGUFModel, arch: str) -> ModelSpec:
    md = Metadata(model, arch)
    r = _read(md, arch, embedding_rows(md))
    n, c = r.n_embd, r.n_embd
    b = ModelBuilder(model)
    b.buffer("tokens", "T", dtype="i32")
    for name, width in (("x", n), ("hn", n), ("xp", n), ("h", n), ("rw_r", c), ("rw_k", r.kv * r.head),
                        ("rw_v", r.kv * r.head), ("rw_w", c), ("rw_o", c), ("rw_xr", c), ("rw_xw", c), ("rw_xk", c),
                        ("rw_xv", c), ("rw_xg", c)):  # fmt: skip
        b.buffer(name, "T", width)
    for name, width in (("xr", n), ("hr", n), ("logits", r.vocab)):
        b.buffer(name, "R", width)
    if r.qwen:
        b.buffer("gate", "T", r.n_ff)
        b.buffer("up", "T", r.n_ff)
    else:
        layernorm.declare(b, n)
        layernorm.declare(b, n, "R")
        b.buffer("rw_ck", "T", r.n_ff)
    embd = b.tensor("token_embd.weight", "token_embd", (r.vocab, n))
    b.op("embed", ("tokens",), ("x",), (embd,))
    if not r.qwen:  # RWKV's LN0
        layernorm.named_layer_norm(b, "x", "x", "token_embd_norm", n, r.eps, bias="required")
    time_mix = _time_mix7 if r.v7 else _time_mix6
    for i in range(n_layers := r.n_layers):
        p = f"blk.{i}."
        _norm(b, r, "x", "hn", p + "attn_norm")
        b.op("token_shift", ("hn",), ("xp",), state=b.state(i, (1, n)))
        time_mix(b, r, i)
        b.op("add", ("x", "h"), ("x",))
        if r.qwen:
            b.op("rmsnorm", ("x",), ("hn",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n,)),), eps=r.eps)
            glu_ffn(b, i, n, r.n_ff, src="hn", dst="h", bias=False, scale=False)
        else:
            _norm(b, r, "x", "hn", p + "attn_norm_2")
            b.op("token_shift", ("hn",), ("xp",), state=b.state(i, (1, n)))
            _channel_mix(b, r, i)
        b.op("add", ("x", "h"), ("x",))
        if r.rescale and (i + 1) % r.rescale == 0:
            b.op("scale", ("x",), ("x",), factor=0.5)
    if r.qwen:
        tied = output_head(b, Sizes(n, n_layers, 1, 1, 1, r.vocab), r.eps, bias=False,
                           norm_bias=arch == "rwkv6qwen2" and b.has("output_norm.bias"))  # fmt: skip
        if tied:
            raise CompileError(f"{md.path}: {arch} has no output.weight (llama.cpp requires it)")
    else:
        b.op("gather_rows", ("x",), ("xr",))
        layernorm.named_layer_norm(b, "xr", "hr", "output_norm", n, r.eps, bias="required", rows="R")
        linear(b, "hr", "logits", "output", (r.vocab, n), bias=False)
    extra = {"wkv_head_size": r.head, "token_shifts": 1 if r.qwen else 2, "attention_layers": 0}
    if r.v7:
        extra |= dict(zip(("decay_lora_rank", "iclr_lora_rank", "value_residual_mix_lora_rank", "gate_lora_rank"),
                          r.ranks))  # fmt: skip
    else:
        extra |= {"time_mix_extra_dim": r.extra, "time_decay_extra_dim": r.decay_extra, "wkv_kv_heads": r.kv,
                  "rescale_every_n_layers": r.rescale}  # fmt: skip
    hp = HParams(architecture=arch, name=md.text("general.name", default=model.path.stem),
                 context_length=md.int("context_length", 1, MAX_CONTEXT, default=MAX_CONTEXT), n_embd=n,
                 n_ff=r.n_ff, n_layers=n_layers, n_heads=0, n_kv_heads=0, head_dim=0, n_rot=0, rope_style="none",
                 rope_freq_base=0.0, rope_freq_scale=1.0, rope_scaling_type="none", rms_eps=r.eps,
                 vocab_size=r.vocab, tied_embeddings=False, qkv_bias=False, rope_freq_factors=False,
                 extra=extra)  # fmt: skip
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=NO_KV)


def _norm(b: ModelBuilder, r: Rwkv, src: str, dst: str, name: str) -> None:
    """A layer's norm: RMS (weight only) in the Qwen-based stacks, else a LayerNorm with its bias."""
    if r.qwen:
        b.op("rmsnorm", (src,), (dst,), (b.tensor(name + ".weight", name.rsplit(".", 1)[-1], (r.n_embd,)),), eps=r.eps)
    else:
        layernorm.named_layer_norm(b, src, dst, name, r.n_embd, r.eps, bias="required")


def _lerp_shape(b: ModelBuilder, name: str, n: int) -> tuple[int, ...]:
    """A lerp's shape in the file: [1, 1, n] as the converters write it, or [n] (llama.cpp's loader
    takes either: ggml's trailing unit dimensions)."""
    t = b.model.tensors.get(name)
    return (1, 1, n) if t is not None and tuple(t.shape) == (1, 1, n) else (n,)


def _vector(b: ModelBuilder, name: str, role: str, n: int) -> str:
    """A lerp [n] as one vector."""
    return b.flat(name, role, _lerp_shape(b, name, n))


def _matmul(b: ModelBuilder, src: str, dst: str, name: str, shape: tuple[int, int]) -> None:
    """dst = src @ name.weight^T (no scale: llama.cpp's RWKV graphs pass none; no bias)."""
    role = name.split(".", 2)[-1]
    b.op("matmul", (src,), (dst,), (b.tensor(name + ".weight", role, shape),))


def _group_norm(b: ModelBuilder, r: Rwkv, p: str, buf: str) -> None:
    """buf = LayerNorm of each head (eps 64e-5) x time_mix_ln + time_mix_ln.bias (llama.cpp's group norm)."""
    c = r.n_embd
    layernorm.declare_heads(b, buf, r.heads, r.head)
    layernorm.head_layer_norm(b, buf, r.heads, r.head, GROUP_NORM_EPS, b.tensor(p + "time_mix_ln.weight",
                                                                               "time_mix_ln", (c,)))  # fmt: skip
    b.op("add_bias", (buf,), (buf,), (b.tensor(p + "time_mix_ln.bias", "time_mix_ln_bias", (c,)),))


def _time_mix6(b: ModelBuilder, r: Rwkv, i: int) -> None:
    """h = RWKV-6's time mix of hn (its previous token's row in xp)."""
    p, c, d, dd, kv = f"blk.{i}.", r.n_embd, r.extra, r.decay_extra, r.kv * r.head
    b.buffer("rw_t5", "T", 5 * d)
    b.buffer("rw_m5", "T", 5 * c)
    b.buffer("rw_dh", "T", dd)
    b.op("lerp", ("hn", "xp"), ("rw_xr",), (_vector(b, p + "time_mix_lerp_x.weight", "time_mix_lerp_x", c),))
    _matmul(b, "rw_xr", "rw_t5", p + "time_mix_w1", (5 * d, c))
    b.op("softcap", ("rw_t5",), ("rw_t5",), cap=1.0)  # tanh
    w2 = b.tensor(p + "time_mix_w2.weight", "time_mix_w2", (5, c, d))
    b.op("head_matmul", ("rw_t5",), ("rw_m5",), (w2,), heads=5)
    if b.has(p + "time_mix_lerp_fused.weight"):
        for m in V6_MIXES:
            b.unused(p + f"time_mix_lerp_{m}.weight", "the fused lerps are used (llama.cpp prefers them too)")
        mu = b.flat(p + "time_mix_lerp_fused.weight", "time_mix_lerp_fused", (5, 1, 1, c))
    else:
        names = [p + f"time_mix_lerp_{m}.weight" for m in V6_MIXES]
        mu = b.vectors(p + "time_mix_lerp", "time_mix_lerp_fused", [(m, _lerp_shape(b, m, c)) for m in names])
    b.op("add_bias", ("rw_m5",), ("rw_m5",), (mu,))
    for part, m in enumerate(V6_MIXES):
        b.op("lerp_data", ("hn", "xp", "rw_m5"), (f"rw_x{m}",), part=part)
    _matmul(b, "rw_xw", "rw_dh", p + "time_mix_decay_w1", (dd, c))
    b.op("softcap", ("rw_dh",), ("rw_dh",), cap=1.0)
    _matmul(b, "rw_dh", "rw_w", p + "time_mix_decay_w2", (c, dd))
    for m, buf, rows in (("receptance", "rw_r", c), ("key", "rw_k", kv), ("value", "rw_v", kv)):
        _matmul(b, f"rw_x{m[0]}", buf, p + f"time_mix_{m}", (rows, c))
        if r.qwen and (bias := b.optional_tensor(p + f"time_mix_{m}.bias", f"time_mix_{m}_bias", (rows,))):
            b.op("add_bias", (buf,), (buf,), (bias,))
    b.buffer("rw_g", "T", c)
    _matmul(b, "rw_xg", "rw_g", p + "time_mix_gate", (c, c))
    decay = b.tensor(p + "time_mix_decay.weight", "time_mix_decay", (c,))
    gla = r.qwen and not b.has(p + "time_mix_first.weight")
    if r.qwen and not gla:
        raise CompileError(f"{b.path}: {p}time_mix_first in an rwkv6qwen2 file: llama.cpp's graph would then "
                           "group-norm by a time_mix_ln its loader does not read")  # fmt: skip
    attrs = {"state": b.state(i, (r.heads, r.head, r.head)), "n_heads": r.heads, "n_kv_heads": r.kv,
             "head_dim": r.head}  # fmt: skip
    if gla:
        scale = float(np.float32(np.power(np.float32(r.head), np.float32(-0.5))))
        b.op("wkv6", ("rw_r", "rw_k", "rw_v", "rw_w"), ("rw_o",), (decay,), mode="gla", scale=scale, **attrs)
    else:
        u = b.flat(p + "time_mix_first.weight", "time_mix_first", (r.heads, r.head))
        b.op("wkv6", ("rw_r", "rw_k", "rw_v", "rw_w"), ("rw_o",), (u, decay), **attrs)
        _group_norm(b, r, p, "rw_o")
    b.op("swiglu", ("rw_g", "rw_o"), ("rw_o",), activation="sigmoid" if gla else "silu")
    _matmul(b, "rw_o", "h", p + "time_mix_output", (c, c))


def _channel_mix(b: ModelBuilder, r: Rwkv, i: int) -> None:
    """h = the channel mix of hn (previous row in xp): RWKV-6's sigmoid(receptance) x value(relu(key)^2),
    RWKV-7's value(relu(key)^2)."""
    p, c = f"blk.{i}.", r.n_embd
    b.op("lerp", ("hn", "xp"), ("rw_xk",), (_vector(b, p + "channel_mix_lerp_k.weight", "channel_mix_lerp_k", c),))
    _matmul(b, "rw_xk", "rw_ck", p + "channel_mix_key", (r.n_ff, c))
    b.op("swiglu", ("rw_ck", "rw_ck"), ("rw_ck",), activation="relu")  # relu(k)^2 as relu(k) k
    _matmul(b, "rw_ck", "h", p + "channel_mix_value", (c, r.n_ff))
    if not r.v7:
        b.op("lerp", ("hn", "xp"), ("rw_xr",), (_vector(b, p + "channel_mix_lerp_r.weight", "channel_mix_lerp_r", c),))
        _matmul(b, "rw_xr", "rw_r", p + "channel_mix_receptance", (c, c))
        b.op("swiglu", ("rw_r", "h"), ("h",), activation="sigmoid")


def _time_mix7(b: ModelBuilder, r: Rwkv, i: int) -> None:
    """h = RWKV-7's time mix of hn (its previous token's row in xp); layer 0's v is v_first."""
    p, c = f"blk.{i}.", r.n_embd
    rw, ra, rv, rg = r.ranks
    g1, g2 = (b.has(p + f"time_mix_g{k}.weight") for k in (1, 2))
    ln = [b.has(p + f"time_mix_ln.{k}") for k in ("weight", "bias")]
    if g1 != g2 or ln[0] != ln[1] or (r.arch == "rwkv7" and not (g1 and ln[0])):
        raise CompileError(f"{b.path}: {p}time_mix_g1/g2 and time_mix_ln weight/bias must come in pairs"
                           + (" (rwkv7 requires both)" if r.arch == "rwkv7" else ""))  # fmt: skip
    gate = g1
    fused = b.model.tensors.get(p + "time_mix_lerp_fused.weight")
    mixes = fused.shape[0] if fused is not None and len(fused.shape) == 4 else 6
    if mixes not in ((6,) if gate or r.arch == "rwkv7" else (5, 6)):
        raise CompileError(f"{b.path}: {p}time_mix_lerp_fused has {mixes} mixes; "
                           f"{'6 with the gate' if gate else '5 or 6'} expected")  # fmt: skip
    mu = b.flat(p + "time_mix_lerp_fused.weight", "time_mix_lerp_fused", (mixes, 1, 1, c))
    for part, m in enumerate(V7_MIXES[:mixes]):
        if m != "g" or gate:
            b.op("lerp", ("hn", "xp"), (f"rw_x{m}",), (mu,), part=part)
    for name, width in (("rw_a", c), ("rw_xa", c), ("rw_lw", rw), ("rw_la", ra)):
        b.buffer(name, "T", width)
    _matmul(b, "rw_xr", "rw_r", p + "time_mix_receptance", (c, c))
    _matmul(b, "rw_xw", "rw_lw", p + "time_mix_w1", (rw, c))
    b.op("softcap", ("rw_lw",), ("rw_lw",), cap=1.0)  # tanh
    _matmul(b, "rw_lw", "rw_w", p + "time_mix_w2", (c, rw))
    _matmul(b, "rw_xk", "rw_k", p + "time_mix_key", (c, c))
    b.buffer("rw_vfirst", "T", c)
    if i == 0:
        why = "llama.cpp loads layer 0's value-residual LoRA and never applies it (layer 0's v is v_first)"
        for k in ("v0", "v1", "v2"):
            b.unused(p + f"time_mix_{k}.weight", why)
        _matmul(b, "rw_xv", "rw_vfirst", p + "time_mix_value", (c, c))
        v = "rw_vfirst"
    else:
        b.buffer("rw_lv", "T", rv)
        b.buffer("rw_vm", "T", c)
        _matmul(b, "rw_xv", "rw_v", p + "time_mix_value", (c, c))
        _matmul(b, "rw_xv", "rw_lv", p + "time_mix_v1", (rv, c))
        _matmul(b, "rw_lv", "rw_vm", p + "time_mix_v2", (c, rv))
        b.op("add_bias", ("rw_vm",), ("rw_vm",), (b.tensor(p + "time_mix_v0.weight", "time_mix_v0", (c,)),))
        b.op("sigmoid", ("rw_vm",), ("rw_vm",))
        b.op("lerp_data", ("rw_v", "rw_vfirst", "rw_vm"), ("rw_v",))
        v = "rw_v"
    if gate:
        b.buffer("rw_lg", "T", rg)
        b.buffer("rw_g", "T", c)
        _matmul(b, "rw_xg", "rw_lg", p + "time_mix_g1", (rg, c))
        b.op("sigmoid", ("rw_lg",), ("rw_lg",))
        _matmul(b, "rw_lg", "rw_g", p + "time_mix_g2", (c, rg))
    _matmul(b, "rw_xa", "rw_la", p + "time_mix_a1", (ra, c))
    _matmul(b, "rw_la", "rw_a", p + "time_mix_a2", (c, ra))
    vectors = tuple(b.tensor(p + f"time_mix_{k}.weight", f"time_mix_{k}", (c,)) for k in ("w0", "a0", "k_k", "k_a",
                                                                                       "r_k"))  # fmt: skip
    b.buffer("rw_bonus", "T", c)
    b.op("wkv7", ("rw_r", "rw_w", "rw_k", v, "rw_a"), ("rw_o", "rw_bonus"), vectors,
         state=b.state(i, (r.heads, r.head, r.head)), n_heads=r.heads, head_dim=r.head)  # fmt: skip
    if ln[0]:
        _group_norm(b, r, p, "rw_o")
    b.op("add", ("rw_o", "rw_bonus"), ("rw_o",))
    if gate:
        b.op("swiglu", ("rw_g", "rw_o"), ("rw_o",), activation="linear")
    _matmul(b, "rw_o", "h", p + "time_mix_output", (c, c))
