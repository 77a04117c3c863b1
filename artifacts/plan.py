"""The execution plan: an ordered list of ops over named activation buffers and weights.

The compiler lowers a model architecture to a plan; the runtime executes it without knowing
which architecture it came from. Buffer shapes are symbolic in the batch sizes:

- ``T``: tokens fed this step (all sequences' new tokens, concatenated),
- ``R``: rows whose logits are wanted (by default the last fed token of each sequence).

Per-step batch inputs the runtime supplies (not buffers of the plan): ``tokens`` and
``positions`` (int32[T]), the sequence of each token, each sequence's KV block table, and
``logit_rows`` (int32[R], indices into T), and each sequence's recurrent-state slot
(``state_slots``, int32[S]) for plans that declare state.

Recurrent state (hybrid models: LFM2's short convolutions, Gated DeltaNet, Mamba) is a
fixed-size float32 record per sequence beside the paged KV cache. The plan declares it in
``Plan.state`` (a StateSpec: one StateTensor per layer and kind, with its per-sequence
shape, e.g. a conv window [kernel - 1, channels] or a recurrent matrix [heads, dk, dv]); a
runtime keeps a pool of slots, each holding every tensor of the spec for one sequence, and
the step batch names each sequence's slot. An op that reads and writes state takes the
index of its StateTensor as the attribute ``state``; it reads the slot as the sequence's
state before the chunk's first token and leaves it as the state after the chunk's last. A
chunk that starts at position 0 starts from zeros (the op ignores what the slot held), so
a fresh or recomputed sequence never sees a previous owner's state.

OpKind names every op kind and OPS is the contract: each kind's arity and attributes.
A plan using an op or omitting an attribute not listed here is refused; the shape rules in
rfc.artifacts.validate check every op against the buffers and the weight layout before any
kernel runs.
"""

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import msgpack

from rfc.artifacts.errors import BundleError

PLAN_FILE = "plan.msgpack"

# A plan this large is hostile or broken; refusing it early keeps validation cheap.
MAX_OPS = 1 << 20
MAX_BUFFERS = 4096
SYMBOLS = ("T", "R")
DTYPES = ("f32", "i32")
GLU_ACTIVATIONS = ("silu", "gelu_tanh", "swiglu_oai", "sigmoid", "relu")  # swiglu's `activation`
ROPE_STYLES = ("adjacent", "neox")
MOE_GATINGS = ("softmax", "sigmoid", "softmax_weight")  # moe_route's `gating`
MAX_STATE_TENSORS = 4096  # state tensors of one plan (a few per layer)
MAX_STATE_DIMS = 3
MAX_STATE_ELEMENTS = 1 << 28  # float32 elements of one sequence's whole state (1 GiB)


class OpKind(str, Enum):
    """Every op kind a plan may hold. A str (an Op's kind compares equal to its name, and a
    table keyed by kind finds it by name), so plans serialize as plain names."""

    EMBED = "embed"
    RMSNORM = "rmsnorm"
    MATMUL = "matmul"
    ADD_BIAS = "add_bias"
    ROPE = "rope"
    KV_WRITE = "kv_write"
    ATTENTION = "attention"
    SWIGLU = "swiglu"
    ADD = "add"
    GATHER_ROWS = "gather_rows"
    SOFTCAP = "softcap"
    SCALE = "scale"
    XIELU = "xielu"
    MOE_ROUTE = "moe_route"
    MOE_MATMUL = "moe_matmul"
    MOE_COMBINE = "moe_combine"
    MOE_ADD_BIAS = "moe_add_bias"
    MOE_SCALE = "moe_scale"
    SLOT_SCALE = "slot_scale"
    HEAD_MATMUL = "head_matmul"
    CONCAT_HEADS = "concat_heads"
    SHORT_CONV = "short_conv"
    SSM_CONV = "ssm_conv"
    GATED_DELTA_NET = "gated_delta_net"
    SSM_SCAN = "ssm_scan"
    ALTUP_STACK = "altup_stack"
    ALTUP_PREDICT = "altup_predict"
    ALTUP_CORRECT = "altup_correct"
    ALTUP_ADD = "altup_add"
    ALTUP_MERGE = "altup_merge"
    GAUSSIAN_TOPK = "gaussian_topk"

    __str__ = str.__str__  # the name itself, not OpKind.X


