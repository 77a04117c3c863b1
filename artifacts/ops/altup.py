"""gemma3n's AltUp: n = n_altup streams of the hidden state side by side in one row, hs[T, n E]
(stream i at columns i E .. (i + 1) E; |v| is a row's Euclidean norm sqrt(sum v^2)), and its
activation sparsity (gaussian_topk).
"""

from rfc.artifacts.limits import MAX_ALTUP
from rfc.artifacts.ops.core import same_shape
from rfc.artifacts.ops.descriptor import I32, PTR, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.view import OpView


def _altup(v: OpView, hs: str) -> tuple[int, int]:
    """(n, E) of an AltUp op whose streams are `hs`, every buffer a float row of T tokens."""
    names = (*v.op.inputs, *v.op.outputs)
    v.float_rows(*names)
    v.need(all(v.rows(b) == "T" for b in names), "buffers are not [T, width]")
    n = v.int_attr("n_altup", 2, MAX_ALTUP)
    v.need(v.width(hs) % n == 0, f"{hs} width {v.width(hs)} is not {n} streams")
    return n, v.width(hs) // n


def _altup_stack(v: OpView) -> None:
    (x, y), (out,) = v.op.inputs, v.op.outputs
    n, e = _altup(v, out)
    v.need(v.width(x) == e and v.width(y) == (n - 1) * e, f"inputs are not [T, {e}] and [T, {(n - 1) * e}]")


def _altup_predict(v: OpView) -> None:
    (hs, coefs), (pred, act) = v.op.inputs, v.op.outputs
    n, e = _altup(v, hs)
    v.int_attr("active", 0, n - 1)
    v.need(pred != hs, "pred is hs: every stream reads all of them")
    v.need(
        v.width(coefs) == n * n and v.shape(pred) == v.shape(hs) and v.width(act) == e,
        f"not hs[T, {n * e}], coefs[T, {n * n}] -> [T, {n * e}], [T, {e}]",
    )


def _altup_correct(v: OpView) -> None:
    (pred, x, coefs), (out, gate) = v.op.inputs, v.op.outputs
    n, e = _altup(v, pred)
    v.int_attr("active", 0, n - 1)
    v.need(out != pred, "out is pred: every stream reads pred's active one")
    v.need(
        v.width(x) == e and v.width(coefs) == n and v.shape(out) == v.shape(pred) and v.width(gate) == e,
        f"not pred[T, {n * e}], x[T, {e}], coefs[T, {n}] -> [T, {n * e}], [T, {e}]",
    )
    w = v.weight_shape(0)
    v.need(w is None or w == (e,), f"scale {w} is not [{e}]")


def _altup_add(v: OpView) -> None:
    (hs, x), (out, sub) = v.op.inputs, v.op.outputs
    n, e = _altup(v, hs)
    first = v.int_attr("first", 0, n - 1)
    v.need(v.width(x) == e and v.shape(out) == v.shape(hs), f"not hs[T, {n * e}], x[T, {e}] -> [T, {n * e}], sub")
    v.need(
        v.width(sub) % e == 0 and first + v.width(sub) // e <= n,
        f"sub width {v.width(sub)} is not streams {first}.. of {n}",
    )
    v.need(sub not in (hs, out), "sub is hs or out")


def _altup_merge(v: OpView) -> None:
    (hs, u), (out,) = v.op.inputs, v.op.outputs
    n, e = _altup(v, hs)
    v.int_attr("active", 0, n - 1)
    v.need(v.width(u) == (n - 1) * e and v.width(out) == e, f"not hs[T, {n * e}], u[T, {(n - 1) * e}] -> [T, {e}]")


def _gaussian_topk(v: OpView) -> None:
    same_shape(v)
    v.need(v.width(v.op.inputs[0]) >= 2, "a row of fewer than 2 values has no unbiased std")
    v.real_attr("std_mul", -100.0, 100.0)


