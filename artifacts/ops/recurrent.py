"""Recurrent layers of hybrid models, each over a per-sequence state (artifacts/plan.py, StateSpec):
LFM2's gated short convolution, the causal depthwise conv before Gated DeltaNet or Mamba2, the
Gated DeltaNet recurrence (qwen35, qwen3next) and Mamba2's selective scan (granitehybrid,
nemotron_h, falcon-h1).
"""

from rfc.artifacts.limits import MAX_CONV_KERNEL, MAX_DELTA_STATE, MAX_HEAD_DIM, MAX_HEADS, MAX_SSM_STATE
from rfc.artifacts.ops.descriptor import I32, PTR, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.view import OpView, bounded_int


def state_tensor(v: OpView) -> tuple[int, ...]:
    """The shape of the StateTensor the op's `state` attribute names (every stateful op has one)."""
    tensors = v.plan.state.tensors
    index = v.op.attr("state")
    v.need(
        bounded_int(index, 0, len(tensors) - 1),
        f"attribute state = {str(index)[:20]!r} names no state tensor of the plan",
    )
    return tensors[index].shape


def _short_conv(v: OpView) -> None:
    (bcx,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(bcx, out)
    c = v.width(out)
    v.need(
        v.shape(bcx) == ("T", 3 * c) and v.rows(out) == "T",
        f"input is not [T, 3 x {c}] (b, c, x) or output not [T, {c}]",
    )
    shape = state_tensor(v)
    v.need(
        len(shape) == 2 and shape[1] == c and 1 <= shape[0] < MAX_CONV_KERNEL,
        f"state tensor {list(shape)} is not [kernel - 1 < {MAX_CONV_KERNEL}, {c}]",
    )
    w = v.weight_shape(0)
    v.need(w is None or w == (c, shape[0] + 1), f"kernel {w} is not [{c}, {shape[0] + 1}]")


def _ssm_conv(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    c = v.width(x)
    v.need(v.shape(x) == v.shape(out) and v.rows(x) == "T", "input and output are not the same [T, channels]")
    shape = tuple(state_tensor(v))
    v.need(
        len(shape) == 2 and shape[1] == c and 1 <= shape[0] < MAX_CONV_KERNEL,
        f"state tensor {list(shape)} is not [kernel - 1 < {MAX_CONV_KERNEL}, {c}]",
    )
    w = v.weight_shape(0)
    v.need(w is None or w == (c, shape[0] + 1), f"conv weight {w} is not [{c}, {shape[0] + 1}]")
    if len(v.op.weights) > 1:
        bias = v.weight_shape(1)
        v.need(bias is None or bias == (c,), f"conv bias {bias} is not [{c}]")


def _gated_delta_net(v: OpView) -> None:
    (qkv, alpha, beta), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(qkv, alpha, beta, out)
    hk = v.int_attr("n_k_heads", 1, MAX_HEADS)
    hv = v.int_attr("n_v_heads", 1, MAX_HEADS)
    s = v.int_attr("head_dim", 1, MAX_DELTA_STATE)  # the state is S x S per head
    v.real_attr("eps", 0.0, 1.0)
    v.need(hv % hk == 0, "n_v_heads is not a multiple of n_k_heads")
    v.need(v.shape(qkv) == ("T", (2 * hk + hv) * s), f"qkv is not [T, {(2 * hk + hv) * s}]")
    # the decay per value head (qwen35's GDN), or per value head and key channel (Kimi's KDA)
    decay = v.choice_attr("decay", ("head", "key", "key_sigmoid"))
    per_key = decay != "head"
    if decay == "key_sigmoid":
        v.real_attr("lower_bound", -1e6, 0.0)
    g = hv * s if per_key else hv
    v.need(v.shape(alpha) == ("T", g), f"alpha is not [T, {g}]")
    v.need(v.shape(beta) == ("T", hv), f"beta is not [T, {hv}]")
    v.need(v.shape(out) == ("T", hv * s), f"output is not [T, {hv * s}]")
    v.need(tuple(state_tensor(v)) == (hv, s, s), f"state tensor {v.op.attr('state')} is not [{hv}, {s}, {s}]")
    for i, width in enumerate((hv, g)):
        w = v.weight_shape(i)
        v.need(w is None or w == (width,), f"gate weight {i} {w} is not [{width}]")


def _lightning_attention(v: OpView) -> None:
    (qkv,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(qkv, out)
    h = v.int_attr("n_heads", 1, MAX_HEADS)
    d = v.int_attr("head_dim", 1, MAX_DELTA_STATE)  # the state is D x D per head
    v.need(v.shape(qkv) == ("T", 3 * h * d), f"qkv is not [T, {3 * h * d}]")
    v.need(v.shape(out) == ("T", h * d), f"output is not [T, {h * d}]")
    v.need(tuple(state_tensor(v)) == (h, d, d), f"state tensor {v.op.attr('state')} is not [{h}, {d}, {d}]")
    w = v.weight_shape(0)
    v.need(w is None or w == (h,), f"decay {w} is not [{h}]")


def _ssm_scan(v: OpView) -> None:
    (xbc, dt), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(xbc, dt, out)
    h = v.int_attr("n_heads", 1, MAX_HEADS)
    p = v.int_attr("head_dim", 1, MAX_HEAD_DIM)
    g = v.int_attr("n_groups", 1, MAX_HEADS)
    n = v.int_attr("state_size", 1, MAX_SSM_STATE)
    v.need(h % g == 0, "n_heads is not a multiple of n_groups")
    v.need(v.shape(xbc) == ("T", h * p + 2 * g * n), f"xbc is not [T, {h * p + 2 * g * n}]")
    v.need(v.shape(dt) == ("T", h), f"dt is not [T, {h}]")
    v.need(v.shape(out) == ("T", h * p), f"output is not [T, {h * p}]")
    v.need(tuple(state_tensor(v)) == (h, p, n), f"state tensor {v.op.attr('state')} is not [{h}, {p}, {n}]")
    # a: one decay per head (Mamba2), or with decay 'state' one per head and state (Mamba-1: [H N], flat)
    per_state = v.choice_attr("decay", ("head", "state")) == "state"
    w = v.weight_shape(0)
    v.need(w is None or w == ((h * n,) if per_state else (h,)), f"weight 0 {w} is not [{h * n if per_state else h}]")
    v.need(not per_state or p == 1, "a decay per state (Mamba-1) is planned for heads of one row")
    for i in (1, 2):
        w = v.weight_shape(i)
        v.need(w is None or w == (h,), f"weight {i} {w} is not [{h}]")


# The arguments every recurrent kernel ends with: the state pool's base, each sequence's slot
# (state_slots), the step's sequences (seq_start, positions: a chunk at position 0 starts from
# zeros), the op's StateTensor's float offset in a slot (a constant: layers share one kernel) and
# the sequence count (the grid).
STATE_ARGS = (
    ("state", PTR),
    ("state_slots", PTR),
    ("seq_start", PTR),
    ("positions", PTR),
    ("state_offset", I32),
    ("n_seqs", I32),
)

DEFS = (
    OpDef(
        kind="short_conv",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            ("state",),
            doc="LFM2's gated short convolution over a sequence's recurrent state: bcx[T, 3C] (in_proj's output: b, "
            "c, x, C channels each) -> out[T, C]. u = b * x; per sequence, the window is the state (the last L-1 "
            "u rows before the chunk, [L-1, C]; zeros at position 0) followed by the chunk's u rows; out[t, ch] = "
            "c[t, ch] * sum_k weight[ch, k] * window[t + k, ch] for k < L (weight [C, L], the depthwise kernel; "
            "llama.cpp's ggml_ssm_conv). The state afterwards: the window's last L-1 rows. `state` is the index "
            "of its StateTensor ([L-1, C]) in the plan's StateSpec",
        ),
        check=_short_conv,
        reference="op_short_conv",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_short_conv"),
        gpu=GpuPart(
            ("gpu_short_conv.hip.j2",),
            lower="_short_conv",
            args=(
                ("out", PTR),
                ("bcx", PTR),
                ("weight", PTR),
                *STATE_ARGS,
            ),
            weights=("weight",),
        ),
    ),
    OpDef(
        kind="ssm_conv",
        schema=OpSchema(
            1,
            1,
            (1, 2),
            ("state",),
            doc="causal depthwise conv with SiLU (llama.cpp's ggml_ssm_conv then ggml_silu): x[T, C], weight [C, K] "
            "-> out[t, c] = silu(sum_k weight[c, k] * window[t + k, c] + bias[c]), window = the sequence's state "
            "(its K-1 inputs before the chunk, [K-1, C]) followed by the chunk's rows of x; the state afterwards: "
            "the window's last K-1 rows. The optional second weight is the bias [C] (Mamba2's conv1d bias; none: "
            "0). `state` is the index of its StateTensor ([K-1, C])",
        ),
        check=_ssm_conv,
        reference="op_ssm_conv",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_ssm_conv", vectors_from=1),
        gpu=GpuPart(
            ("gpu_ssm_conv.hip.j2",),
            lower="_ssm_conv",
            args=(
                ("out", PTR),
                ("x", PTR),
                ("weight", PTR),
                ("bias", PTR),
                *STATE_ARGS,
            ),
            weights=("weight", "bias"),
        ),
    ),
    OpDef(
        kind="gated_delta_net",
        schema=OpSchema(
            3,
            1,
            (2, 2),
            ("state", "n_k_heads", "n_v_heads", "head_dim", "eps"),
            optional=(("decay", "head"), ("lower_bound", 0.0)),
            doc="Gated DeltaNet recurrence (llama.cpp's ggml_gated_delta_net with qwen35's gating): inputs qkv[T, (2 "
            "Hk + Hv) S] (q heads, then k heads, then v heads, S = head_dim), alpha[T, Hv], beta[T, Hv]; weights "
            "a[Hv] (ssm_a = -exp(A_log)) and dt_bias[Hv] -> out[T, Hv S]. Per token and v head h (k head h % Hk): "
            "q, k scaled to unit length (x / sqrt(sum x^2 + eps)), g = softplus(alpha + dt_bias) * a, b = "
            "sigmoid(beta); with the head's state M (S x S: M[j][i], v index j, k index i) M *= exp(g); d_j = b "
            "(v_j - sum_i M[j][i] k_i); M[j][i] += d_j k_i; out_j = sum_i M[j][i] q_i / sqrt(S). `state` is the "
            "index of its StateTensor ([Hv, S, S]). With `decay` 'key' (Kimi Delta Attention: ggml_gated_delta_net "
            "with g [S, Hv]) alpha is [T, Hv S] and dt_bias [Hv S]: g_i = softplus(alpha_{h S + i} + dt_bias_{h S + "
            "i}) * a_h per key index i, and M[j][i] *= exp(g_i); with `decay` 'key_sigmoid' (bailingmoe3's safe "
            "gate) g_i = lower_bound * sigmoid((alpha_{h S + i} + dt_bias_{h S + i}) * a_h)",
        ),
        check=_gated_delta_net,
        reference="op_gated_delta_net",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_gated_delta_net", attrs=("decay", "lower_bound"), vectors_from=0),
        gpu=GpuPart(
            ("gpu_gated_delta_net.hip.j2",),
            lower="_gated_delta_net",
            args=(
                ("out", PTR),
                ("qkv", PTR),
                ("alpha", PTR),
                ("beta", PTR),
                ("a", PTR),
                ("dt", PTR),
                *STATE_ARGS,
            ),
            weights=("a", "dt"),
        ),
    ),
    OpDef(
        kind="lightning_attention",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            ("state", "n_heads", "head_dim"),
            doc="MiniMax-01's lightning attention, the recurrent form of its chunked linear attention: input qkv[T, "
            "3 H D] (head h's q, k and v side by side at 3 h D), weight decay[H] (the per-step log decay s_h >= "
            "0) -> out[T, H D]. Per token and head, with the head's state M (D x D: M[j][i], v index j, k index "
            "i) M = exp(-s_h) M + v k^T, out_j = sum_i M[j][i] q_i. `state` is the index of its StateTensor "
            "([H, D, D])",
        ),
        check=_lightning_attention,
        reference="op_lightning_attention",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_lightning_attention", vectors_from=0),
        gpu=GpuPart(
            ("gpu_lightning_attention.hip.j2",),
            lower="_lightning_attention",
            args=(("out", PTR), ("qkv", PTR), ("decay", PTR), *STATE_ARGS),
            weights=("decay",),
        ),
    ),
    OpDef(
        kind="ssm_scan",
        schema=OpSchema(
            2,
            1,
            (3, 3),
            ("state", "n_heads", "head_dim", "n_groups", "state_size"),
            optional=(("decay", "head"),),
            doc="Mamba2 selective scan (llama.cpp's ggml_ssm_scan with a scalar A per head, then y + x D): inputs "
            "xbc[T, H P + 2 G N] (x: H heads of P = head_dim, then B: G groups of N = state_size, then C: G "
            "groups of N), dt[T, H]; weights a[H] (ssm_a = -exp(A_log)), or with `decay` 'state' a[H N] and P = 1 "
            "(Mamba-1: a decay per channel and state, exp(dt' a[h, j]) for state j), d[H] (ssm_d), dt_bias[H] -> "
            "out[T, H P]. "
            "Per token and head h (group g = h / (H / G)): dt' = softplus(dt + dt_bias) (linear above 20), with "
            "the head's state M [P, N] M = M exp(dt' a) + dt' x_h B_g^T, out_h = M C_g + d x_h. `state` is the "
            "index of its StateTensor ([H, P, N])",
        ),
        check=_ssm_scan,
        reference="op_ssm_scan",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_ssm_scan", attrs=("decay",), vectors_from=0),
        gpu=GpuPart(
            ("gpu_ssm_scan.hip.j2", "gpu_ssm_scan1.hip.j2"),
            lower="_ssm_scan",
            args=(
                ("out", PTR),
                ("xbc", PTR),
                ("dt", PTR),
                ("a", PTR),
                ("d", PTR),
                ("dt_bias", PTR),
                *STATE_ARGS,
            ),
            weights=("a", "d", "dt_bias"),
        ),
    ),
)
