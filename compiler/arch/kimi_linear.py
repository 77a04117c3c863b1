"""`kimi-linear` (Moonshot Kimi-Linear-48B-A3B), as llama.cpp 0.3.36 builds it
(src/models/kimi-linear.cpp): a hybrid stack of Kimi Delta Attention (KDA) layers, the layers whose
`attention.head_count_kv` entry is 0, and multi-head latent attention layers.

- KDA layer (n = `attention.head_count` of layer 0 heads of S = `kda.head_dim`): Q, K and V by their
  weights alone (the loader's biases and scales of them are known and unused, as the graph's
  ggml_mul_mat leaves them), each through its own causal conv of `ssm.conv_kernel` taps + SiLU
  (`ssm_conv1d_q/k/v`, stacked into one ssm_conv over [q, k, v]: its state the three convs'
  (kernel - 1) inputs), the delta rule with a decay per head and key channel (gated_delta_net
  `decay` 'key': g = softplus(`ssm_f_b`(`ssm_f_a` h) + `ssm_dt.bias`) * `ssm_a` per head, beta =
  sigmoid(`ssm_beta` h), Q and K L2-normalized), its output RMS-normed per head (`ssm_norm`) times
  sigmoid(`ssm_g_b`(`ssm_g_a` h)), then `attn_output` (no scale).
- MLA layer: deepseek2's absorbed latent attention (`attn_q` or the q_lora bottleneck,
  `attn_kv_a_mqa`, `attn_k_b` / `attn_v_b`) WITHOUT RoPE (llama.cpp's rope type for this
  architecture is none: the rope key is used as computed), scores x 1/sqrt(key_length_mla),
  `attn_output` with its scale. A file with the combined `attn_kv_b` (llama.cpp's MHA fallback) is
  refused.
- FFN: `leading_dense_block_count` SwiGLU layers, then `expert_count` experts (`expert_gating_func`
  required, the selection bias `exp_probs_b` required, weights always renormalized, x
  `expert_weights_scale`) plus a shared expert of `expert_shared_count` x the experts' width; no FFN
  weight scales. `output.weight` required, no scale.

`bailingmoe3` (inclusionAI's Ling 3, llama.cpp's bailingmoe3.cpp): the same hybrid with its KDA
decay the "safe gate" `kda.gate_lower_bound` (< 0, required) x sigmoid((`ssm_f_a` h + `ssm_dt.bias`) x
`ssm_a`) and its output gate sigmoid(`ssm_g_a` h) (one matmul each); its MLA layers rotate the rope
parts (NeoX when `rope.dimension_sections` sets t and h, its M-RoPE on text, with the pairs of the 4th
section unturned: compiler/arch/mrope.py; else adjacent pairs), gate each head's output by
sigmoid(`attn_gate` h) [heads, n_embd] and multiply by `attn_output` without its scale; the experts'
weights renormalized by `expert_weights_norm`, a shared expert `expert_shared_feed_forward_length`
wide (default the experts' width x `expert_shared_count`), llama.cpp's clamps (`swiglu_clamp_exp` on
the experts, `swiglu_clamp_shexp` on the shared expert and the dense FFN: swiglu 'silu_cap');
`nextn_predict_layers` MTP blocks not run.

State per sequence and KDA layer: (kernel - 1) x 3 n S + n S^2 floats; the KV cache holds the MLA
layers only: their [latent, rope key] row as deepseek2's.
"""

import math
from dataclasses import dataclass, replace

from rfc.artifacts.plan import KVSpec
from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch import mrope
from rfc.compiler.arch.common import (
    UNUSED_SCALE, Sizes, embedding_rows, glu_ffn, hparams, output_head, read_rope, require_output,
)  # fmt: skip
from rfc.compiler.arch.deepseek2 import MAX_LORA_RANK, mla_attention, mla_widths
from rfc.artifacts.limits import MAX_CONV_KERNEL, MAX_DELTA_STATE
from rfc.compiler.arch.metadata import MAX_EMBD, MAX_FF, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, Metadata
from rfc.compiler.arch.moe import (
    Experts, clamped, declare_expert_buffers, moe_block, read_experts_of, read_gating, read_weights_scale,
)  # fmt: skip
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

UNUSED_QKV = "kimi-linear's KDA graph multiplies by Q, K and V alone (ggml_mul_mat): llama.cpp loads it and leaves it"