DEFS = (
    OpDef(
        kind="altup_stack",
        schema=OpSchema(
            2,
            1,
            (0, 0),
            ("n_altup",),
            doc="x[T, E], y[T, (n-1) E] (altup_proj of x per stream) -> hs[T, n E]: stream 0 = x, stream i = y_{i-1} "
            "* |x| / |y_{i-1}| (magnitude matching: llama.cpp's y * target / new)",
        ),
        check=_altup_stack,
        reference="op_altup_stack",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_altup_stack"),
        gpu=GpuPart(
            ("gpu_altup_stack.hip.j2",),
            lower="_altup_stack",
            args=(("out", PTR), ("x", PTR), ("y", PTR), ("n_rows", I32)),
        ),
    ),
    OpDef(
        kind="altup_predict",
        schema=OpSchema(
            2,
            2,
            (0, 0),
            ("n_altup", "active"),
            doc="hs[T, n E], coefs[T, n n] (the router's altup_predict_coef output) -> pred[T, n E], act[T, E]: "
            "pred_i = hs_i + sum_k coefs[i n + k] hs_k, act = pred_active",
        ),
        check=_altup_predict,
        reference="op_altup_predict",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_altup_predict"),
        gpu=GpuPart(
            ("gpu_altup_predict.hip.j2",),
            lower="_altup_predict",
            args=(("pred", PTR), ("act", PTR), ("hs", PTR), ("coefs", PTR), ("n_rows", I32)),
            outputs=("pred", "act"),
        ),
    ),
    OpDef(
        kind="altup_correct",
        schema=OpSchema(
            3,
            2,
            (1, 1),
            ("n_altup", "active"),
            doc="pred[T, n E], x[T, E] (the layer's output), coefs[T, n] (altup_correct_coef's output); weight scale "
            "[E] (altup_correct_scale) -> out[T, n E], gate[T, E]: out_i = (x - pred_active) (coefs_i + 1) + "
            "pred_i, gate = out_active * scale (the per-layer input gate's input)",
        ),
        check=_altup_correct,
        reference="op_altup_correct",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_altup_correct", vectors_from=0),
        gpu=GpuPart(
            ("gpu_altup_correct.hip.j2",),
            lower="_altup_correct",
            args=(
                ("out", PTR),
                ("gate", PTR),
                ("pred", PTR),
                ("x", PTR),
                ("coefs", PTR),
                ("scale", PTR),
                ("n_rows", I32),
            ),
            outputs=("out", "gate"),
            weights=("scale",),
        ),
    ),
    OpDef(
        kind="altup_add",
        schema=OpSchema(
            2,
            2,
            (0, 0),
            ("n_altup", "first"),
            doc="hs[T, n E], x[T, E] -> out[T, n E], sub[T, m E]: out = hs with x added to streams 1 .. n-1 "
            "(llama.cpp's corrected[1:] += first_prediction), sub = out's streams first .. first + m - 1 (the "
            "next layer's router input, the active stream; before altup_merge, streams 1 .. n-1 for "
            "altup_unembd_proj)",
        ),
        check=_altup_add,
        reference="op_altup_add",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_altup_add"),
        gpu=GpuPart(
            ("gpu_altup_add.hip.j2",),
            lower="_altup_add",
            args=(("out", PTR), ("sub", PTR), ("hs", PTR), ("x", PTR), ("n_rows", I32)),
            outputs=("out", "sub"),
        ),
    ),
    OpDef(
        kind="altup_merge",
        schema=OpSchema(
            2,
            1,
            (0, 0),
            ("n_altup", "active"),
            doc="hs[T, n E], u[T, (n-1) E] (altup_unembd_proj of streams 1 .. n-1) -> out[T, E] = (hs_0 + sum_i u_i * "
            "|hs_active| / |u_i|, added in order i = 0 ..) * float32(1 / n): the streams' mean",
        ),
        check=_altup_merge,
        reference="op_altup_merge",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_altup_merge"),
        gpu=GpuPart(
            ("gpu_altup_merge.hip.j2",),
            lower="_altup_merge",
            args=(("out", PTR), ("hs", PTR), ("u", PTR), ("n_rows", I32)),
        ),
    ),
    OpDef(
        kind="gaussian_topk",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            ("std_mul",),
            doc="gemma3n's activation sparsity: out = max(x - (mean + std_mul * std), 0) per row, mean and the "
            "unbiased std (sum (x - mean)^2 / (N - 1)) over the row's N values",
        ),
        check=_gaussian_topk,
        reference="op_gaussian_topk",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_gaussian_topk"),
        gpu=GpuPart(
            ("gpu_gaussian_topk.hip.j2",), lower="_gaussian_topk", args=(("out", PTR), ("x", PTR), ("n_rows", I32))
        ),
    ),
)
