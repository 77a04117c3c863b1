"""Mixtures of experts (llama.cpp's build_moe_ffn): the router, the expert matmul, the weighted
combination of the chosen experts' outputs, and the per-expert or per-slot biases and scales
that some files carry.
"""

from rfc.artifacts.limits import MAX_EXPERTS
from rfc.artifacts.ops.descriptor import I32, PTR, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.view import OpView, bounded_int

MOE_GATINGS = ("softmax", "sigmoid", "softmax_weight")  # moe_route's `gating`
MOE_PICKS = ("top", "index")  # moe_route's `pick`: the top scores, or the expert a number names


def _moe_route(v: OpView) -> None:
    (logits,), (ids, weights) = v.op.inputs, v.op.outputs
    v.float_rows(logits, weights)
    v.i32_rows(ids)
    n_expert = v.width(logits)
    v.need(v.rows(logits) == "T" and n_expert <= MAX_EXPERTS, f"logits are not [T, n_expert <= {MAX_EXPERTS}]")
    k = v.int_attr("n_used", 1, n_expert)
    v.need(v.shape(ids) == ("T", k) == v.shape(weights), f"ids/weights are not [T, {k}]")
    v.choice_attr("gating", MOE_GATINGS)
    v.need(isinstance(v.op.attr("norm"), bool), f"attribute norm = {str(v.op.attr('norm'))[:20]!r} is not a boolean")
    v.real_attr("scale", 0.0, 1e6, open_lo=True)
    groups = v.int_attr("groups", 1, n_expert)
    used = v.int_attr("groups_used", 1, groups)
    if groups > 1:  # each group scored by its two best experts; enough experts left to choose from
        v.need(
            n_expert % groups == 0 and n_expert // groups >= 2,
            f"{n_expert} experts are not {groups} groups of 2 or more",
        )
        v.need(k <= used * (n_expert // groups), f"{used} of {groups} groups hold fewer than n_used = {k} experts")
    if v.choice_attr("pick", MOE_PICKS) == "index":
        v.need(k == 1 and not v.op.weights, "pick 'index' chooses one expert and takes no weights")
    div = v.int_attr("id_div", 1, n_expert)  # grovemoe: ids / d address n_expert / d adjugate experts
    v.need(n_expert % div == 0, f"{n_expert} experts are not groups of id_div = {div}")
    scaled = v.op.attr("expert_scale")
    v.need(not (scaled and div > 1), "expert_scale with id_div: no router has both")
    v.need(isinstance(scaled, bool), f"attribute expert_scale = {str(scaled)[:20]!r} is not a boolean")
    v.need(not scaled or bool(v.op.weights), "expert_scale without its weight [n_expert]")
    v.need(len(v.op.weights) <= int(scaled) + 1, "more weights than a selection bias and an expert scale")
    for j in range(len(v.op.weights)):  # the selection bias, then the experts' output scales (expert_scale)
        w = v.weight_shape(j)
        v.need(w is None or w == (n_expert,), f"selection bias or expert scale {w} is not [{n_expert}]")


def _routed(v: OpView, ids: str) -> tuple[int, int]:
    """(n_expert, n_used) of the expert ids an op reads: i32 rows the moe_route op last writing
    `ids` before this one wrote (expert ids come from a router, so they index the experts the
    router scored: n_expert is its logits' width, divided by its id_div); anything else is refused."""
    v.i32_rows(ids)
    writer = next((op for op in reversed(v.plan.ops[: v.index]) if ids in op.outputs), None)
    v.need(writer is not None and writer.kind == "moe_route", f"{ids} is not written by a moe_route op before it")
    div = writer.attr("id_div")
    v.need(bounded_int(div, 1, MAX_EXPERTS), f"{ids}'s router has id_div {str(div)[:20]!r}")
    return v.width(writer.inputs[0]) // div, v.width(ids)


def _moe_matmul(v: OpView) -> None:
    (x, ids), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(x != out, "a moe_matmul cannot write its own input")
    n_expert, k = _routed(v, ids)
    v.need(v.rows(x) == v.rows(ids) == v.rows(out) == "T", "buffers are not [T, width]")
    v.need(v.width(out) % k == 0, f"output width {v.width(out)} is not {k} segments")
    n = v.width(out) // k
    w = v.weight_shape(0)
    if w is not None:
        v.need(len(w) == 3 and w[0] == n_expert and w[1] == n, f"weight {w} is not [{n_expert}, {n}, K]")
        v.need(v.width(x) in (w[2], k * w[2]), f"input width {v.width(x)} is neither K = {w[2]} nor {k} x K")


def _moe_combine(v: OpView) -> None:
    (y, weights), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(y, weights, out)
    k = v.width(weights)
    v.need(v.rows(y) == v.rows(weights) == v.rows(out), "buffers differ in rows")
    v.need(v.width(y) == k * v.width(out), f"input width {v.width(y)} is not {k} x {v.width(out)}")


def _routed_segments(v: OpView) -> tuple[str, int, int]:
    """y[T, k*N] and ids i32[T, k] -> out like y (moe_scale, moe_add_bias): y, n_expert, k."""
    (y, ids), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(y, out)
    n_expert, k = _routed(v, ids)
    v.need(v.shape(y) == v.shape(out) and v.rows(y) == v.rows(ids) == "T", "buffers are not [T, width] alike")
    v.need(v.width(y) % k == 0, f"width {v.width(y)} is not {k} segments")
    return y, n_expert, k


def _moe_scale(v: OpView) -> None:
    _y, n_expert, _k = _routed_segments(v)
    w = v.weight_shape(0)
    v.need(w is None or w == (n_expert,), f"expert scale {w} is not [{n_expert}]")


def _slot_scale(v: OpView) -> None:
    (y, weights), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(y, weights, out)
    k = v.width(weights)
    v.need(v.shape(y) == v.shape(out) and v.rows(y) == v.rows(weights), "buffers are not [rows, width] alike")
    v.need(v.width(y) % k == 0, f"width {v.width(y)} is not {k} segments")


def _moe_add_bias(v: OpView) -> None:
    y, n_expert, k = _routed_segments(v)
    w = v.weight_shape(0)
    v.need(w is None or w == (n_expert, v.width(y) // k), f"bias {w} is not [{n_expert}, {v.width(y) // k}]")


DEFS = (
    OpDef(
        kind="moe_route",
        schema=OpSchema(
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
                ("id_div", 1),
                ("pick", "top"),
            ),
            doc="router of a mixture of experts: logits[T, n_expert] -> ids i32[T, n_used], weights[T, n_used] "
            "(llama.cpp's build_moe_ffn). Scores p = softmax(logits) (gating 'softmax'), sigmoid(logits) "
            "('sigmoid') or the logits ('softmax_weight'); the experts are chosen by s = p + bias (the optional "
            "weight [n_expert]: it chooses, it does not weigh). With groups > 1 the experts form `groups` "
            "consecutive equal groups, each scored by the sum of its two largest s, and only the `groups_used` "
            "best groups' experts take part (equal scores: the lower group). ids = the n_used largest s, largest "
            "first (equal: lower index first); weights = p[ids] ('softmax_weight': softmax over the chosen "
            "logits), with norm divided by max(sum, 2^-14), then times scale; with expert_scale, each times its "
            "expert's factor: the last weight [n_expert] (gemma4's ffn_down_exps.scale, which llama.cpp applies "
            "to the expert's output). With id_div d > 1 (grovemoe's adjugate experts, n_expert / d of them) each "
            "chosen id becomes trunc(id x float32(1 / d)) (llama.cpp's float scale and cast) and its weight p at "
            "that id, before norm and scale. With pick 'index' (graniteswitch's in-graph adapter index) n_used is 1 "
            "and the one expert is the first logit rounded half away from zero (roundf) and clamped to [0, "
            "n_expert - 1], its weight 1: the other attributes are unused",
        ),
        check=_moe_route,
        reference="op_moe_route",
        cpu=CpuPart(
            ("cpu_moe.c.j2",),
            lower="_moe_route",
            attrs=("gating", "norm", "scale", "groups", "groups_used", "expert_scale", "id_div", "pick"),
            vectors_from=0,
        ),
        gpu=GpuPart(
            ("gpu_moe_route.hip.j2", "gpu_moe_route_index.hip.j2"),
            lower="_moe_route",
            args=(
                ("ids", PTR),
                ("weights", PTR),
                ("logits", PTR),
                ("bias", PTR),
                ("escale", PTR),
                ("n_rows", I32),
            ),
            outputs=("ids", "weights"),
            weights=("bias", "escale"),
        ),
    ),
    OpDef(
        kind="moe_matmul",
        schema=OpSchema(
            2,
            1,
            (1, 1),
            doc="expert matmul: x[T, K] (every slot reads its token's row) or x[T, n_used*K] (slot j reads segment "
            "j), ids i32[T, n_used] -> out[T, n_used*N], segment j = x @ weight[ids[t, j]]^T; weight [n_expert, "
            "N, K] in its stored format. Kernels group the slots by expert",
        ),
        check=_moe_matmul,
        reference="op_moe_matmul",
        cpu=CpuPart(("cpu_moe_matmul.c.j2",), lower="_moe_matmul"),
        gpu=GpuPart(
            ("gpu_moe_matmul.hip.j2", "gpu_moe_matmul_float.hip.j2"),
            lower="_moe_matmul",
            args=(("out", PTR), ("x", PTR), ("ids", PTR), ("weight", PTR), ("n_rows", I32)),
            weights=("weight",),
        ),
    ),
    OpDef(
        kind="moe_combine",
        schema=OpSchema(
            2,
            1,
            (0, 0),
            doc="y[T, n_used*N], weights[T, n_used] -> out[T, N] = sum_j weights[t, j] * y[t, segment j]",
        ),
        check=_moe_combine,
        reference="op_moe_combine",
        cpu=CpuPart(("cpu_moe.c.j2",), lower="_moe_combine"),
        gpu=GpuPart(
            ("gpu_moe_combine.hip.j2",),
            lower="_moe_combine",
            args=(("out", PTR), ("y", PTR), ("weights", PTR), ("n_rows", I32)),
        ),
    ),
    OpDef(
        kind="moe_add_bias",
        schema=OpSchema(
            2,
            1,
            (1, 1),
            doc="per-expert bias (llama.cpp's ggml_add_id; gpt-oss): y[T, n_used*N], ids i32[T, n_used] -> out = y "
            "with segment j += bias[ids[t, j]], bias [n_expert, N]",
        ),
        check=_moe_add_bias,
        reference="op_moe_add_bias",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_moe_add_bias"),
        gpu=GpuPart(
            ("gpu_moe_add_bias.hip.j2",),
            lower="_moe_add_bias",
            args=(("out", PTR), ("y", PTR), ("ids", PTR), ("bias", PTR), ("n_rows", I32)),
            weights=("bias",),
        ),
    ),
    OpDef(
        kind="moe_scale",
        schema=OpSchema(
            2,
            1,
            (1, 1),
            doc="per-expert output scale (llama.cpp's build_lora_mm_id with a weight scale: ffn_gate_exps.scale, "
            "ffn_up_exps.scale): y[T, n_used*N], ids i32[T, n_used] -> out = y with segment j times scale[ids[t, "
            "j]], scale [n_expert]",
        ),
        check=_moe_scale,
        reference="op_moe_scale",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_moe_scale", vectors_from=0),
        gpu=GpuPart(
            ("gpu_moe_scale.hip.j2",),
            lower="_moe_scale",
            args=(("out", PTR), ("y", PTR), ("ids", PTR), ("scale", PTR), ("n_rows", I32)),
            weights=("scale",),
        ),
    ),
    OpDef(
        kind="slot_scale",
        schema=OpSchema(
            2,
            1,
            (0, 0),
            doc="per-slot weight of a mixture of experts (llama4's weighted expert input with more than one expert "
            "per token): y[T, n_used*N], weights[T, n_used] -> out = y with segment j times weights[t, j]",
        ),
        check=_slot_scale,
        reference="op_slot_scale",
        cpu=CpuPart(("cpu_elementwise.c.j2",), lower="_slot_scale"),
        gpu=GpuPart(
            ("gpu_slot_scale.hip.j2",),
            lower="_slot_scale",
            args=(("out", PTR), ("y", PTR), ("w", PTR), ("n_rows", I32)),
        ),
    ),
)