def build(model: GGUFModel) -> ModelSpec:
    return _build(model, "kimi-linear")


def build_bailingmoe3(model: GGUFModel) -> ModelSpec:
    return _build(model, "bailingmoe3")


@dataclass(frozen=True)
class Hybrid:
    """The sizes of a KDA + latent-attention stack, as the kimi-linear family's loaders read them."""

    n_embd: int
    n_layers: int
    n_heads: int  # llama.cpp's n_head(): layer 0's, for both kinds of layer
    kda_layers: list[int]  # the layers whose attention.head_count_kv entry is 0
    mla_layers: list[int]
    head_dim: int  # kda.head_dim
    kernel: int  # ssm.conv_kernel
    kv_lora: int
    key_mla: int
    v_dim: int


def read_hybrid(md: Metadata, n_layers: int, *, min_key: int = 2) -> Hybrid:
    """The hybrid's sizes for its first n_layers layers (`min_key`: the smallest key_length_mla, 1 for a
    nope-only stack)."""
    n_embd = md.int("embedding_length", 1, MAX_EMBD)
    heads = md.per_layer("attention.head_count", n_layers, 0, MAX_HEADS)
    kv_heads = md.per_layer("attention.head_count_kv", n_layers, 0, MAX_HEADS, default=list(heads))
    if not heads[0]:
        raise CompileError(f"{md.path}: layer 0 has no attention heads ({md.arch} sizes every layer by them)")
    return Hybrid(n_embd, n_layers, heads[0], [i for i in range(n_layers) if kv_heads[i] == 0],
                  [i for i in range(n_layers) if kv_heads[i] != 0], md.int("kda.head_dim", 1, MAX_DELTA_STATE),
                  md.int("ssm.conv_kernel", 2, MAX_CONV_KERNEL), md.int("attention.kv_lora_rank", 1, MAX_LORA_RANK),
                  md.int("attention.key_length_mla", min_key, MAX_HEAD_DIM),
                  md.int("attention.value_length_mla", 1, MAX_HEAD_DIM))  # fmt: skip


def latent_head(md: Metadata, sizes: Sizes, kv_lora: int, key_mla: int, rot: int) -> tuple[int, Sizes]:
    """(the nope part of key_length_mla, sizes with the cache row's head size kv_lora + rot): the
    attention's key and value lengths, where the file has them, must be the cached row's."""
    if rot >= key_mla:
        raise CompileError(f"{md.path}: rope.dimension_count {rot} leaves no nope part of key_length_mla {key_mla}")
    for key, want in (("attention.key_length", kv_lora + rot), ("attention.value_length", kv_lora)):
        got = md.int(key, 1, MAX_LORA_RANK + MAX_HEAD_DIM, default=want)
        if got != want:
            raise CompileError(f"{md.path}: {md.key(key)} {got} != {want}: an MLA file's attention sizes disagree")
    return key_mla - rot, replace(sizes, head_dim=kv_lora + rot)


def latent_layer(b: ModelBuilder, i: int, arch: str, *args, **kwargs) -> None:
    """deepseek2.mla_attention (its arguments after `arch`) for the family's latent-attention layer i: the
    combined `attn_kv_b` (llama.cpp's MHA fallback) refused, the query projections' `.scale` known and unused."""
    p = f"blk.{i}."
    if b.has(p + "attn_kv_b.weight"):
        raise CompileError(f"{b.path}: {p}attn_kv_b.weight: {arch}'s MHA fallback (no attn_k_b / attn_v_b) is not "
                           "supported")  # fmt: skip
    for name in ("attn_q", "attn_q_a", "attn_q_b"):
        b.unused(f"{p}{name}.scale", f"{arch}'s MLA multiplies by {name} without its scale (ggml_mul_mat)")
    mla_attention(b, i, *args, **kwargs)


def optional_lower_bound(md: Metadata) -> float | None:
    """`kda.gate_lower_bound` where the loader reads it optionally (kimi-k3, glm5-next): set (finite), the
    sigmoid decay; absent or -inf (llama.cpp's unset), None: the softplus decay."""
    raw = md.raw("kda.gate_lower_bound")
    if raw is None or (isinstance(raw, float) and raw == -math.inf):
        return None
    value = md.float("kda.gate_lower_bound", -1e6, 0.0)
    if value >= 0.0:
        raise CompileError(f"{md.path}: {md.key('kda.gate_lower_bound')} {value} is not below 0: a decay above 1 "
                           "(rfc's KDA takes lower bounds below 0)")  # fmt: skip
    return value