@dataclass(frozen=True)
class OpSchema:
    inputs: int
    outputs: int
    weights: tuple[int, int]  # (at least, at most)
    attrs: tuple[str, ...] = ()  # required
    optional: tuple[tuple[str, Any], ...] = ()  # (name, default)
    doc: str = ""


OPS: dict[OpKind, OpSchema] = {
    OpKind.EMBED: OpSchema(
        1,
        1,
        (1, 1),
        optional=(("scale", 1.0), ("column", 0)),
        doc="x[T, n_embd] = dequant(weight)[tokens] * scale (gemma: scale = sqrt(n_embd) as a float32); with a "
        "column, out[T, W] = dequant(weight)[tokens, column : column + W] * scale, a slice of a wider table's rows "
        "(Gemma 4's per-layer embeddings: layer i's W values at column i * W), column a whole number of the "
        "format's blocks",
    ),
    OpKind.RMSNORM: OpSchema(
        1,
        1,
        (0, 1),
        ("eps",),
        optional=(("heads", 1),),
        doc="each row is `heads` equal segments s (1: the whole row; n_heads: per-head Q/K norms), each "
        "normalized on its own: out = s / sqrt(mean(s^2) + eps) * weight, weight [width / heads] (or [width] with "
        "heads > 1: a weight per segment, Mamba2's grouped norm); without a "
        "weight out = s / sqrt(mean(s^2) + eps) (gemma4's V norm)",
    ),
    OpKind.MATMUL: OpSchema(1, 1, (1, 1), doc="out[M, N] = x[M, K] @ weight[N, K]^T, weight in its stored format"),
    OpKind.ADD_BIAS: OpSchema(1, 1, (1, 1), doc="x[M, N] += bias[N]"),
    OpKind.ROPE: OpSchema(
        2,
        2,
        (0, 1),
        ("n_heads", "n_kv_heads", "head_dim", "n_rot", "style", "freq_base", "freq_scale"),
        optional=(
            ("attn_factor", 1.0),
            ("ext_factor", 0.0),
            ("beta_fast", 32.0),
            ("beta_slow", 1.0),
            ("orig_ctx", 0),
            ("temp_scale", 0.0),
            ("temp_floor", 0),
        ),
        doc="rotary embedding of q and k in place; style 'adjacent' (pairs 2i, 2i+1: llama) or 'neox' "
        "(pairs i, i + n_rot/2); freq_i = rope_inv_freq(...)_i / factor_i (factors: the optional weight): "
        "freq_scale * base^(-2i/n_rot), or with ext_factor > 0 (YaRN) base^(-2i/n_rot) mixed between scaled and "
        "unscaled by a ramp over the pairs (beta_fast, beta_slow, orig_ctx: see rope_inv_freq); "
        "the rotated pair is (a cos - b sin, a sin + b cos) * attn_factor (the magnitude: LongRoPE's and YaRN's "
        "correction, as the compiler computed it); with temp_scale != 0 (llama 4 style attention temperature "
        "tuning: mistral3) the rotated q row is then multiplied by float32(1 + temp_scale * ln(floor(pos / temp_floor) "
        "+ 1)), computed in double (q only; needs n_rot == head_dim)",
    ),
    OpKind.KV_WRITE: OpSchema(
        2, 0, (0, 0), ("layer",), doc="store k, v rows [T, n_kv_heads*head_dim] in the layer's paged cache"
    ),
    OpKind.ATTENTION: OpSchema(
        1,
        1,
        (0, 1),
        ("layer", "n_heads", "n_kv_heads", "head_dim", "scale"),
        optional=(("window", None), ("softcap", None)),
        doc="causal attention of q over the paged cache of layer `layer` (positions <= the token's own): its own, or "
        "an earlier layer's that it shares (Gemma 4 E2B/E4B: no kv_write of its own; the validator requires that "
        "layer's kv_write before it, the same KV heads x head_dim and the same window); query head h "
        "reads kv head h // (n_heads / n_kv_heads); score = scale * q.k, then softcap * tanh(score / softcap) "
        "with a softcap; with a window only keys at positions > pos - window take part (sliding window). "
        "The optional weight is a sink logit per query head [n_heads] (gpt-oss): one more score in the softmax "
        "with no value, p_j = exp(s_j) / (sum_i exp(s_i) + exp(sink_h))",
    ),
    OpKind.SWIGLU: OpSchema(
        2,
        1,
        (0, 0),
        optional=(("activation", "silu"), ("alpha", 1.702), ("limit", 7.0)),
        doc="gated linear unit: out = act(gate) * up, act 'silu' (SwiGLU: g / (1 + exp(-g))) or 'gelu_tanh' "
        "(GeGLU: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))); 'swiglu_oai' (gpt-oss, llama.cpp's "
        "swiglu_oai) clamps and shifts: g' = min(g, limit), u' = clamp(u, -limit, limit), "
        "out = g' / (1 + exp(-alpha g')) * (u' + 1) (alpha and limit are read by it alone); 'sigmoid' "
        "(qwen35's attention output gate): out = u / (1 + exp(-g)), its gate possibly one column [T, 1] that "
        "gates every value of the row (qwen35moe's shared-expert gate); 'relu': out = max(g, 0) * u (with u = g: "
        "nemotron_h's squared ReLU)",
    ),
    OpKind.ADD: OpSchema(2, 1, (0, 0), doc="out = a + b"),
    OpKind.GATHER_ROWS: OpSchema(1, 1, (0, 0), doc="out[R, D] = x[logit_rows]"),
    OpKind.SOFTCAP: OpSchema(
        1, 1, (0, 0), ("cap",), doc="out = cap * tanh(x / cap) (gemma's final-logit soft-capping)"
    ),
    OpKind.SCALE: OpSchema(
        1, 1, (0, 0), ("factor",), doc="out = x * factor, factor a float32 (granite's residual and logit multipliers)"
    ),
    OpKind.XIELU: OpSchema(
        1,
        1,
        (0, 0),
        ("alpha_n", "alpha_p", "beta", "eps"),
        doc="xIELU (apertus's FFN activation), as ggml_xielu computes it: out = alpha_p x^2 + beta x for x > 0, "
        "else (expm1(min(x, eps)) - x) alpha_n + beta x; the attributes are float32 and already the effective "
        "ones (alpha_p = softplus(stored alpha_p), alpha_n = beta + softplus(stored alpha_n), as ggml_xielu sets them)",
    ),
    OpKind.MOE_ROUTE: OpSchema(
        1,
        2,
        (0, 2),
        ("n_used",),
        optional=(
            ("gating", "softmax"),
            ("norm", True),
            ("scale", 1.0),
            ("groups", 1),
            ("groups_used", 1),
            ("expert_scale", False),
        ),
        doc="router of a mixture of experts: logits[T, n_expert] -> ids i32[T, n_used], weights[T, n_used] "
        "(llama.cpp's build_moe_ffn). Scores p = softmax(logits) (gating 'softmax'), sigmoid(logits) ('sigmoid') "
        "or the logits ('softmax_weight'); the experts are chosen by s = p + bias (the optional weight [n_expert]: "
        "it chooses, it does not weigh). With groups > 1 the experts form `groups` consecutive equal groups, each "
        "scored by the sum of its two largest s, and only the `groups_used` best groups' experts take part (equal "
        "scores: the lower group). ids = the n_used largest s, largest first (equal: lower index first); "
        "weights = p[ids] ('softmax_weight': softmax over the chosen logits), with norm divided by "
        "max(sum, 2^-14), then times scale; with expert_scale, each times its expert's factor: the last weight "
        "[n_expert] (gemma4's ffn_down_exps.scale, which llama.cpp applies to the expert's output)",
    ),
    OpKind.MOE_MATMUL: OpSchema(
        2,
        1,
        (1, 1),
        doc="expert matmul: x[T, K] (every slot reads its token's row) or x[T, n_used*K] (slot j reads "
        "segment j), ids i32[T, n_used] -> out[T, n_used*N], segment j = x @ weight[ids[t, j]]^T; "
        "weight [n_expert, N, K] in its stored format. Kernels group the slots by expert",
    ),
    OpKind.MOE_COMBINE: OpSchema(
        2,
        1,
        (0, 0),
        doc="y[T, n_used*N], weights[T, n_used] -> out[T, N] = sum_j weights[t, j] * y[t, segment j]",
    ),
    OpKind.MOE_ADD_BIAS: OpSchema(
        2,
        1,
        (1, 1),
        doc="per-expert bias (llama.cpp's ggml_add_id; gpt-oss): y[T, n_used*N], ids i32[T, n_used] -> "
        "out = y with segment j += bias[ids[t, j]], bias [n_expert, N]",
    ),
    OpKind.MOE_SCALE: OpSchema(
        2,
        1,
        (1, 1),
        doc="per-expert output scale (llama.cpp's build_lora_mm_id with a weight scale: ffn_gate_exps.scale, "
        "ffn_up_exps.scale): y[T, n_used*N], ids i32[T, n_used] -> out = y with segment j times scale[ids[t, j]], "
        "scale [n_expert]",
    ),
    OpKind.SLOT_SCALE: OpSchema(
        2,
        1,
        (0, 0),
        doc="per-slot weight of a mixture of experts (llama4's weighted expert input with more than one expert "
        "per token): y[T, n_used*N], weights[T, n_used] -> out = y with segment j times weights[t, j]",
    ),
    OpKind.SHORT_CONV: OpSchema(
        1,
        1,
        (1, 1),
        ("state",),
        doc="LFM2's gated short convolution over a sequence's recurrent state: bcx[T, 3C] (in_proj's output: "
        "b, c, x, C channels each) -> out[T, C]. u = b * x; per sequence, the window is the state (the last "
        "L-1 u rows before the chunk, [L-1, C]; zeros at position 0) followed by the chunk's u rows; "
        "out[t, ch] = c[t, ch] * sum_k weight[ch, k] * window[t + k, ch] for k < L (weight [C, L], the "
        "depthwise kernel; llama.cpp's ggml_ssm_conv). The state afterwards: the window's last L-1 rows. "
        "`state` is the index of its StateTensor ([L-1, C]) in the plan's StateSpec",
    ),
    OpKind.HEAD_MATMUL: OpSchema(
        1,
        1,
        (1, 1),
        ("heads",),
        optional=(("stride", 0),),
        doc="a matmul per head (deepseek2's attn_k_b and attn_v_b): x[T, heads * stride] (stride 0: K), head h "
        "reading the K columns from h * stride, weight [heads, N, K] in its stored format -> out[T, heads * N], "
        "segment h = x_h @ weight[h]^T",
    ),
    OpKind.CONCAT_HEADS: OpSchema(
        2,
        1,
        (0, 0),
        ("heads",),
        doc="a[T, heads * A], b[T, heads * B] -> out[T, heads * (A + B)], head h = [a_h, b_h] (deepseek2's query "
        "and key: the latent part, then the rope part)",
    ),
    # Gated DeltaNet layers (qwen35, qwen35moe, qwen3next): state as the module docstring says.
    OpKind.SSM_CONV: OpSchema(
        1,
        1,
        (1, 2),
        ("state",),
        doc="causal depthwise conv with SiLU (llama.cpp's ggml_ssm_conv then ggml_silu): x[T, C], weight [C, K] -> "
        "out[t, c] = silu(sum_k weight[c, k] * window[t + k, c] + bias[c]), window = the sequence's state (its K-1 "
        "inputs before the chunk, [K-1, C]) followed by the chunk's rows of x; the state afterwards: the window's "
        "last K-1 rows. The optional second weight is the bias [C] (Mamba2's conv1d bias; none: 0). `state` is "
        "the index of its StateTensor ([K-1, C])",
    ),
    OpKind.GATED_DELTA_NET: OpSchema(
        3,
        1,
        (2, 2),
        ("state", "n_k_heads", "n_v_heads", "head_dim", "eps"),
        doc="Gated DeltaNet recurrence (llama.cpp's ggml_gated_delta_net with qwen35's gating): inputs "
        "qkv[T, (2 Hk + Hv) S] (q heads, then k heads, then v heads, S = head_dim), alpha[T, Hv], beta[T, Hv]; "
        "weights a[Hv] (ssm_a = -exp(A_log)) and dt_bias[Hv] -> out[T, Hv S]. Per token and v head h (k head "
        "h % Hk): q, k scaled to unit length (x / sqrt(sum x^2 + eps)), g = softplus(alpha + dt_bias) * a, "
        "b = sigmoid(beta); with the head's state M (S x S: M[j][i], v index j, k index i) M *= exp(g); "
        "d_j = b (v_j - sum_i M[j][i] k_i); M[j][i] += d_j k_i; out_j = sum_i M[j][i] q_i / sqrt(S). "
        "`state` is the index of its StateTensor ([Hv, S, S])",
    ),
    # Mamba2 layers (granitehybrid, nemotron_h): the selective scan after ssm_conv (with its bias)
    OpKind.SSM_SCAN: OpSchema(
        2,
        1,
        (3, 3),
        ("state", "n_heads", "head_dim", "n_groups", "state_size"),
        doc="Mamba2 selective scan (llama.cpp's ggml_ssm_scan with a scalar A per head, then y + x D): inputs "
        "xbc[T, H P + 2 G N] (x: H heads of P = head_dim, then B: G groups of N = state_size, then C: G groups "
        "of N), dt[T, H]; weights a[H] (ssm_a = -exp(A_log)), d[H] (ssm_d), dt_bias[H] -> out[T, H P]. Per token "
        "and head h (group g = h / (H / G)): dt' = softplus(dt + dt_bias) (linear above 20), with the head's "
        "state M [P, N] M = M exp(dt' a) + dt' x_h B_g^T, out_h = M C_g + d x_h. `state` is the index of its "
        "StateTensor ([H, P, N])",
    ),
    # gemma3n's AltUp: n = n_altup streams of the hidden state side by side in one row, hs[T, n E]
    # (stream i at columns i E .. (i + 1) E); |v| is a row's Euclidean norm sqrt(sum v^2)
    OpKind.ALTUP_STACK: OpSchema(
        2,
        1,
        (0, 0),
        ("n_altup",),
        doc="x[T, E], y[T, (n-1) E] (altup_proj of x per stream) -> hs[T, n E]: stream 0 = x, stream i = "
        "y_{i-1} * |x| / |y_{i-1}| (magnitude matching: llama.cpp's y * target / new)",
    ),
    OpKind.ALTUP_PREDICT: OpSchema(
        2,
        2,
        (0, 0),
        ("n_altup", "active"),
        doc="hs[T, n E], coefs[T, n n] (the router's altup_predict_coef output) -> pred[T, n E], act[T, E]: "
        "pred_i = hs_i + sum_k coefs[i n + k] hs_k, act = pred_active",
    ),
    OpKind.ALTUP_CORRECT: OpSchema(
        3,
        2,
        (1, 1),
        ("n_altup", "active"),
        doc="pred[T, n E], x[T, E] (the layer's output), coefs[T, n] (altup_correct_coef's output); weight "
        "scale [E] (altup_correct_scale) -> out[T, n E], gate[T, E]: out_i = (x - pred_active) (coefs_i + 1) "
        "+ pred_i, gate = out_active * scale (the per-layer input gate's input)",
    ),
    OpKind.ALTUP_ADD: OpSchema(
        2,
        2,
        (0, 0),
        ("n_altup", "first"),
        doc="hs[T, n E], x[T, E] -> out[T, n E], sub[T, m E]: out = hs with x added to streams 1 .. n-1 "
        "(llama.cpp's corrected[1:] += first_prediction), sub = out's streams first .. first + m - 1 (the "
        "next layer's router input, the active stream; before altup_merge, streams 1 .. n-1 for "
        "altup_unembd_proj)",
    ),
    OpKind.ALTUP_MERGE: OpSchema(
        2,
        1,
        (0, 0),
        ("n_altup", "active"),
        doc="hs[T, n E], u[T, (n-1) E] (altup_unembd_proj of streams 1 .. n-1) -> out[T, E] = (hs_0 + "
        "sum_i u_i * |hs_active| / |u_i|, added in order i = 0 ..) * float32(1 / n): the streams' mean",
    ),
    OpKind.GAUSSIAN_TOPK: OpSchema(
        1,
        1,
        (0, 0),
        ("std_mul",),
        doc="gemma3n's activation sparsity: out = max(x - (mean + std_mul * std), 0) per row, mean and the "
        "unbiased std (sum (x - mean)^2 / (N - 1)) over the row's N values",
    ),
}
assert set(OPS) == set(OpKind), "every op kind has a schema"


