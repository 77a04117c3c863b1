"""Hyper-connections (hy_v4's iHC: llama.cpp's hy-v4.cpp): the residual as n streams of E side by
side in one row, hs[T, n E] (stream i at columns i E .. (i + 1) E). Before each sublayer the
streams are mixed into its input by per-token weights, after it the sublayer's output is spread
back over them by per-token gates; the weights and gates come from a matmul of the RMS-normed
streams (plain ops) through `hc_gates`.

Kimi-K3's cross-layer residual attention (llama.cpp's kimi-k3.cpp res_mix) keeps its banked
residuals side by side the same way, in one stack[T, S E]: `put_cols` copies a row into its slot
and `res_mix` mixes the first n streams by a softmax of their scores.
"""

from rfc.artifacts.limits import MAX_HC_STREAMS, MAX_RES_STREAMS, MAX_SINKHORN_ITERS
from rfc.artifacts.ops.descriptor import I32, PTR, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.view import OpView


def _streams(v: OpView) -> int:
    names = (*v.op.inputs, *v.op.outputs)
    v.float_rows(*names)
    v.need(all(v.rows(b) == v.rows(names[0]) for b in names), "buffers differ in rows")
    return v.int_attr("streams", 1, MAX_HC_STREAMS)


def _hc_gates(v: OpView) -> None:
    (mixes,), (gates,) = v.op.inputs, v.op.outputs
    n = _streams(v)
    m = v.width(mixes)
    v.need(m in (n, 2 * n) and v.width(gates) == m, f"mixes/gates are not [rows, {n}] or [rows, {2 * n}]")
    for name in ("scale_pre", "scale_post", "magnitude"):
        v.real_attr(name, -1e6, 1e6)
    v.real_attr("eps", 0.0, 1.0)
    v.need(isinstance(v.op.attr("post_eps"), bool), f"attribute post_eps = {v.op.attr('post_eps')!r} is not a boolean")
    w = v.weight_shape(0)
    v.need(w is None or w == (m,), f"base {w} is not [{m}]")


def _hc_reduce(v: OpView) -> None:
    (hs, gates), (out,) = v.op.inputs, v.op.outputs
    n = _streams(v)
    v.need(v.width(hs) == n * v.width(out), f"hs width {v.width(hs)} is not {n} x out's {v.width(out)}")
    v.need(v.width(gates) in (n, 2 * n), f"gates width {v.width(gates)} is not {n} or {2 * n}")
    v.need(out not in (hs, gates), "out is an input")


def _hc_post(v: OpView) -> None:
    (y, residual, gates), (out,) = v.op.inputs, v.op.outputs
    n = _streams(v)
    v.need(v.width(residual) == n * v.width(y), f"residual width {v.width(residual)} is not {n} x y's {v.width(y)}")
    v.need(
        v.width(gates) == 2 * n and v.shape(out) == v.shape(residual), f"not gates[rows, {2 * n}] -> residual's shape"
    )
    v.need(out not in (y, gates), "out is y or the gates")


def _hc_comb(v: OpView) -> None:
    (mix,), (comb,) = v.op.inputs, v.op.outputs
    n = _streams(v)
    v.need(v.width(mix) == n * n and v.width(comb) == n * n, f"mix/comb are not [rows, {n * n}]")
    v.real_attr("scale", -1e6, 1e6)
    v.real_attr("eps", 0.0, 1.0)
    v.int_attr("iters", 1, MAX_SINKHORN_ITERS)
    w = v.weight_shape(0)
    v.need(w is None or w == (n * n,), f"base {w} is not [{n * n}]")


def _hc_mix_post(v: OpView) -> None:
    (y, residual, gates, comb), (out,) = v.op.inputs, v.op.outputs
    n = _streams(v)
    v.need(v.width(residual) == n * v.width(y), f"residual width {v.width(residual)} is not {n} x y's {v.width(y)}")
    v.need(v.width(gates) == 2 * n and v.width(comb) == n * n, f"not gates[rows, {2 * n}], comb[rows, {n * n}]")
    v.need(v.shape(out) == v.shape(residual) and out not in v.op.inputs, "out is not a new buffer of residual's shape")


