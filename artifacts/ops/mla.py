"""Per-head views of activations: multi-head latent attention's matmul per head over the latent
and the per-head concatenation of the latent and RoPE parts of the query and key (deepseek2),
and the first values of each head (slice_heads: attention whose values are narrower than its
keys, run over value rows padded to the key's head size).
"""

from rfc.artifacts.limits import MAX_HEADS
from rfc.artifacts.ops.descriptor import I32, PTR, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.view import MAX_WIDTH, OpView


def _head_matmul(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(x != out, "a head_matmul cannot write its own input")
    v.need(v.rows(x) == v.rows(out), "input and output rows differ")
    heads = v.int_attr("heads", 1, MAX_HEADS)
    stride = v.int_attr("stride", 0, MAX_WIDTH)
    v.need(v.width(out) % heads == 0, f"output width {v.width(out)} is not {heads} heads")
    v.need(
        v.width(x) == heads * stride if stride else v.width(x) % heads == 0,
        f"input width {v.width(x)} is not {heads} heads",
    )
    k = v.width(x) // heads if not stride else None
    w = v.weight_shape(0)
    if w is not None:
        v.need(
            len(w) == 3 and w[0] == heads and w[1] == v.width(out) // heads,
            f"weight {w} is not [{heads}, {v.width(out) // heads}, K]",
        )
        v.need(w[2] == k if k is not None else 1 <= w[2] <= stride, f"weight {w} rows do not fit the input's heads")


def _concat_heads(v: OpView) -> None:
    (a, b), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(a, b, out)
    heads = v.int_attr("heads", 1, MAX_HEADS)
    v.need(v.rows(a) == v.rows(b) == v.rows(out), "buffers differ in rows")
    v.need(v.width(a) % heads == 0 and v.width(b) % heads == 0, f"inputs are not {heads} heads")
    v.need(v.width(out) == v.width(a) + v.width(b), f"output width {v.width(out)} is not {v.width(a)} + {v.width(b)}")


def _slice_heads(v: OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(x != out, "a slice_heads cannot write its own input")
    v.need(v.rows(x) == v.rows(out), "input and output rows differ")
    heads = v.int_attr("heads", 1, MAX_HEADS)
    width = v.int_attr("width", 1, MAX_WIDTH)
    v.need(v.width(x) % heads == 0, f"input width {v.width(x)} is not {heads} heads")
    v.need(width <= v.width(x) // heads, f"width {width} exceeds the input's heads of {v.width(x) // heads}")
    v.need(v.width(out) == heads * width, f"output width {v.width(out)} is not {heads} x {width}")


DEFS = (
    OpDef(
        kind="head_matmul",
        schema=OpSchema(
            1,
            1,
            (1, 1),
            ("heads",),
            optional=(("stride", 0),),
            doc="a matmul per head (deepseek2's attn_k_b and attn_v_b): x[T, heads * stride] (stride 0: K), head h "
            "reading the K columns from h * stride, weight [heads, N, K] in its stored format -> out[T, heads * "
            "N], segment h = x_h @ weight[h]^T",
        ),
        check=_head_matmul,
        reference="op_head_matmul",
        cpu=CpuPart(("cpu_mla.c.j2",), lower="_head_matmul", attrs=("stride",)),
        gpu=GpuPart(
            ("gpu_head_matmul.hip.j2",),
            lower="_head_matmul",
            args=(("out", PTR), ("x", PTR), ("weight", PTR), ("n_rows", I32)),
            weights=("weight",),
        ),
    ),
    OpDef(
        kind="concat_heads",
        schema=OpSchema(
            2,
            1,
            (0, 0),
            ("heads",),
            doc="a[T, heads * A], b[T, heads * B] -> out[T, heads * (A + B)], head h = [a_h, b_h] (deepseek2's query "
            "and key: the latent part, then the rope part)",
        ),
        check=_concat_heads,
        reference="op_concat_heads",
        cpu=CpuPart(("cpu_mla.c.j2",), lower="_concat_heads"),
        gpu=GpuPart(
            ("gpu_concat_heads.hip.j2",),
            lower="_concat_heads",
            args=(("out", PTR), ("a", PTR), ("b", PTR), ("n_rows", I32)),
        ),
    ),
    OpDef(
        kind="slice_heads",
        schema=OpSchema(
            1,
            1,
            (0, 0),
            ("heads", "width"),
            doc="x[T, heads * S] -> out[T, heads * width], head h = the first `width` values of x's head h (attention "
            "whose values are narrower than its keys: minicpm3, mimo2; the values are zero-padded to the key's head "
            "size in the KV cache, and the output's padding is dropped here before attn_output)",
        ),
        check=_slice_heads,
        reference="op_slice_heads",
        cpu=CpuPart(("cpu_mla.c.j2",), lower="_slice_heads"),
        gpu=GpuPart(
            ("gpu_slice_heads.hip.j2",),
            lower="_slice_heads",
            args=(("out", PTR), ("x", PTR), ("n_rows", I32)),
        ),
    ),
)