def rope_inv_freq(
    n_rot: int,
    freq_base: float,
    freq_scale: float,
    ext_factor: float = 0.0,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    orig_ctx: int = 0,
) -> list[float]:
    """The rope op's frequencies before its factors, in float64, for the n_rot / 2 pairs (what
    the compiled tables and the kernels that take a table hold): freq_scale * base^(-2i/n_rot).

    With ext_factor > 0, YaRN as ggml computes it (ggml_rope_yarn_corr_dims, rope_yarn): pair i's
    angle mixes the interpolated one (freq_scale times) and the original by m_i = ext_factor *
    ramp_i, so its frequency is base^(-2i/n_rot) * (freq_scale * (1 - m_i) + m_i). The ramp is 1
    for the pairs below `low`, 0 above `high`, linear between: low = max(0, floor(c(beta_fast))),
    high = min(n_rot - 1, ceil(c(beta_slow))), c(beta) = n_rot ln(orig_ctx / (2 pi beta)) / (2 ln base),
    the pair that turns beta times over the original context. (ggml's magnitude term,
    1 + 0.1 ln(1 / freq_scale), is in the op's attn_factor.)"""
    theta = [float(freq_base) ** (-2.0 * i / n_rot) for i in range(n_rot // 2)]
    if not ext_factor:
        return [float(freq_scale) * t for t in theta]

    def corr_dim(beta: float) -> float:
        return n_rot * math.log(orig_ctx / (beta * 2.0 * math.pi)) / (2.0 * math.log(freq_base))

    low = max(0.0, math.floor(corr_dim(beta_fast)))
    high = min(n_rot - 1.0, math.ceil(corr_dim(beta_slow)))
    out = []
    for i, t in enumerate(theta):
        ramp = 1.0 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))
        mix = ramp * ext_factor
        out.append(t * (freq_scale * (1.0 - mix) + mix))
    return out