def _hc_mean(v: OpView) -> None:
    (hs,), (out,) = v.op.inputs, v.op.outputs
    n = _streams(v)
    v.need(v.width(hs) == n * v.width(out) and out != hs, f"hs width {v.width(hs)} is not {n} x out's {v.width(out)}")


def _res_mix(v: OpView) -> None:
    (stack,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(stack, out)
    v.need(v.rows(stack) == v.rows(out), "buffers differ in rows")
    n, e = v.int_attr("streams", 2, MAX_RES_STREAMS), v.width(out)
    v.need(
        v.width(stack) % e == 0 and n * e <= v.width(stack), f"stack width {v.width(stack)} holds no {n} streams of {e}"
    )
    v.real_attr("eps", 0.0, 1.0, open_lo=True)
    w = v.weight_shape(0)
    v.need(w is None or w == (e,), f"score weight {w} is not [{e}]")


def _put_cols(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.rows(x) == v.rows(out) and x != out, "not x[rows, W] -> another buffer of its rows")
    offset = v.int_attr("offset", 0, v.width(out))
    v.need(offset + v.width(x) <= v.width(out), f"columns {offset}..{offset + v.width(x)} overrun {out}")


DEFS = (
    OpDef(
        kind="hc_gates",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            ("streams", "eps"),
            optional=(("scale_pre", 1.0), ("scale_post", 1.0), ("magnitude", 1.0), ("post_eps", True)),
            doc="mixes[rows, m] (m = n: the final mix; m = 2 n: a sublayer's), base[m] -> gates[rows, m]: for j < n "
            "g_j = sigmoid(mixes_j * scale_pre + base_j) + eps (the streams' mixing weights), for j >= n g_j = "
            "sigmoid(mixes_j * scale_post + base_j) * magnitude + eps (the output's gate per stream; without the eps "
            "where post_eps is false: DeepSeek-V4's mHC); float32 in ggml's order",
        ),
        check=_hc_gates,
        reference="op_hc_gates",
        cpu=CpuPart(
            ("cpu_arch_ops.c.j2",),
            lower="_hc_row",
            attrs=("scale_pre", "scale_post", "magnitude", "post_eps"),
            vectors_from=0,
        ),
        gpu=GpuPart(
            ("gpu_hc_gates.hip.j2",),
            lower="_hc_gates",
            args=(("gates", PTR), ("mixes", PTR), ("base", PTR), ("n_rows", I32)),
            outputs=("gates",),
            weights=("base",),
        ),
    ),
    OpDef(
        kind="hc_reduce",
        schema=OpSchema(
            2,
            1,
            (0, 0),
            ("streams",),
            doc="hs[rows, n E], gates[rows, n or 2 n] -> out[rows, E] = sum_i hs_i * gates_i, added in order i = "
            "0 .. n - 1 in float32 (the sublayer's input)",
        ),
        check=_hc_reduce,
        reference="op_hc_reduce",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_hc_row"),
        gpu=GpuPart(
            ("gpu_hc_reduce.hip.j2",),
            lower="_hc_reduce",
            args=(("out", PTR), ("hs", PTR), ("gates", PTR), ("n_rows", I32)),
        ),
    ),
    OpDef(
        kind="hc_post",
        schema=OpSchema(
            3,
            1,
            (0, 0),
            ("streams",),
            doc="y[rows, E], residual[rows, n E], gates[rows, 2 n] -> out[rows, n E], stream i = residual_i + y * "
            "gates_{n + i} (out may be residual)",
        ),
        check=_hc_post,
        reference="op_hc_post",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_hc_row"),
        gpu=GpuPart(
            ("gpu_hc_post.hip.j2",),
            lower="_hc_post",
            args=(("out", PTR), ("y", PTR), ("residual", PTR), ("gates", PTR), ("n_rows", I32)),
        ),
    ),
    OpDef(
        kind="hc_comb",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            ("streams", "scale", "eps", "iters"),
            doc="mix[rows, n n], base[n n] -> comb[rows, n n], DeepSeek-V4's mHC stream mixing matrix (comb[s n + d]: "
            "from stream s to stream d): c = mix * scale + base; per source s a softmax over d, + eps; the columns "
            "normalized (each d divided by eps + its sum over s), then iters - 1 times the rows (each s by eps + its "
            "sum over d) and the columns again: ggml's ops in float32, the sums in float64",
        ),
        check=_hc_comb,
        reference="op_hc_comb",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_hc_row", per_op=("scale",), vectors_from=0),
        gpu=GpuPart(
            ("gpu_hc_comb.hip.j2",),
            lower="_hc_comb",
            args=(("comb", PTR), ("mix", PTR), ("base", PTR), ("n_rows", I32)),
            outputs=("comb",),
            weights=("base",),
        ),
    ),
    OpDef(
        kind="hc_mix_post",
        schema=OpSchema(
            4,
            1,
            (0, 0),
            ("streams",),
            doc="y[rows, E], residual[rows, n E], gates[rows, 2 n], comb[rows, n n] -> out[rows, n E], stream d = y * "
            "gates_{n + d} + sum_s residual_s * comb[s n + d], added in order s = 0 .. n - 1 (DeepSeek-V4's mHC "
            "post; out a buffer of its own)",
        ),
        check=_hc_mix_post,
        reference="op_hc_mix_post",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_hc_row"),
        gpu=GpuPart(
            ("gpu_hc_mix_post.hip.j2",),
            lower="_hc_mix_post",
            args=(("out", PTR), ("y", PTR), ("residual", PTR), ("gates", PTR), ("comb", PTR), ("n_rows", I32)),
        ),
    ),
    OpDef(
        kind="hc_mean",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            ("streams",),
            doc="hs[rows, n E] -> out[rows, E] = (hs_0 + hs_1 + ... + hs_{n - 1}) * (1 / n), added in order in "
            "float32 (mHC's final collapse of the streams)",
        ),
        check=_hc_mean,
        reference="op_hc_mean",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_hc_row"),
        gpu=GpuPart(("gpu_hc_mean.hip.j2",), lower="_hc_mean", args=(("out", PTR), ("hs", PTR), ("n_rows", I32))),
    ),
    OpDef(
        kind="res_mix",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            ("streams", "eps"),
            doc="stack[rows, S E], w[E] -> out[rows, E]: Kimi-K3's cross-layer residual attention over the first n "
            "streams (the banked residuals, the current one last): score_i = sum_e rmsnorm(stream_i)_e w_e (eps; "
            "the squares and the sum added in float64 as ggml's rms_norm and sum_rows), p = softmax(scores), out = "
            "sum_i p_i stream_i added in order in float32 (ggml_dsv4_hc_pre, then the current stream's product)",
        ),
        check=_res_mix,
        reference="op_res_mix",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_hc_row", per_op=("streams",), vectors_from=0),
        gpu=GpuPart(
            ("gpu_res_mix.hip.j2",),
            lower="_res_mix",
            args=(("out", PTR), ("stack", PTR), ("w", PTR), ("n_rows", I32)),
            weights=("w",),
        ),
    ),
    OpDef(
        kind="put_cols",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            ("offset",),
            doc="x[rows, W] -> out[rows, N]: out's columns [offset, offset + W) of every row become x's, its others "
            "stay as they are (a residual banked into its slot of res_mix's stack)",
        ),
        check=_put_cols,
        reference="op_put_cols",
        cpu=CpuPart(("cpu_arch_ops.c.j2",), lower="_hc_row", per_op=("offset",)),
        gpu=GpuPart(("gpu_put_cols.hip.j2",), lower="_put_cols", args=(("out", PTR), ("x", PTR), ("n_rows", I32))),
    ),
)
