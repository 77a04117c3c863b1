"""`kimi-k3` (Moonshot Kimi-K3), as llama.cpp 0.3.36 builds it (src/models/kimi-k3.cpp): kimi-linear's
hybrid of KDA layers (`attention.head_count_kv` 0) and MLA layers, with:

- cross-layer residual attention (`attn_res.block_size` B > 0): before each sublayer, and before the
  output norm, its input is a softmax mix of the residuals banked so far and the current one
  (res_mix: scored by sum(rmsnorm(stream) * `*_res_score`)); every B-th layer, from layer 0, banks
  its raw residual input and restarts the residual from its attention output alone. The banks and
  the current residual live side by side in one stack [T, (banks + 1) n_embd] (put_cols copies a
  residual into its slot). B = 0: the plain residual.
- situ activation everywhere a SwiGLU would be: beta tanh(g / beta) sigmoid(g) * lb tanh(u / lb)
  (`activation.situ_beta`, `activation.situ_linear_beta`, lb <= 0: u as is).
- KDA layers: kimi-linear's, with the decay `kda.gate_lower_bound` x sigmoid(-(f_b(f_a h) + dt) x
  ssm_a) when the key is set (else kimi-linear's softplus), and one full-rank gate `ssm_g`.
- MLA layers: kimi-linear's, no RoPE, with the optional `attn_gate` (sigmoid per value of the heads'
  output, from the normed input) before `attn_output`; `attn_q_a_norm` decides the q_lora bottleneck
  per layer, as llama.cpp's loader (every MLA layer must agree here).
- latent MoE (`expert_latent_length` L > 0): the router reads the normed input, the routed experts run
  at L on `ffn_routed_down` h, their sum RMS-normed by the optional `ffn_routed_norm` and raised by
  `ffn_routed_up`; the optional shared experts (`expert_shared_count` x the experts' width) read h.
  Sigmoid or softmax gating (`expert_gating_func`, required), the selection bias `exp_probs_b`
  required, `expert_weights_norm` and `_scale` where set.

No weight `.scale` is applied by this graph (ggml_mul_mat throughout): each is known and unused.
"""

import math
from dataclasses import replace

from rfc.artifacts.limits import MAX_RES_STREAMS
from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import UNUSED_SCALE, Sizes, embedding_rows, hparams, linear, output_head, read_rope
from rfc.compiler.arch.deepseek2 import MAX_LORA_RANK, mla_widths
from rfc.compiler.arch.kimi_linear import kda_layer, latent_head, latent_layer, optional_lower_bound, read_hybrid
from rfc.compiler.arch.metadata import MAX_EMBD, MAX_FF, MAX_HEAD_DIM, MAX_LAYERS, Metadata
from rfc.compiler.arch.moe import Experts, read_experts_of, read_gating, read_weights_scale
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "kimi-k3"