def rope_freqs(attrs: dict) -> list[float]:
    """rope_inv_freq of a rope op's attributes (the optional ones at their defaults)."""
    a = {**dict(OPS[OpKind.ROPE].optional), **attrs}
    return rope_inv_freq(a["n_rot"], a["freq_base"], a["freq_scale"], a["ext_factor"], a["beta_fast"], a["beta_slow"],
                         a["orig_ctx"])  # fmt: skip


# Kept for readers of the old name: op kind -> required attributes.
OP_ATTRS: dict[str, tuple[str, ...]] = {kind: s.attrs for kind, s in OPS.items()}


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[str | int, ...]
    dtype: str = "f32"


@dataclass(frozen=True)
class Op:
    kind: OpKind  # given by name, it is looked up (ValueError for a kind OpKind lacks)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OpKind(self.kind))

    def attr(self, name: str) -> Any:
        """A required or optional attribute, with the schema's default for a missing optional one."""
        if name in self.attrs:
            return self.attrs[name]
        return dict(OPS[self.kind].optional)[name]


@dataclass(frozen=True)
class KVSpec:
    """One cached token's row per layer, for K and for V: n_kv_heads x head_dim values, the
    WIDEST layer's (Gemma 4 31B: sliding layers 16 x 256, global ones 4 x 512 in rows of 4096).
    Devices address rows by this stride; each kv_write / attention op reads and writes only its
    own layer's values, the first (its n_kv_heads x head_dim) of the row (kv_geometries)."""

    n_layers: int  # the layers that store KV: fewer than the model's where layers share caches (Gemma 4 E2B/E4B)
    n_kv_heads: int
    head_dim: int
    # Storage format of cached keys and values: "f16" (what llama.cpp uses; greedy decoding
    # can hinge on the rounding, so matching it matters) or "f32".
    dtype: str = "f16"

    @property
    def row(self) -> int:
        """Values of one token's K (or V) row in one layer: the stride devices address."""
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class StateTensor:
    """One recurrent state tensor every sequence has: float32, row-major, `shape` per sequence."""

    layer: int  # the model layer it belongs to (reports; ops name it by index)
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class StateSpec:
    """The per-sequence recurrent state of a plan: empty for a pure transformer. A slot of a
    runtime's state pool holds every tensor, in order, each at `offset(i)` floats."""

    tensors: tuple[StateTensor, ...] = ()

    @property
    def slot_floats(self) -> int:
        return sum(t.elements for t in self.tensors)

    @property
    def slot_bytes(self) -> int:
        return 4 * self.slot_floats

    def offset(self, index: int) -> int:
        """Float offset of tensor `index` inside a slot."""
        return sum(t.elements for t in self.tensors[:index])


