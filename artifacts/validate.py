"""Checks a bundle's plan and weight layout against each other and the format table, before
any kernel runs (docs/design.md, trust model: a bundle is trusted exactly as far as its hashes,
and hashes say nothing about whether the numbers inside make sense).

A bundle that passes cannot make a kernel read outside a weight or a buffer: every weight's
bytes are its shape times its format and lie inside weights.bin, every op's buffers and
weights have the widths the op needs, and every size is bounded so that no allocation is
absurd. Each op kind has one shape rule here; a kind without a rule is refused.
"""

import math
from collections.abc import Callable

from rfc.artifacts.errors import BundleError
from rfc.artifacts.formats import FormatError, tensor_nbytes, weight_format
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.limits import (
    MAX_ALTUP,
    MAX_CONTEXT,
    MAX_CONV_KERNEL,
    MAX_DELTA_STATE,
    MAX_EXPERTS,
    MAX_HEAD_DIM,
    MAX_HEADS,
)
from rfc.artifacts.limits import MAX_LAYERS, MAX_SSM_STATE
from rfc.artifacts.plan import DTYPES, GLU_ACTIVATIONS, MAX_BUFFERS, MOE_GATINGS, OPS, ROPE_STYLES, SYMBOLS, Op, Plan
from rfc.artifacts.plan import MAX_STATE_DIMS, MAX_STATE_ELEMENTS, MAX_STATE_TENSORS

MAX_WIDTH = 1 << 24  # elements in one activation row (a vocabulary of 16M would still fit)
MAX_TOKEN_BYTES = 1 << 30  # activation bytes per token or row, all buffers together


class PlanError(BundleError):
    """The plan is inconsistent with itself, the op contract or the weight layout."""


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise PlanError(message)


