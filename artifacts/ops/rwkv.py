"""RWKV's ops (rwkv6, rwkv6qwen2, rwkv7, arwkv7), as llama.cpp 0.3.36 builds them: the token shift
(each layer's previous token, a per-sequence state), its linear interpolations (lerps) and the two
WKV recurrences, RWKV-6's (and its gated-linear-attention form, QRWKV6) and RWKV-7's.
"""

from rfc.artifacts.limits import MAX_DELTA_STATE, MAX_HEADS
from rfc.artifacts.ops.descriptor import I32, PTR, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.recurrent import STATE_ARGS, state_tensor
from rfc.artifacts.ops.view import MAX_WIDTH, OpView

WKV6_MODES = ("wkv6", "gla")


def _token_shift(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(x != out, "token_shift cannot write its own input (a row reads the row before it)")
    v.need(v.shape(x) == v.shape(out) and v.rows(x) == "T", "input and output are not the same [T, channels]")
    c = v.width(x)
    v.need(tuple(state_tensor(v)) == (1, c), f"state tensor {v.op.attr('state')} is not [1, {c}]")


def _part(v: OpView, width: int, c: int) -> None:
    """`part` names one of the width / c blocks of channels (of a mix weight or of mix rows)."""
    v.need(width % c == 0, f"the mixes' width {width} is not a multiple of the {c} channels")
    v.int_attr("part", 0, width // c - 1)


def _lerp(v: OpView) -> None:
    (a, b), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(a, b, out)
    v.need(v.shape(a) == v.shape(b) == v.shape(out), "a, b and the output are not the same shape")
    w = v.weight_shape(0)
    v.need(w is None or len(w) == 1, f"mix weight {w} is not a vector")
    # the weight's mixes bound `part` (checking the plan alone: the widest a weight may be)
    _part(v, w[0] if w is not None else MAX_WIDTH // v.width(a) * v.width(a), v.width(a))


def _lerp_data(v: OpView) -> None:
    (a, b, m), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(a, b, m, out)
    v.need(v.shape(a) == v.shape(b) == v.shape(out), "a, b and the output are not the same shape")
    v.need(v.rows(m) == v.rows(a), "the mix rows and a's rows differ")
    _part(v, v.width(m), v.width(a))


def _heads(v: OpView) -> tuple[int, int]:
    h = v.int_attr("n_heads", 1, MAX_HEADS)
    s = v.int_attr("head_dim", 1, MAX_DELTA_STATE)  # the state is S x S per head
    v.need(tuple(state_tensor(v)) == (h, s, s), f"state tensor {v.op.attr('state')} is not [{h}, {s}, {s}]")
    return h, s


def _wkv6(v: OpView) -> None:
    (r, k, vv, w), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(r, k, vv, w, out)
    h, s = _heads(v)
    hkv = v.int_attr("n_kv_heads", 1, h)
    v.need(h % hkv == 0, "n_heads is not a multiple of n_kv_heads")
    for name, heads in ((r, h), (k, hkv), (vv, hkv), (w, h), (out, h)):
        v.need(v.shape(name) == ("T", heads * s), f"{name} is not [T, {heads * s}]")
    gla = v.choice_attr("mode", WKV6_MODES) == "gla"
    v.real_attr("scale", 0.0, 1e6, open_lo=True)
    v.need(len(v.op.weights) == (1 if gla else 2), f"mode {v.op.attr('mode')} takes {1 if gla else 2} weights")
    for i in range(len(v.op.weights)):
        shape = v.weight_shape(i)
        v.need(shape is None or shape == (h * s,), f"weight {i} {shape} is not [{h * s}]")


def _wkv7(v: OpView) -> None:
    (r, w, k, vv, a), (out, bonus) = v.op.inputs, v.op.outputs
    v.float_rows(r, w, k, vv, a, out, bonus)
    h, s = _heads(v)
    for name in (r, w, k, vv, a, out, bonus):
        v.need(v.shape(name) == ("T", h * s), f"{name} is not [T, {h * s}]")
    v.need(out != bonus, "the two outputs are one buffer")
    for i in range(5):
        shape = v.weight_shape(i)
        v.need(shape is None or shape == (h * s,), f"weight {i} {shape} is not [{h * s}]")


DEFS = (
    OpDef(
        kind="token_shift",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            ("state",),
            doc="RWKV's token shift (llama.cpp's build_rwkv_token_shift_load / _store): x[T, C] -> out[t] = the "
            "sequence's row of x before t; the chunk's first row gets the state ([1, C]: the last row of the "
            "sequence's previous chunk; zeros at position 0), and the state afterwards is the chunk's last row. "
            "`state` is the index of its StateTensor ([1, C])",
        ),
        check=_token_shift,
        reference="op_token_shift",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_token_shift"),
        gpu=GpuPart(("gpu_token_shift.hip.j2",), lower="_token_shift", args=(("out", PTR), ("x", PTR), *STATE_ARGS)),
    ),
    OpDef(
        kind="lerp",
        schema=OpSchema(
            2,
            1,
            (1, 1),
            optional=(("part", 0),),
            doc="a linear interpolation by a learned vector (RWKV's token-shift mixes): a, b [T, C], weight mu [P C] "
            "(P mixes side by side: llama.cpp's time_mix_lerp_fused) -> out = (b - a) * mu_p + a, mu_p = mu[p C : "
            "(p + 1) C] for p = `part`, each operation rounded to float32 as ggml's sub, mul and add (no fused "
            "multiply-add)",
        ),
        check=_lerp,
        reference="op_lerp",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_lerp", attrs=("part",), per_op=("part",), vectors_from=0),
        gpu=GpuPart(
            ("gpu_lerp.hip.j2",),
            lower="_lerp",
            args=(("out", PTR), ("a", PTR), ("b", PTR), ("mu", PTR), ("n_rows", I32)),
            weights=("mu",),
        ),
    ),
    OpDef(
        kind="lerp_data",
        schema=OpSchema(
            3,
            1,
            (0, 0),
            optional=(("part", 0),),
            doc="a linear interpolation by data (RWKV-6's data-dependent token shift, RWKV-7's value residual): a, b "
            "[T, C], m [T, P C] -> out = (b - a) * m_p + a, m_p = columns [p C, (p + 1) C) of m for p = `part`, "
            "each operation rounded to float32 (no fused multiply-add)",
        ),
        check=_lerp_data,
        reference="op_lerp_data",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_lerp_data", attrs=("part",), per_op=("part",)),
        gpu=GpuPart(
            ("gpu_lerp.hip.j2",),
            lower="_lerp_data",
            args=(("out", PTR), ("a", PTR), ("b", PTR), ("m", PTR), ("n_rows", I32)),
        ),
    ),
    OpDef(
        kind="wkv6",
        schema=OpSchema(
            4,
            1,
            (1, 2),
            ("state", "n_heads", "n_kv_heads", "head_dim"),
            optional=(("mode", "wkv6"), ("scale", 1.0)),
            doc="RWKV-6's WKV recurrence (ggml_rwkv_wkv6) or, with `mode` 'gla', QRWKV6's gated linear attention "
            "(ggml_gated_linear_attn): inputs r[T, H S], k[T, Hkv S], v[T, Hkv S], w[T, H S] (the decay's LoRA "
            "output), weights (wkv6) u[H S] (time_mix_first) and decay[H S], (gla) decay[H S] -> out[T, H S]. Head "
            "h reads k and v head h / (H / Hkv). Per token and head, with the decay w' = exp(-exp(w + decay)) and "
            "the head's state M (S x S: M[j][i], value index j, key index i): wkv6: out_j = sum_i r_i (u_i k_i v_j "
            "+ M[j][i]), then M[j][i] = M[j][i] w'_i + k_i v_j; gla: k' = k - k w', M[j][i] = M[j][i] w'_i + k'_i "
            "v_j, then out_j = sum_i (r_i scale) M[j][i]. `state` is the index of its StateTensor ([H, S, S])",
        ),
        check=_wkv6,
        reference="op_wkv6",
        cpu=CpuPart(
            ("cpu_arch_ops.c.j2",), lower="_wkv6", attrs=("mode", "scale"), per_op=("mode", "scale"), vectors_from=0
        ),
        gpu=GpuPart(
            ("gpu_wkv.hip.j2",),
            lower="_wkv6",
            args=(
                ("out", PTR),
                ("r", PTR),
                ("k", PTR),
                ("v", PTR),
                ("w", PTR),
                ("u", PTR),
                ("decay", PTR),
                *STATE_ARGS,
            ),
            weights=("u", "decay"),
        ),
    ),
    OpDef(
        kind="wkv7",
        schema=OpSchema(
            5,
            2,
            (5, 5),
            ("state", "n_heads", "head_dim"),
            doc="RWKV-7's time mix around its WKV recurrence (ggml_rwkv_wkv7 and the element-wise ops llama.cpp's "
            "build_rwkv7_time_mix puts around it): inputs r, w (the decay LoRA's output), k, v, a (the in-context "
            "learning rate LoRA's output), each [T, H S]; weights w0, a0, k_k, k_a, r_k [H S] -> out[T, H S] (the "
            "WKV output) and bonus[T, H S]. Per token: w' = exp(-0.606531 sigmoid(w + w0)), a' = sigmoid(a + a0), "
            "kk = k k_k normalized per head (x / max(|x|, 1e-12)), k' = k + (a' (k k_a) - k k_a); per head, with "
            "its state M (S x S: M[j][i], value index j, key index i), sa_j = -sum_i kk_i M[j][i], M[j][i] = "
            "M[j][i] w'_i + v_j k'_i + sa_j kk_i a'_i, out_j = sum_i M[j][i] r_i, bonus_j = v_j sum_i k'_i r_i "
            "r_k_i. `state` is the index of its StateTensor ([H, S, S])",
        ),
        check=_wkv7,
        reference="op_wkv7",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_wkv7", vectors_from=0),
        gpu=GpuPart(
            ("gpu_wkv.hip.j2",),
            lower="_wkv7",
            args=(
                ("out", PTR),
                ("bonus", PTR),
                ("r", PTR),
                ("w", PTR),
                ("k", PTR),
                ("v", PTR),
                ("a", PTR),
                ("w0", PTR),
                ("a0", PTR),
                ("k_k", PTR),
                ("k_a", PTR),
                ("r_k", PTR),
                *STATE_ARGS,
            ),
            outputs=("out", "bonus"),
            weights=("w0", "a0", "k_k", "k_a", "r_k"),
        ),
    ),
)