@dataclass(frozen=True)
class Plan:
    buffers: tuple[Buffer, ...]
    ops: tuple[Op, ...]
    kv: KVSpec
    input_tokens: str
    output_logits: str
    output_hidden: str  # the final normalized hidden state [R, n_embd] (embeddings)
    vocab_size: int
    n_embd: int
    context_length: int
    state: StateSpec = StateSpec()  # per-sequence recurrent state (hybrid models); empty: none

    def kv_geometries(self) -> set[tuple[int, int]]:
        """The (n_kv_heads, head_dim) of the plan's attention ops: more than one where layers
        differ (Gemma 4), each within the KVSpec's row."""
        return {
            (int(op.attrs["n_kv_heads"]), int(op.attrs["head_dim"])) for op in self.ops if op.kind == OpKind.ATTENTION
        }

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def weight_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for op in self.ops:
            for w in op.weights:
                seen.setdefault(w)
        return list(seen)


def pack_plan(plan: Plan) -> bytes:
    validate_plan(plan)
    # "state" only when there is some: a stateless plan's bytes (and its bundle's hashes) stay as they were
    state = {"state": [[t.layer, list(t.shape)] for t in plan.state.tensors]} if plan.state.tensors else {}
    return msgpack.packb(
        {
            **state,
            "buffers": [[b.name, list(b.shape), b.dtype] for b in plan.buffers],
            "ops": [
                {
                    "kind": op.kind,
                    "inputs": list(op.inputs),
                    "outputs": list(op.outputs),
                    "weights": list(op.weights),
                    # sorted so that dict construction order never shows in the bytes
                    "attrs": dict(sorted(op.attrs.items())),
                }
                for op in plan.ops
            ],
            "kv": [plan.kv.n_layers, plan.kv.n_kv_heads, plan.kv.head_dim, plan.kv.dtype],
            "input_tokens": plan.input_tokens,
            "output_logits": plan.output_logits,
            "output_hidden": plan.output_hidden,
            "vocab_size": plan.vocab_size,
            "n_embd": plan.n_embd,
            "context_length": plan.context_length,
        }
    )