def build(model: GGUFModel) -> ModelSpec:
    md = Metadata(model, ARCH)
    n_layers = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    hy = read_hybrid(md, n_layers)
    n_embd, nh, kda_layers, mla_layers = hy.n_embd, hy.n_heads, hy.kda_layers, hy.mla_layers
    s, kernel, kv_lora, key_mla, v_dim = hy.head_dim, hy.kernel, hy.kv_lora, hy.key_mla, hy.v_dim
    sizes = Sizes(n_embd, n_layers, nh, 1, 2, embedding_rows(md))  # the head size is set from n_rot below
    rope = read_rope(md, replace(sizes, head_dim=MAX_HEAD_DIM), "neox")  # its n_rot alone: no RoPE is applied
    rot = rope.n_rot
    nope, sizes = latent_head(md, sizes, kv_lora, key_mla, rot)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    lower_bound = optional_lower_bound(md)
    beta = md.float("activation.situ_beta", 1e-6, 1e6)
    linear_beta = md.float("activation.situ_linear_beta", -1e6, 1e6)
    situ = {"activation": "situ", "alpha": beta, "limit": linear_beta if linear_beta >= 1e-6 else 0.0}
    if 0.0 < linear_beta < 1e-6:
        key = md.key("activation.situ_linear_beta")
        raise CompileError(f"{md.path}: {key} {linear_beta} is too small to divide by")
    block = md.int("attn_res.block_size", 0, MAX_LAYERS)
    banks = list(range(0, n_layers, block)) if block else []
    if len(banks) + 1 > MAX_RES_STREAMS:
        raise CompileError(f"{md.path}: {md.key('attn_res.block_size')} {block} banks {len(banks)} residuals: over "
                           f"{MAX_RES_STREAMS - 1}")  # fmt: skip
    dense_lead = md.int("leading_dense_block_count", 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1, MAX_FF) if dense_lead else 0
    e, latent = None, 0
    if dense_lead < n_layers:
        count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
        shared = md.int("expert_shared_count", 0, 64)
        e = Experts(count, used, n_ff_exp, gating=read_gating(md, None, required=True),
                    norm=md.bool("expert_weights_norm", default=False), scale=read_weights_scale(md), groups=groups,
                    groups_used=groups_used, shared_ff=n_ff_exp * max(1, shared), shared=1,
                    dense_lead=dense_lead)  # fmt: skip
        latent = md.int("expert_latent_length", 0, MAX_EMBD, default=0)
    scale = float(1.0 / math.sqrt(key_mla))

    b = ModelBuilder(model)
    q_lora = _q_lora(md, b, mla_layers)
    gate = bool(mla_layers) and b.has(f"blk.{mla_layers[0]}.attn_gate.weight")
    for i in mla_layers:
        if b.has(f"blk.{i}.attn_gate.weight") != gate:
            raise CompileError(f"{b.path}: blk.{i}.attn_gate.weight: some MLA layers have an output gate and some not")
    d = nh * s
    b.buffer("tokens", "T", dtype="i32")
    widths = {"x": n_embd, "h": n_embd}
    if banks:
        widths["stack"] = (len(banks) + 1) * n_embd
    if mla_layers:
        widths |= mla_widths(nh, q_lora, kv_lora, nope, rot, v_dim, gate=nh * v_dim if gate else 0)
    if kda_layers:
        widths |= {"kq": d, "kk": d, "kv": d, "kqk": 2 * d, "mixed": 3 * d, "conv": 3 * d, "f_a": s, "alpha": d,
                   "beta": nh, "dn": d, "g": d}  # fmt: skip
    if n_ff:
        widths |= {"gate": n_ff, "up": n_ff}
    if e is not None:
        width = latent or n_embd
        widths |= {"router": e.count, "exp_gate": e.used * e.n_ff, "exp_up": e.used * e.n_ff,
                   "experts_out": e.used * width, "moe_out": n_embd}  # fmt: skip
        if latent:
            widths |= {"lat": latent, "lat_out": latent}
        if any(b.has(f"blk.{i}.ffn_gate_shexp.weight") for i in range(dense_lead, n_layers)):
            widths |= {"shexp_gate": e.shared_width, "shexp_up": e.shared_width}
    for name, width in widths.items():
        b.buffer(name, "T", width)
    if e is not None:
        b.buffer("expert_ids", "T", e.used, dtype="i32")
        b.buffer("expert_weights", "T", e.used)
    for name, width in (("xr", n_embd), ("hr", n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)

    mix = _Mixer(b, n_embd, eps, bool(banks))
    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n_embd)),))
    for i in range(n_layers):
        p = f"blk.{i}."
        mix.norm_input(p + "attn_res_score.weight", "attn_res_score", p + "attn_norm.weight", "attn_norm")
        banked = i in banks
        if banked:
            mix.bank()
        if i in kda_layers:
            kda_layer(b, i, n_embd, nh, s, kernel, eps, lower_bound=lower_bound, style="kimi-k3")
        else:
            latent_layer(b, i, ARCH, sizes, rope, eps, q_lora, kv_lora, nope, v_dim, scale, rotate=False,
                         layer=mla_layers.index(i), gate=gate, out_scale=False)  # fmt: skip
        if banked:  # the residual restarts from the attention output alone
            b.op("scale", ("h",), ("x",), factor=1.0)
        else:
            b.op("add", ("x", "h"), ("x",))
        mix.norm_input(p + "ffn_res_score.weight", "ffn_res_score", p + "ffn_norm.weight", "ffn_norm")
        if e is not None and e.is_moe(i):
            _latent_moe(b, i, n_embd, e, latent, eps, situ)
        else:
            linear(b, "h", "gate", p + "ffn_gate", (n_ff, n_embd), bias=False, scale=False)
            linear(b, "h", "up", p + "ffn_up", (n_ff, n_embd), bias=False, scale=False)
            b.op("swiglu", ("gate", "up"), ("gate",), **situ)
            linear(b, "gate", "h", p + "ffn_down", (n_embd, n_ff), bias=False, scale=False)
            b.op("add", ("x", "h"), ("x",))
    if banks:  # the final mix replaces the residual: nothing reads it after the output norm
        mix.mix("output_res_score.weight", "output_res_score", "x")
    output_head(b, sizes, eps, bias=False, scale=False)
    if not b.has("output.weight"):
        raise CompileError(f"{b.path}: missing tensor output.weight ({ARCH}'s loader requires it)")
    extra = {"kda_layers": kda_layers, "kda_head_dim": s, "ssm_conv_kernel": kernel, "kv_lora_rank": kv_lora,
             "key_length_mla": key_mla, "value_length_mla": v_dim, "attn_res_block_size": block,
             "situ_beta": beta, "situ_linear_beta": linear_beta}  # fmt: skip
    if e is not None:
        extra |= e.hparams() | ({"expert_latent_length": latent} if latent else {})
    hp = hparams(md, sizes, rope, n_ff or (e.n_ff if e else 0), eps, tied_embeddings=False, qkv_bias=False,
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    kv = KVSpec(n_layers=len(mla_layers), n_kv_heads=1, head_dim=sizes.head_dim, dtype="f16")  # the MLA layers' only
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


class _Mixer:
    """The residual stack of the cross-layer residual attention: slot j holds the j-th banked residual,
    the slot after the last bank the current residual while it is mixed."""

    def __init__(self, b: ModelBuilder, n_embd: int, eps: float, on: bool):
        self.b, self.n_embd, self.eps, self.on, self.banks = b, n_embd, eps, on, 0
        self.placed = False  # the current residual is in slot `banks` (the last mix put it there)

    def mix(self, score: str, role: str, dst: str) -> str:
        """dst = res_mix(the banks, x); returns dst, or x itself before the first bank (llama.cpp's
        res_mix returns its input unmixed then)."""
        if not self.banks:
            self.b.unused(score, "before the first bank llama.cpp's res_mix returns its input unscored")
            self.placed = False
            return "x"
        w = self.b.tensor(score, role, (self.n_embd,))
        self.b.op("put_cols", ("x",), ("stack",), offset=self.banks * self.n_embd)
        self.b.op("res_mix", ("stack",), (dst,), (w,), streams=self.banks + 1, eps=self.eps)
        self.placed = True
        return dst

    def norm_input(self, score: str, role: str, norm: str, norm_role: str) -> None:
        """h = rmsnorm(res_mix(...)) * norm: a sublayer's input."""
        src = self.mix(score, role, "h") if self.on else "x"
        self.b.op("rmsnorm", (src,), ("h",), (self.b.tensor(norm, norm_role, (self.n_embd,)),), eps=self.eps)

    def bank(self) -> None:
        """Banks the layer's raw residual input x (already in its slot when this layer's mix put it there)."""
        if not self.placed:
            self.b.op("put_cols", ("x",), ("stack",), offset=self.banks * self.n_embd)
        self.banks += 1
        self.placed = False


def _q_lora(md: Metadata, b: ModelBuilder, mla_layers: list[int]) -> int:
    """The q_lora bottleneck's rank where the MLA layers have `attn_q_a_norm` (llama.cpp's loader
    decides by it), else 0."""
    has = [b.has(f"blk.{i}.attn_q_a_norm.weight") for i in mla_layers]
    if len(set(has)) > 1:
        raise CompileError(f"{b.path}: some MLA layers have attn_q_a_norm and some not (a q_lora bottleneck in "
                           "some layers only)")  # fmt: skip
    if not has or not has[0]:
        md.ignored("attention.q_lora_rank", "without attn_q_a_norm the loader reads attn_q whatever the rank")
        return 0
    return md.int("attention.q_lora_rank", 1, MAX_LORA_RANK)


def _latent_moe(b: ModelBuilder, i: int, n: int, e: Experts, latent: int, eps: float, situ: dict) -> None:
    """x += routed_up(norm(routed experts(routed_down h))) + shared experts(h), the router reading h."""
    p = f"blk.{i}."
    for name in ("gate_exps", "up_exps", "down_exps", "gate_shexp", "up_shexp", "down_shexp"):
        b.unused(f"{p}ffn_{name}.scale", UNUSED_SCALE)
    b.op("matmul", ("h",), ("router",), (b.tensor(p + "ffn_gate_inp.weight", "ffn_gate_inp", (e.count, n)),))
    if not b.has(p + "exp_probs_b.bias"):
        raise CompileError(f"{b.path}: missing tensor {p}exp_probs_b.bias ({ARCH}'s loader requires it)")
    bias = b.tensor(p + "exp_probs_b.bias", "exp_probs_b", (e.count,))
    b.op("moe_route", ("router",), ("expert_ids", "expert_weights"), (bias,), **e.route_attrs())
    width, src = latent or n, "h"
    if latent:
        linear(b, "h", "lat", p + "ffn_routed_down", (latent, n), bias=False, scale=False)
        src = "lat"
    for part, buf in (("gate", "exp_gate"), ("up", "exp_up")):
        w = b.tensor(f"{p}ffn_{part}_exps.weight", f"ffn_{part}_exps", (e.count, e.n_ff, width))
        b.op("moe_matmul", (src, "expert_ids"), (buf,), (w,))
    b.op("swiglu", ("exp_gate", "exp_up"), ("exp_gate",), **situ)
    down = b.tensor(p + "ffn_down_exps.weight", "ffn_down_exps", (e.count, width, e.n_ff))
    b.op("moe_matmul", ("exp_gate", "expert_ids"), ("experts_out",), (down,))
    if latent:
        b.op("moe_combine", ("experts_out", "expert_weights"), ("lat_out",))
        norm = b.optional_tensor(p + "ffn_routed_norm.weight", "ffn_routed_norm", (latent,))
        if norm:
            b.op("rmsnorm", ("lat_out",), ("lat_out",), (norm,), eps=eps)
        linear(b, "lat_out", "moe_out", p + "ffn_routed_up", (n, latent), bias=False, scale=False)
    else:
        b.op("moe_combine", ("experts_out", "expert_weights"), ("moe_out",))
    b.op("add", ("x", "moe_out"), ("x",))
    if b.has(p + "ffn_gate_shexp.weight"):  # the loader's shared experts are optional
        width = e.shared_width
        linear(b, "h", "shexp_gate", p + "ffn_gate_shexp", (width, n), bias=False, scale=False)
        linear(b, "h", "shexp_up", p + "ffn_up_shexp", (width, n), bias=False, scale=False)
        b.op("swiglu", ("shexp_gate", "shexp_up"), ("shexp_gate",), **situ)
        linear(b, "shexp_gate", "h", p + "ffn_down_shexp", (n, width), bias=False, scale=False)
        b.op("add", ("x", "h"), ("x",))