def _build(model: GGUFModel, arch: str) -> ModelSpec:
    md = Metadata(model, arch)
    ling = arch == "bailingmoe3"
    n_all = md.int("block_count", 1, min(MAX_LAYERS, max(1, len(model.tensors))))
    n_layers = n_all - (md.int("nextn_predict_layers", 0, n_all - 1, default=0) if ling else 0)
    hy = read_hybrid(md, n_layers)
    n_embd, nh, kda_layers, mla_layers = hy.n_embd, hy.n_heads, hy.kda_layers, hy.mla_layers
    s, kernel, kv_lora, key_mla, v_dim = hy.head_dim, hy.kernel, hy.kv_lora, hy.key_mla, hy.v_dim
    q_lora = md.int("attention.q_lora_rank", 0, MAX_LORA_RANK, default=0)
    sizes = Sizes(n_embd, n_layers, nh, 1, 2, embedding_rows(md))  # the head size is set from n_rot below
    sections = mrope.read(md, required=False) if ling else (0, 0, 0, 0)
    # kimi-linear: its n_rot alone (no RoPE is applied); bailingmoe3: NeoX pairs under M-RoPE, else adjacent
    rope = read_rope(
        md, replace(sizes, head_dim=MAX_HEAD_DIM), "neox" if mrope.used(sections) or not ling else "adjacent"
    )
    rot = rope.n_rot
    if mrope.used(sections):  # over the rope part of each head (ggml's ne0 there: rot)
        rope = mrope.text_rope(md, sections, rope, rot, interleaved=False)
    lower_bound = None
    if ling:
        if not md.bool("kda.safe_gate", default=True):
            raise CompileError(f"{md.path}: {md.key('kda.safe_gate')} false (llama.cpp asserts it)")
        lower_bound = md.float("kda.gate_lower_bound", -1e6, 0.0)
        if lower_bound >= 0.0:
            raise CompileError(f"{md.path}: {md.key('kda.gate_lower_bound')} must be below 0 (llama.cpp asserts it)")
    nope, sizes = latent_head(md, sizes, kv_lora, key_mla, rot)
    eps = md.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, open_lo=True)
    dense_lead = md.int("leading_dense_block_count", 0, n_layers, default=0)
    n_ff = md.int("feed_forward_length", 1, MAX_FF) if dense_lead else 0
    e = None
    if dense_lead < n_layers:
        count, used, n_ff_exp, groups, groups_used = read_experts_of(md, n_ff=None)
        shared = md.int("expert_shared_count", 0, 64)
        shared_ff = n_ff_exp * max(1, shared)
        if ling:
            shared_ff = md.int("expert_shared_feed_forward_length", 0, MAX_FF, default=0) or shared_ff
        norm = md.bool("expert_weights_norm", default=False) if ling else True
        e = Experts(count, used, n_ff_exp, gating=read_gating(md, None, required=True), norm=norm,
                    scale=read_weights_scale(md), groups=groups, groups_used=groups_used,
                    shared_ff=shared_ff, shared=1, dense_lead=dense_lead)  # fmt: skip
    if not ling:
        md.ignored("expert_weights_norm", "kimi-linear's graph always renormalizes the experts' weights")
    zero = [0.0] * n_all
    clamp_exp = md.per_layer_float("swiglu_clamp_exp", n_all, 0.0, 1e6, default=0.0) if ling else zero
    clamp_shexp = md.per_layer_float("swiglu_clamp_shexp", n_all, 0.0, 1e6, default=0.0) if ling else zero
    scale = float(1.0 / math.sqrt(key_mla))
    b = ModelBuilder(model)
    if ling:
        b.unused_layers(
            range(n_layers, 1 << 16), "a multi-token prediction (MTP) block: llama.cpp's forward pass skips it"
        )
    d = nh * s
    b.buffer("tokens", "T", dtype="i32")
    widths = {"x": n_embd, "h": n_embd}
    if mla_layers:
        widths |= mla_widths(nh, q_lora, kv_lora, nope, rot, v_dim, gate=nh if ling else 0)
    if kda_layers:
        widths |= {"kq": d, "kk": d, "kv": d, "kqk": 2 * d, "mixed": 3 * d, "conv": 3 * d, "f_a": s, "alpha": d,
                   "beta": nh, "dn": d, "g_a": s, "g": d}  # fmt: skip
    for name, width in widths.items():
        b.buffer(name, "T", width)
    if n_ff:
        b.buffer("gate", "T", n_ff)
        b.buffer("up", "T", n_ff)
    if e is not None:
        declare_expert_buffers(b, n_embd, e)
    for name, width in (("xr", n_embd), ("hr", n_embd), ("logits", sizes.vocab_size)):
        b.buffer(name, "R", width)

    b.op("embed", ("tokens",), ("x",), (b.tensor("token_embd.weight", "token_embd", (sizes.vocab_size, n_embd)),))
    for i in range(n_layers):
        p = f"blk.{i}."
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "attn_norm.weight", "attn_norm", (n_embd,)),), eps=eps)
        if i in kda_layers:
            kda_layer(b, i, n_embd, nh, s, kernel, eps, lower_bound=lower_bound)
        else:
            latent_layer(b, i, arch, sizes, rope, eps, q_lora, kv_lora, nope, v_dim, scale, rotate=ling,
                         layer=mla_layers.index(i), gate="head" if ling else False, out_scale=not ling)  # fmt: skip
        b.op("add", ("x", "h"), ("x",))
        b.op("rmsnorm", ("x",), ("h",), (b.tensor(p + "ffn_norm.weight", "ffn_norm", (n_embd,)),), eps=eps)
        shexp = clamped("silu_cap", clamp_shexp[i])
        if e is not None and e.is_moe(i):
            if not b.has(p + "exp_probs_b.bias"):
                raise CompileError(f"{b.path}: missing tensor {p}exp_probs_b.bias ({arch}'s loader requires it)")
            routed = clamped("silu_cap", clamp_exp[i])
            moe_block(b, i, sizes, e, shared_glu=shexp, **routed)
        else:
            glu_ffn(b, i, n_embd, n_ff, bias=False, scale=False, activation=shexp.get("activation", "silu"),
                    limit=shexp.get("limit"))  # fmt: skip
            b.op("add", ("x", "h"), ("x",))
    require_output(b, arch)
    output_head(b, sizes, eps, bias=False, scale=False)
    extra = {"kda_layers": kda_layers, "kda_head_dim": s, "ssm_conv_kernel": kernel, "kv_lora_rank": kv_lora,
             "key_length_mla": key_mla, "value_length_mla": v_dim}  # fmt: skip
    if e is not None:
        extra |= e.hparams()
    trunk = replace(sizes, n_layers=n_layers)
    hp = hparams(md, trunk, rope, n_ff or (e.n_ff if e else 0), eps, tied_embeddings=False, qkv_bias=False,
                 rope_freq_factors=False, extra=extra)  # fmt: skip
    kv = KVSpec(n_layers=len(mla_layers), n_kv_heads=1, head_dim=sizes.head_dim, dtype="f16")  # the MLA layers' only
    return b.finish(hp, input_tokens="tokens", output_logits="logits", output_hidden="hr", kv=kv)