def _strs(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError(f"{PLAN_FILE}: {what} is not a list of names")
    return tuple(value)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{PLAN_FILE}: {what} is not an integer")
    return value


def _state(value: Any) -> StateSpec:
    """The plan's "state" list, [[layer, [dims]], ...], its counts bounded before anything is built."""
    if not isinstance(value, list) or len(value) > MAX_STATE_TENSORS:
        raise BundleError(f"{PLAN_FILE}: state is not a list of at most {MAX_STATE_TENSORS} tensors")
    tensors = []
    for i, t in enumerate(value):
        if not (isinstance(t, list) and len(t) == 2 and isinstance(t[1], list) and 1 <= len(t[1]) <= MAX_STATE_DIMS):
            raise BundleError(f"{PLAN_FILE}: state tensor {i} is not [layer, [dims]]")
        tensors.append(
            StateTensor(_int(t[0], f"state tensor {i} layer"), tuple(_int(d, f"state tensor {i} dims") for d in t[1]))
        )
    return StateSpec(tuple(tensors))


def unpack_plan(data: bytes) -> Plan:
    """Parses plan.msgpack, checking every field's type; BundleError (one line) otherwise."""
    try:
        raw = msgpack.unpackb(data, strict_map_key=True, max_array_len=MAX_OPS, max_map_len=4096)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise BundleError(f"{PLAN_FILE} is not valid msgpack: {e}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{PLAN_FILE} is not a map")
    try:
        buffers = raw["buffers"]
        ops = raw["ops"]
        if (
            not isinstance(buffers, list)
            or not isinstance(ops, list)
            or len(buffers) > MAX_BUFFERS
            or len(ops) > MAX_OPS
        ):
            raise BundleError(f"{PLAN_FILE}: buffers/ops are not lists of a sane length")
        parsed_buffers = []
        for b in buffers:
            if not (
                isinstance(b, list)
                and len(b) == 3
                and isinstance(b[0], str)
                and isinstance(b[1], list)
                and isinstance(b[2], str)
            ):
                raise BundleError(f"{PLAN_FILE}: a buffer is not [name, shape, dtype]")
            parsed_buffers.append(Buffer(b[0], tuple(b[1]), b[2]))
        parsed_ops = []
        for i, o in enumerate(ops):
            if not isinstance(o, dict) or not isinstance(o.get("kind"), str) or not isinstance(o.get("attrs"), dict):
                raise BundleError(f"{PLAN_FILE}: op {i} is malformed")
            if o["kind"] not in OPS:
                raise BundleError(f"{PLAN_FILE}: plan op {i} ({o['kind'][:32]}) is not an op this runtime knows")
            parsed_ops.append(Op(
                kind=o["kind"],
                inputs=_strs(o.get("inputs"), f"op {i} inputs"),
                outputs=_strs(o.get("outputs"), f"op {i} outputs"),
                weights=_strs(o.get("weights"), f"op {i} weights"),
                attrs=dict(o["attrs"]),
            ))  # fmt: skip
        state = _state(raw.get("state", []))
        kv = raw["kv"]
        if not (isinstance(kv, list) and len(kv) == 4 and isinstance(kv[3], str)):
            raise BundleError(f"{PLAN_FILE}: kv is not [n_layers, n_kv_heads, head_dim, dtype]")
        plan = Plan(
            buffers=tuple(parsed_buffers),
            ops=tuple(parsed_ops),
            kv=KVSpec(_int(kv[0], "kv n_layers"), _int(kv[1], "kv n_kv_heads"), _int(kv[2], "kv head_dim"), kv[3]),
            input_tokens=_strs([raw["input_tokens"]], "input_tokens")[0],
            output_logits=_strs([raw["output_logits"]], "output_logits")[0],
            output_hidden=_strs([raw["output_hidden"]], "output_hidden")[0],
            vocab_size=_int(raw["vocab_size"], "vocab_size"),
            n_embd=_int(raw["n_embd"], "n_embd"),
            context_length=_int(raw["context_length"], "context_length"),
            state=state,
        )
    except KeyError as e:
        raise BundleError(f"{PLAN_FILE} lacks {e}") from None
    validate_plan(plan)
    return plan


def validate_plan(plan: Plan) -> None:
    """The plan on its own: known ops with their arity and attributes, known buffers, sizes in
    bounds. `rfc.artifacts.validate.validate_bundle` adds the checks against the weights."""
    from rfc.artifacts.validate import check_plan

    check_plan(plan)