def _bounded_int(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _finite(value: object, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    v = float(value)
    return math.isfinite(v) and lo <= v <= hi and not (open_lo and v == lo)


# -- the plan alone ------------------------------------------------------------------------


def check_plan(plan: Plan) -> None:
    _need(_bounded_int(plan.n_embd, 1, MAX_WIDTH), f"plan n_embd {plan.n_embd!r} is out of range")
    _need(_bounded_int(plan.vocab_size, 1, MAX_WIDTH), f"plan vocab_size {plan.vocab_size!r} is out of range")
    _need(
        _bounded_int(plan.context_length, 1, MAX_CONTEXT),
        f"plan context_length {plan.context_length!r} is not in [1, {MAX_CONTEXT}]",
    )
    kv = plan.kv
    _need(kv.dtype in ("f16", "f32"), f"plan KV cache dtype {kv.dtype!r} is not f16 or f32")
    _need(_bounded_int(kv.n_layers, 1, MAX_LAYERS), f"plan KV n_layers {kv.n_layers!r} is out of range")
    _need(_bounded_int(kv.n_kv_heads, 1, MAX_HEADS), f"plan KV n_kv_heads {kv.n_kv_heads!r} is out of range")
    _need(_bounded_int(kv.head_dim, 1, MAX_HEAD_DIM), f"plan KV head_dim {kv.head_dim!r} is out of range")
    check_state(plan)
    _need(len(plan.buffers) <= MAX_BUFFERS, "plan has too many buffers")
    buffers = {}
    per_row_bytes = 0
    for b in plan.buffers:
        _need(b.name not in buffers, f"plan buffer {b.name!r} is declared twice")
        _need(b.dtype in DTYPES, f"plan buffer {b.name!r} has dtype {b.dtype!r}")
        _need(
            1 <= len(b.shape) <= 2 and b.shape[0] in SYMBOLS,
            f"plan buffer {b.name!r} has shape {list(b.shape)}, not [T|R] or [T|R, width]",
        )
        _need(
            all(_bounded_int(d, 1, MAX_WIDTH) for d in b.shape[1:]), f"plan buffer {b.name!r} has a width out of range"
        )
        buffers[b.name] = b
        per_row_bytes += 4 * (b.shape[1] if len(b.shape) == 2 else 1)
    _need(per_row_bytes <= MAX_TOKEN_BYTES, "plan buffers need too much memory per token")
    _need(_is(buffers, plan.input_tokens, ("T",), "i32"), f"plan input {plan.input_tokens!r} is not an i32 [T] buffer")
    _need(
        _is(buffers, plan.output_logits, ("R", plan.vocab_size)),
        f"plan output {plan.output_logits!r} is not [R, vocab_size]",
    )
    _need(
        _is(buffers, plan.output_hidden, ("R", plan.n_embd)), f"plan output {plan.output_hidden!r} is not [R, n_embd]"
    )
    for i, op in enumerate(plan.ops):
        check_op(plan, buffers, i, op)


def check_state(plan: Plan) -> None:
    """The per-sequence state: bounded counts and sizes, so a slot's size is sane before a pool is sized."""
    tensors = plan.state.tensors
    _need(
        len(tensors) <= MAX_STATE_TENSORS, f"plan declares {len(tensors)} state tensors, more than {MAX_STATE_TENSORS}"
    )
    total = 0
    for i, t in enumerate(tensors):
        _need(_bounded_int(t.layer, 0, MAX_LAYERS - 1), f"plan state tensor {i} has layer {t.layer!r} out of range")
        _need(
            1 <= len(t.shape) <= MAX_STATE_DIMS and all(_bounded_int(d, 1, MAX_STATE_ELEMENTS) for d in t.shape),
            f"plan state tensor {i} has shape {list(t.shape)[:4]}, not 1 to {MAX_STATE_DIMS} positive dims",
        )
        total += t.elements
        _need(total <= MAX_STATE_ELEMENTS, f"plan state needs more than {MAX_STATE_ELEMENTS} floats per sequence")


def _is(buffers: dict, name: str, shape: tuple, dtype: str = "f32") -> bool:
    b = buffers.get(name)
    return b is not None and tuple(b.shape) == shape and b.dtype == dtype


def check_op(plan: Plan, buffers: dict, i: int, op: Op) -> None:
    schema = OPS.get(op.kind) if isinstance(op.kind, str) else None
    where = f"plan op {i} ({str(op.kind)[:32]})"
    _need(schema is not None, f"{where} is not an op this runtime knows")
    _need(
        len(op.inputs) == schema.inputs and len(op.outputs) == schema.outputs,
        f"{where} has the wrong number of buffers",
    )
    lo, hi = schema.weights
    _need(lo <= len(op.weights) <= hi, f"{where} has {len(op.weights)} weights, expects {lo}..{hi}")
    missing = [a for a in schema.attrs if a not in op.attrs]
    _need(not missing, f"{where} lacks attributes {missing}")
    known = set(schema.attrs) | {name for name, _ in schema.optional}
    unknown = [str(a)[:32] for a in op.attrs if a not in known]
    _need(not unknown, f"{where} has unknown attributes {unknown}")
    for b in (*op.inputs, *op.outputs):
        _need(b in buffers, f"{where} names unknown buffer {b[:64]!r}")
    RULES[op.kind](_OpView(plan, buffers, op, where, None, i))


# -- the plan against the layout -------------------------------------------------------------


def check_layout(layout: WeightLayout, file_size: int) -> None:
    """Every tensor's bytes are its shape times its format and lie inside weights.bin."""
    _need(_bounded_int(layout.alignment, 1, 1 << 20), f"layout alignment {layout.alignment!r} is out of range")
    names = set()
    spans = []
    for t in layout.tensors:
        _need(
            isinstance(t.name, str) and t.name not in names,
            f"layout tensor {str(t.name)[:64]!r} is listed twice or unnamed",
        )
        names.add(t.name)
        try:
            nbytes = tensor_nbytes(weight_format(t.format), tuple(t.shape))
        except FormatError as e:
            raise PlanError(f"layout tensor {t.name[:64]}: {e}") from None
        _need(
            t.nbytes == nbytes,
            f"layout tensor {t.name[:64]}: {t.nbytes!r} bytes, but shape {list(t.shape)} in {t.format} is {nbytes}",
        )
        _need(_bounded_int(t.offset, 0, file_size) and t.offset % layout.alignment == 0,
              f"layout tensor {t.name[:64]}: offset {t.offset!r} is not an aligned offset inside "
              f"weights.bin")  # fmt: skip
        _need(
            t.offset + t.nbytes <= file_size,
            f"layout tensor {t.name[:64]} ends past the end of weights.bin ({file_size} bytes)",
        )
        spans.append((t.offset, t.offset + t.nbytes, t.name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        _need(start >= end, f"layout tensors {a[:64]} and {b[:64]} overlap")


def check_plan_weights(plan: Plan, layout: WeightLayout) -> None:
    """Every op's weights exist with the shapes the op's buffers need."""
    entries = layout.by_name()
    buffers = {b.name: b for b in plan.buffers}
    for i, op in enumerate(plan.ops):
        where = f"plan op {i} ({op.kind} of {', '.join(w[:64] for w in op.weights) or 'no weights'})"
        for w in op.weights:
            _need(w in entries, f"{where} reads weight {w[:64]!r}, which the layout does not have")
        RULES[op.kind](_OpView(plan, buffers, op, where, entries, i))


def check_weight_map(weights: dict, plan: Plan, layout: WeightLayout, where: str) -> None:
    """A step program's weight map (StepProgram.weights): every key a weight the plan reads,
    every value a layout entry of the same shape (a variant of it in another format)."""
    entries = layout.by_name()
    read = {w for op in plan.ops for w in op.weights}
    for name, entry in weights.items():
        _need(name in read, f"{where}: weight map names {str(name)[:64]!r}, which no plan op reads")
        _need(
            entry in entries, f"{where}: weight {name[:64]} maps to {str(entry)[:64]!r}, which the layout does not have"
        )
        _need(
            tuple(entries[entry].shape) == tuple(entries[name].shape),
            f"{where}: weight {name[:64]} maps to {entry[:64]}, of another shape",
        )


# -- shape rules, one per op kind ---------------------------------------------------------------


class _OpView:
    """One op with its buffers' shapes and, when checking against a layout, its weights'."""

    def __init__(
        self, plan: Plan, buffers: dict, op: Op, where: str, entries: dict[str, TensorEntry] | None, index: int
    ):
        self.plan, self.buffers, self.op, self.where = plan, buffers, op, where
        self.entries, self.index = entries, index

    def need(self, cond: bool, message: str) -> None:
        _need(cond, f"{self.where}: {message}")

    def shape(self, name: str) -> tuple:
        return tuple(self.buffers[name].shape)

    def rows(self, name: str) -> str:
        return self.shape(name)[0]

    def width(self, name: str) -> int:
        s = self.shape(name)
        return s[1] if len(s) == 2 else 1

    def float_rows(self, *names: str) -> None:
        for n in names:
            self.need(
                self.buffers[n].dtype == "f32" and len(self.shape(n)) == 2, f"{n} is not a float [rows, width] buffer"
            )

    def weight_shape(self, index: int) -> tuple[int, ...] | None:
        """The shape of the op's index-th weight; None when checking the plan alone."""
        if self.entries is None:
            return None
        return tuple(self.entries[self.op.weights[index]].shape)

    def int_attr(self, name: str, lo: int, hi: int) -> int:
        v = self.op.attr(name)
        self.need(_bounded_int(v, lo, hi), f"attribute {name} = {v!r} is not an integer in [{lo}, {hi}]")
        return v

    def real_attr(self, name: str, lo: float, hi: float, open_lo: bool = False) -> float:
        v = self.op.attr(name)
        self.need(
            _finite(v, lo, hi, open_lo),
            f"attribute {name} = {v!r} is not a finite number in {'(' if open_lo else '['}{lo}, {hi}]",
        )
        return float(v)

    def choice_attr(self, name: str, choices: tuple[str, ...]) -> str:
        v = self.op.attr(name)
        self.need(
            isinstance(v, str) and v in choices,
            f"attribute {name} = {str(v)[:20]!r} is not one of {', '.join(choices)}",
        )
        return v

    def i32_rows(self, name: str) -> None:
        self.need(
            self.buffers[name].dtype == "i32" and len(self.shape(name)) == 2,
            f"{name} is not an i32 [rows, width] buffer",
        )


def _embed(v: _OpView) -> None:
    (tokens,), (out,) = v.op.inputs, v.op.outputs
    v.need(v.buffers[tokens].dtype == "i32" and v.shape(tokens) == ("T",), "tokens are not an i32 [T] buffer")
    v.float_rows(out)
    v.need(v.rows(out) == "T", "output is not [T, width]")
    column, width = v.int_attr("column", 0, 1 << 40), v.width(out)
    w = v.weight_shape(0)
    v.need(
        w is None or (len(w) == 2 and w[0] == v.plan.vocab_size and column + width <= w[1]),
        f"table {w} has no columns {column}..{column + width} of vocab_size rows",
    )
    if w is not None and w[1] != width:  # a slice of each row (Gemma 4's per-layer table): whole blocks
        block = weight_format(v.entries[v.op.weights[0]].format).block_elems
        v.need(
            column % block == 0 and width % block == 0,
            f"columns {column}..{column + width} are not whole {block}-value blocks",
        )
    v.real_attr("scale", 0.0, 1e6, open_lo=True)


def _rmsnorm(v: _OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.shape(x) == v.shape(out), "input and output shapes differ")
    v.real_attr("eps", 0.0, 1.0, open_lo=True)
    heads = v.int_attr("heads", 1, v.width(x))
    v.need(v.width(x) % heads == 0, f"a row of {v.width(x)} is not {heads} equal segments")
    w = v.weight_shape(0) if v.op.weights else None  # no weight: the norm alone (gemma4's V)
    per_seg = heads > 1 and w == (v.width(x),)  # a weight per segment (Mamba2's grouped norm)
    v.need(w is None or w == (v.width(x) // heads,) or per_seg, f"weight {w} is not [{v.width(x) // heads}]")


def _matmul(v: _OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.rows(x) == v.rows(out), "input and output rows differ")
    w = v.weight_shape(0)
    v.need(w is None or w == (v.width(out), v.width(x)), f"weight {w} is not [{v.width(out)}, {v.width(x)}]")


def _add_bias(v: _OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.shape(x) == v.shape(out), "input and output shapes differ")
    w = v.weight_shape(0)
    v.need(w is None or w == (v.width(x),), f"bias {w} is not [{v.width(x)}]")


def _rope(v: _OpView) -> None:
    q, k = v.op.inputs
    v.need(tuple(v.op.outputs) == (q, k), "rope works in place: outputs must be its inputs")
    v.float_rows(q, k)
    nh = v.int_attr("n_heads", 1, MAX_HEADS)
    nkv = v.int_attr("n_kv_heads", 1, MAX_HEADS)
    hd = v.int_attr("head_dim", 1, MAX_HEAD_DIM)
    n_rot = v.int_attr("n_rot", 2, hd)
    v.need(n_rot % 2 == 0, "n_rot is odd")
    v.choice_attr("style", ROPE_STYLES)
    v.real_attr("freq_base", 0.0, 1e12, open_lo=True)
    v.real_attr("freq_scale", 0.0, 1e6, open_lo=True)
    v.real_attr("attn_factor", 0.0, 1e6, open_lo=True)
    if v.real_attr("ext_factor", 0.0, 1e3):  # YaRN: the ramp's parameters (rope_inv_freq)
        v.real_attr("freq_base", 1.0, 1e12, open_lo=True)
        v.real_attr("beta_fast", 0.0, 1e6, open_lo=True)
        v.real_attr("beta_slow", 0.0, 1e6, open_lo=True)
        v.int_attr("orig_ctx", 1, MAX_CONTEXT)
    if v.real_attr("temp_scale", -1e3, 1e3):  # q times 1 + temp_scale ln(floor(pos / temp_floor) + 1)
        v.int_attr("temp_floor", 1, MAX_CONTEXT)
        v.need(n_rot == hd, "rope temp_scale needs n_rot == head_dim (the whole q row is scaled with its pairs)")
    v.need(v.shape(q) == ("T", nh * hd) and v.shape(k) == ("T", nkv * hd), "q/k widths disagree with the head counts")
    if v.op.weights:
        w = v.weight_shape(0)
        v.need(w is None or w == (n_rot // 2,), f"frequency factors {w} are not [{n_rot // 2}]")


def _layer(v: _OpView) -> None:
    v.int_attr("layer", 0, v.plan.kv.n_layers - 1)


def _kv_write(v: _OpView) -> None:
    """k and v alike, [T, width] with width at most the KV cache row (a layer narrower than the
    widest writes the first `width` values of its rows: KVSpec)."""
    _layer(v)
    row = v.plan.kv.row
    k, val = v.op.inputs
    v.float_rows(k, val)
    v.need(v.shape(k) == v.shape(val), "k and v differ in shape")
    v.need(v.shape(k)[0] == "T" and 1 <= v.shape(k)[1] <= row, f"{k} is not [T, <= {row}] (the KV cache row)")


def _attention(v: _OpView) -> None:
    _layer(v)
    (q,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(q, out)
    nh = v.int_attr("n_heads", 1, MAX_HEADS)
    nkv = v.int_attr("n_kv_heads", 1, MAX_HEADS)
    hd = v.int_attr("head_dim", 1, MAX_HEAD_DIM)
    v.need(nkv * hd <= v.plan.kv.row, "kv heads x head_dim exceed the KV cache row")
    v.need(nh % nkv == 0, "n_heads is not a multiple of n_kv_heads")
    # the rows it reads are those its layer's kv_write wrote: the same kv heads x head_dim
    layer = v.op.attr("layer")
    writer = next(
        (op for op in reversed(v.plan.ops[: v.index]) if op.kind == "kv_write" and op.attr("layer") == layer), None
    )
    v.need(writer is not None, f"no kv_write of layer {layer} before it")
    v.need(
        v.shape(writer.inputs[0])[1] == nkv * hd,
        f"head sizes disagree with the KV rows layer {layer} writes ({nkv} x {hd} != {v.shape(writer.inputs[0])[1]})",
    )
    # a layer that reads another layer's cache (Gemma 4's shared KV) masks as its first reader does: a
    # sliding-window cache's old rows may be gone, a global reader of it would miss them
    first = next(op for op in v.plan.ops[: v.index + 1] if op.kind == "attention" and op.attr("layer") == layer)
    v.need(
        first is v.op
        or (first.attr("n_kv_heads"), first.attr("head_dim"), first.attr("window")) == (nkv, hd, v.op.attr("window")),
        f"it reads layer {layer}'s cache with another window or head geometry",
    )
    v.real_attr("scale", 0.0, 1e6, open_lo=True)
    if v.op.attr("window") is not None:
        v.int_attr("window", 1, MAX_CONTEXT)
    if v.op.attr("softcap") is not None:
        v.real_attr("softcap", 0.0, 1e6, open_lo=True)
    v.need(v.shape(q) == ("T", nh * hd) == v.shape(out), "q/output are not [T, n_heads * head_dim]")
    if v.op.weights:
        w = v.weight_shape(0)
        v.need(w is None or w == (nh,), f"attention sinks {w} are not [{nh}] (one per query head)")


def _same_shape(v: _OpView) -> None:
    names = (*v.op.inputs, *v.op.outputs)
    v.float_rows(*names)
    v.need(len({v.shape(n) for n in names}) == 1, "buffers differ in shape")


def _swiglu(v: _OpView) -> None:
    activation = v.choice_attr("activation", GLU_ACTIVATIONS)
    g, u = v.op.inputs
    if activation == "sigmoid" and v.shape(g) != v.shape(u):  # one gate per row (qwen35moe's shared expert)
        v.float_rows(g, u, *v.op.outputs)
        v.need(v.shape(g) == (v.rows(u), 1), f"gate {g} is neither {u}'s shape nor one column of its rows")
        v.need(v.shape(v.op.outputs[0]) == v.shape(u), "output and up differ in shape")
        return
    _same_shape(v)
    if activation == "swiglu_oai":
        v.real_attr("alpha", 0.0, 1e6, open_lo=True)
        v.real_attr("limit", 0.0, 1e6, open_lo=True)


def _scale(v: _OpView) -> None:
    _same_shape(v)
    # a learned scalar may be negative (gemma4's layer_output_scale, a weight's .scale): any
    # finite nonzero float32 of magnitude in [1e-30, 1e6]
    factor = v.real_attr("factor", -1e6, 1e6)
    v.need(abs(factor) >= 1e-30, f"attribute factor = {factor!r} is zero or too small for a float32 literal")


def _xielu(v: _OpView) -> None:
    _same_shape(v)
    # learned per-layer constants: any finite value a float32 holds comfortably (eps is a tiny negative)
    for name in ("alpha_n", "alpha_p", "beta", "eps"):
        v.real_attr(name, -1e6, 1e6)


def _softcap(v: _OpView) -> None:
    _same_shape(v)
    v.real_attr("cap", 0.0, 1e6, open_lo=True)


def _moe_route(v: _OpView) -> None:
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
    scaled = v.op.attr("expert_scale")
    v.need(isinstance(scaled, bool), f"attribute expert_scale = {str(scaled)[:20]!r} is not a boolean")
    v.need(not scaled or bool(v.op.weights), "expert_scale without its weight [n_expert]")
    v.need(len(v.op.weights) <= int(scaled) + 1, "more weights than a selection bias and an expert scale")
    for j in range(len(v.op.weights)):  # the selection bias, then the experts' output scales (expert_scale)
        w = v.weight_shape(j)
        v.need(w is None or w == (n_expert,), f"selection bias or expert scale {w} is not [{n_expert}]")


def _routed(v: _OpView, ids: str) -> tuple[int, int]:
    """(n_expert, n_used) of the expert ids an op reads: i32 rows the moe_route op last writing
    `ids` before this one wrote (expert ids come from a router, so they index the experts the
    router scored: n_expert is its logits' width); anything else is refused."""
    v.i32_rows(ids)
    writer = next((op for op in reversed(v.plan.ops[: v.index]) if ids in op.outputs), None)
    v.need(writer is not None and writer.kind == "moe_route", f"{ids} is not written by a moe_route op before it")
    return v.width(writer.inputs[0]), v.width(ids)


def _moe_matmul(v: _OpView) -> None:
    (x, ids), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    n_expert, k = _routed(v, ids)
    v.need(v.rows(x) == v.rows(ids) == v.rows(out) == "T", "buffers are not [T, width]")
    v.need(v.width(out) % k == 0, f"output width {v.width(out)} is not {k} segments")
    n = v.width(out) // k
    w = v.weight_shape(0)
    if w is not None:
        v.need(len(w) == 3 and w[0] == n_expert and w[1] == n, f"weight {w} is not [{n_expert}, {n}, K]")
        v.need(v.width(x) in (w[2], k * w[2]), f"input width {v.width(x)} is neither K = {w[2]} nor {k} x K")


def _moe_combine(v: _OpView) -> None:
    (y, weights), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(y, weights, out)
    k = v.width(weights)
    v.need(v.rows(y) == v.rows(weights) == v.rows(out), "buffers differ in rows")
    v.need(v.width(y) == k * v.width(out), f"input width {v.width(y)} is not {k} x {v.width(out)}")


def _routed_segments(v: _OpView) -> tuple[str, int, int]:
    """y[T, k*N] and ids i32[T, k] -> out like y (moe_scale, moe_add_bias): y, n_expert, k."""
    (y, ids), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(y, out)
    n_expert, k = _routed(v, ids)
    v.need(v.shape(y) == v.shape(out) and v.rows(y) == v.rows(ids) == "T", "buffers are not [T, width] alike")
    v.need(v.width(y) % k == 0, f"width {v.width(y)} is not {k} segments")
    return y, n_expert, k


def _moe_scale(v: _OpView) -> None:
    _y, n_expert, _k = _routed_segments(v)
    w = v.weight_shape(0)
    v.need(w is None or w == (n_expert,), f"expert scale {w} is not [{n_expert}]")


def _slot_scale(v: _OpView) -> None:
    (y, weights), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(y, weights, out)
    k = v.width(weights)
    v.need(v.shape(y) == v.shape(out) and v.rows(y) == v.rows(weights), "buffers are not [rows, width] alike")
    v.need(v.width(y) % k == 0, f"width {v.width(y)} is not {k} segments")


def _moe_add_bias(v: _OpView) -> None:
    y, n_expert, k = _routed_segments(v)
    w = v.weight_shape(0)
    v.need(w is None or w == (n_expert, v.width(y) // k), f"bias {w} is not [{n_expert}, {v.width(y) // k}]")


def _head_matmul(v: _OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
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


def _concat_heads(v: _OpView) -> None:
    (a, b), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(a, b, out)
    heads = v.int_attr("heads", 1, MAX_HEADS)
    v.need(v.rows(a) == v.rows(b) == v.rows(out), "buffers differ in rows")
    v.need(v.width(a) % heads == 0 and v.width(b) % heads == 0, f"inputs are not {heads} heads")
    v.need(v.width(out) == v.width(a) + v.width(b), f"output width {v.width(out)} is not {v.width(a)} + {v.width(b)}")


def _gather_rows(v: _OpView) -> None:
    (x,), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(x, out)
    v.need(v.rows(x) == "T" and v.rows(out) == "R" and v.width(x) == v.width(out), "not [T, n] -> [R, n]")


def state_tensor(v: _OpView) -> tuple[int, ...]:
    """The shape of the StateTensor the op's `state` attribute names (every stateful op has one)."""
    tensors = v.plan.state.tensors
    index = v.op.attr("state")
    v.need(
        _bounded_int(index, 0, len(tensors) - 1),
        f"attribute state = {str(index)[:20]!r} names no state tensor of the plan",
    )
    return tensors[index].shape


def _short_conv(v: _OpView) -> None:
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


def _ssm_conv(v: _OpView) -> None:
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


def _gated_delta_net(v: _OpView) -> None:
    (qkv, alpha, beta), (out,) = v.op.inputs, v.op.outputs
    v.float_rows(qkv, alpha, beta, out)
    hk = v.int_attr("n_k_heads", 1, MAX_HEADS)
    hv = v.int_attr("n_v_heads", 1, MAX_HEADS)
    s = v.int_attr("head_dim", 1, MAX_DELTA_STATE)  # the state is S x S per head
    v.real_attr("eps", 0.0, 1.0)
    v.need(hv % hk == 0, "n_v_heads is not a multiple of n_k_heads")
    v.need(v.shape(qkv) == ("T", (2 * hk + hv) * s), f"qkv is not [T, {(2 * hk + hv) * s}]")
    v.need(v.shape(alpha) == ("T", hv) == v.shape(beta), f"alpha/beta are not [T, {hv}]")
    v.need(v.shape(out) == ("T", hv * s), f"output is not [T, {hv * s}]")
    v.need(tuple(state_tensor(v)) == (hv, s, s), f"state tensor {v.op.attr('state')} is not [{hv}, {s}, {s}]")
    for i in range(2):
        w = v.weight_shape(i)
        v.need(w is None or w == (hv,), f"gate weight {i} {w} is not [{hv}]")


def _ssm_scan(v: _OpView) -> None:
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
    for i in range(3):
        w = v.weight_shape(i)
        v.need(w is None or w == (h,), f"weight {i} {w} is not [{h}]")


# -- gemma3n's AltUp: n streams of width E side by side in a row (artifacts/plan.py) -------------------


def _altup(v: _OpView, hs: str) -> tuple[int, int]:
    """(n, E) of an AltUp op whose streams are `hs`, every buffer a float row of T tokens."""
    names = (*v.op.inputs, *v.op.outputs)
    v.float_rows(*names)
    v.need(all(v.rows(b) == "T" for b in names), "buffers are not [T, width]")
    n = v.int_attr("n_altup", 2, MAX_ALTUP)
    v.need(v.width(hs) % n == 0, f"{hs} width {v.width(hs)} is not {n} streams")
    return n, v.width(hs) // n


def _altup_stack(v: _OpView) -> None:
    (x, y), (out,) = v.op.inputs, v.op.outputs
    n, e = _altup(v, out)
    v.need(v.width(x) == e and v.width(y) == (n - 1) * e, f"inputs are not [T, {e}] and [T, {(n - 1) * e}]")


def _altup_predict(v: _OpView) -> None:
    (hs, coefs), (pred, act) = v.op.inputs, v.op.outputs
    n, e = _altup(v, hs)
    v.int_attr("active", 0, n - 1)
    v.need(pred != hs, "pred is hs: every stream reads all of them")
    v.need(
        v.width(coefs) == n * n and v.shape(pred) == v.shape(hs) and v.width(act) == e,
        f"not hs[T, {n * e}], coefs[T, {n * n}] -> [T, {n * e}], [T, {e}]",
    )


def _altup_correct(v: _OpView) -> None:
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


def _altup_add(v: _OpView) -> None:
    (hs, x), (out, sub) = v.op.inputs, v.op.outputs
    n, e = _altup(v, hs)
    first = v.int_attr("first", 0, n - 1)
    v.need(v.width(x) == e and v.shape(out) == v.shape(hs), f"not hs[T, {n * e}], x[T, {e}] -> [T, {n * e}], sub")
    v.need(
        v.width(sub) % e == 0 and first + v.width(sub) // e <= n,
        f"sub width {v.width(sub)} is not streams {first}.. of {n}",
    )
    v.need(sub not in (hs, out), "sub is hs or out")


def _altup_merge(v: _OpView) -> None:
    (hs, u), (out,) = v.op.inputs, v.op.outputs
    n, e = _altup(v, hs)
    v.int_attr("active", 0, n - 1)
    v.need(v.width(u) == (n - 1) * e and v.width(out) == e, f"not hs[T, {n * e}], u[T, {(n - 1) * e}] -> [T, {e}]")


def _gaussian_topk(v: _OpView) -> None:
    _same_shape(v)
    v.need(v.width(v.op.inputs[0]) >= 2, "a row of fewer than 2 values has no unbiased std")
    v.real_attr("std_mul", -100.0, 100.0)


RULES: dict[str, Callable[[_OpView], None]] = {
    "embed": _embed,
    "rmsnorm": _rmsnorm,
    "matmul": _matmul,
    "add_bias": _add_bias,
    "rope": _rope,
    "kv_write": _kv_write,
    "attention": _attention,
    "swiglu": _swiglu,
    "add": _same_shape,
    "gather_rows": _gather_rows,
    "softcap": _softcap,
    "scale": _scale,
    "xielu": _xielu,
    "moe_route": _moe_route,
    "moe_matmul": _moe_matmul,
    "moe_combine": _moe_combine,
    "moe_add_bias": _moe_add_bias,
    "moe_scale": _moe_scale,
    "slot_scale": _slot_scale,
    "head_matmul": _head_matmul,
    "concat_heads": _concat_heads,
    "short_conv": _short_conv,
    "ssm_conv": _ssm_conv,
    "gated_delta_net": _gated_delta_net,
    "ssm_scan": _ssm_scan,
    "altup_stack": _altup_stack,
    "altup_predict": _altup_predict,
    "altup_correct": _altup_correct,
    "altup_add": _altup_add,
    "altup_merge": _altup_merge,
    "gaussian_topk": _gaussian_topk,
}
assert set(RULES) == set(OPS), "every op kind needs a shape rule"