def kda_layer(
    b: ModelBuilder,
    i: int,
    e: int,
    nh: int,
    s: int,
    kernel: int,
    eps: float,
    *,
    lower_bound: float | None = None,
    style: str | None = None,
    l2_eps: float | None = None,
) -> None:
    """h = attn_output(rmsnorm_heads(KDA(conv(q), conv(k), conv(v))) * sigmoid(ssm_g_b(ssm_g_a h))), in the
    `style` of one architecture's graph (default: bailingmoe3's with a lower_bound, else kimi-linear's):
    - kimi-linear: the decay softplus(ssm_f_b(ssm_f_a h) + ssm_dt.bias) * ssm_a, the gate through ssm_g_a, ssm_g_b;
    - bailingmoe3: the decay lower_bound * sigmoid((ssm_f_a h + ssm_dt.bias) * ssm_a) and the gate
      sigmoid(ssm_g_a h), each from one matmul;
    - kimi-k3 and glm5-next: the decay's input through ssm_f_a and ssm_f_b, with a lower_bound
      lower_bound * sigmoid(-(... + ssm_dt.bias) * ssm_a) (ssm_a negated at compile time: the same float32
      product, sign apart), without one kimi-linear's softplus; kimi-k3's gate sigmoid(ssm_g h), glm5-next's
      through ssm_g_a, ssm_g_b.
    Q and K are L2-normalized at `l2_eps` (default eps: glm5-next's 1e-6 is its own)."""
    style = style or ("bailingmoe3" if lower_bound is not None else "kimi-linear")
    p, d = f"blk.{i}.", nh * s
    for proj, buf in (("q", "kq"), ("k", "kk"), ("v", "kv")):
        b.op("matmul", ("h",), (buf,), (b.tensor(f"{p}attn_{proj}.weight", f"attn_{proj}", (d, e)),))
        b.unused(f"{p}attn_{proj}.bias", UNUSED_QKV)
        b.unused(f"{p}attn_{proj}.scale", UNUSED_QKV)
    b.op("concat_heads", ("kq", "kk"), ("kqk",), heads=1)
    b.op("concat_heads", ("kqk", "kv"), ("mixed",), heads=1)
    convs = [f"{p}ssm_conv1d_{x}.weight" for x in "qkv"]
    conv_w = b.stacked(p + "ssm_conv1d_qkv", "ssm_conv1d", [(n, _conv_shape(b, n, d, kernel)) for n in convs], kernel)
    b.op("ssm_conv", ("mixed",), ("conv",), (conv_w,), state=b.state(i, (kernel - 1, 3 * d)))
    if style != "bailingmoe3":
        b.op("matmul", ("h",), ("f_a",), (b.tensor(p + "ssm_f_a.weight", "ssm_f_a", (s, e)),))
        b.op("matmul", ("f_a",), ("alpha",), (b.tensor(p + "ssm_f_b.weight", "ssm_f_b", (d, s)),))
    else:
        b.op("matmul", ("h",), ("alpha",), (b.tensor(p + "ssm_f_a.weight", "ssm_f_a", (d, e)),))
    b.op("matmul", ("h",), ("beta",), (b.tensor_as(p + "ssm_beta.weight", "ssm_beta", (nh, e)),))
    b.unused(p + "ssm_beta.scale", UNUSED_SCALE)
    a_name = p + "ssm_a"
    a_shape = (nh, 1) if a_name in b.model.tensors and len(b.model.tensors[a_name].shape) == 2 else (nh,)
    negate = style in ("kimi-k3", "glm5-next") and lower_bound is not None
    a = b.negated(a_name + ":negated", "ssm_a", a_name, a_shape) if negate else b.flat(a_name, "ssm_a", a_shape)
    gates = (a, b.tensor(p + "ssm_dt.bias", "ssm_dt", (d,)))
    decay = {"decay": "key"} if lower_bound is None else {"decay": "key_sigmoid", "lower_bound": lower_bound}
    b.op("gated_delta_net", ("conv", "alpha", "beta"), ("dn",), gates, state=b.state(i, (nh, s, s)), n_k_heads=nh,
         n_v_heads=nh, head_dim=s, eps=eps if l2_eps is None else l2_eps, **decay)  # fmt: skip
    b.op("rmsnorm", ("dn",), ("dn",), (b.tensor(p + "ssm_norm.weight", "ssm_norm", (s,)),), eps=eps, heads=nh)
    if style == "kimi-k3":
        b.op("matmul", ("h",), ("g",), (b.tensor(p + "ssm_g.weight", "ssm_g", (d, e)),))
    elif style != "bailingmoe3":
        b.op("matmul", ("h",), ("g_a",), (b.tensor(p + "ssm_g_a.weight", "ssm_g_a", (s, e)),))
        b.op("matmul", ("g_a",), ("g",), (b.tensor(p + "ssm_g_b.weight", "ssm_g_b", (d, s)),))
    else:
        b.op("matmul", ("h",), ("g",), (b.tensor(p + "ssm_g_a.weight", "ssm_g_a", (d, e)),))
    b.op("swiglu", ("g", "dn"), ("dn",), activation="sigmoid")
    b.unused(p + "attn_output.scale", "the KDA layer multiplies by attn_output without its scale")
    b.op("matmul", ("dn",), ("h",), (b.tensor(p + "attn_output.weight", "attn_output", (e, d)),))


def _conv_shape(b: ModelBuilder, name: str, d: int, kernel: int) -> tuple[int, ...]:
    """A KDA conv kernel's shape in the file: [d, 1, kernel] or [d, kernel] (the loader takes either)."""
    t = b.model.tensors.get(name)
    return (d, 1, kernel) if t is not None and len(t.shape) == 3 else (d, kernel)
