"""Checks a bundle's plan and weight layout against each other and the format table, before
any kernel runs (docs/design.md, trust model: a bundle is trusted exactly as far as its hashes,
and hashes say nothing about whether the numbers inside make sense).

A bundle that passes cannot make a kernel read outside a weight or a buffer: every weight's
bytes are its shape times its format and lie inside weights.bin, every op's buffers and
weights have the widths the op needs, and every size is bounded so that no allocation is
absurd. Each op kind's shape rule is part of its descriptor (artifacts/ops); a kind the
registry lacks is refused.
"""

from rfc.artifacts.formats import FormatError, tensor_nbytes, weight_format
from rfc.artifacts.layout import WeightLayout
from rfc.artifacts.limits import MAX_CONTEXT, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS
from rfc.artifacts.ops import OP_DEFS, OPS, OpView
from rfc.artifacts.ops.view import MAX_WIDTH, PlanError, bounded_int, need
from rfc.artifacts.plan import DTYPES, MAX_BUFFERS, SYMBOLS, Op, Plan
from rfc.artifacts.plan import MAX_STATE_DIMS, MAX_STATE_ELEMENTS, MAX_STATE_TENSORS

__all__ = ["MAX_WIDTH", "PlanError", "check_layout", "check_plan", "check_plan_weights", "check_weight_map"]

MAX_TOKEN_BYTES = 1 << 30  # activation bytes per token or row, all buffers together


# -- the plan alone ------------------------------------------------------------------------


def check_plan(plan: Plan) -> None:
    need(bounded_int(plan.n_embd, 1, MAX_WIDTH), f"plan n_embd {plan.n_embd!r} is out of range")
    need(bounded_int(plan.vocab_size, 1, MAX_WIDTH), f"plan vocab_size {plan.vocab_size!r} is out of range")
    need(
        bounded_int(plan.context_length, 1, MAX_CONTEXT),
        f"plan context_length {plan.context_length!r} is not in [1, {MAX_CONTEXT}]",
    )
    kv = plan.kv
    need(kv.dtype in ("f16", "f32"), f"plan KV cache dtype {kv.dtype!r} is not f16 or f32")
    # 0: a model without attention (mamba2), whose ops may then neither write nor read a KV layer
    need(bounded_int(kv.n_layers, 0, MAX_LAYERS), f"plan KV n_layers {kv.n_layers!r} is out of range")
    need(bounded_int(kv.n_kv_heads, 1, MAX_HEADS), f"plan KV n_kv_heads {kv.n_kv_heads!r} is out of range")
    need(bounded_int(kv.head_dim, 1, MAX_HEAD_DIM), f"plan KV head_dim {kv.head_dim!r} is out of range")
    check_state(plan)
    need(len(plan.buffers) <= MAX_BUFFERS, "plan has too many buffers")
    buffers = {}
    per_row_bytes = 0
    for b in plan.buffers:
        need(b.name not in buffers, f"plan buffer {b.name!r} is declared twice")
        need(b.dtype in DTYPES, f"plan buffer {b.name!r} has dtype {b.dtype!r}")
        need(
            1 <= len(b.shape) <= 2 and b.shape[0] in SYMBOLS,
            f"plan buffer {b.name!r} has shape {list(b.shape)}, not [T|R] or [T|R, width]",
        )
        need(all(bounded_int(d, 1, MAX_WIDTH) for d in b.shape[1:]), f"plan buffer {b.name!r} has a width out of range")
        buffers[b.name] = b
        per_row_bytes += 4 * (b.shape[1] if len(b.shape) == 2 else 1)
    need(per_row_bytes <= MAX_TOKEN_BYTES, "plan buffers need too much memory per token")
    need(_is(buffers, plan.input_tokens, ("T",), "i32"), f"plan input {plan.input_tokens!r} is not an i32 [T] buffer")
    need(
        not plan.output_logits or _is(buffers, plan.output_logits, ("R", plan.vocab_size)),
        f"plan output {plan.output_logits!r} is not [R, vocab_size]",
    )
    need(_is(buffers, plan.output_hidden, ("R", plan.n_embd)), f"plan output {plan.output_hidden!r} is not [R, n_embd]")
    scores = buffers.get(plan.output_scores)
    need(
        not plan.output_scores
        or (scores is not None and scores.dtype == "f32" and len(scores.shape) == 2 and scores.shape[0] == "R"),
        f"plan output {plan.output_scores!r} is not a float [R, labels] buffer",
    )
    need(not plan.scores_softmax or plan.output_scores != "", "scores_softmax without output_scores")
    for i, op in enumerate(plan.ops):
        check_op(plan, buffers, i, op)


def check_state(plan: Plan) -> None:
    """The per-sequence state: bounded counts and sizes, so a slot's size is sane before a pool is sized."""
    tensors = plan.state.tensors
    need(
        len(tensors) <= MAX_STATE_TENSORS, f"plan declares {len(tensors)} state tensors, more than {MAX_STATE_TENSORS}"
    )
    total = 0
    for i, t in enumerate(tensors):
        need(bounded_int(t.layer, 0, MAX_LAYERS - 1), f"plan state tensor {i} has layer {t.layer!r} out of range")
        need(
            1 <= len(t.shape) <= MAX_STATE_DIMS and all(bounded_int(d, 1, MAX_STATE_ELEMENTS) for d in t.shape),
            f"plan state tensor {i} has shape {list(t.shape)[:4]}, not 1 to {MAX_STATE_DIMS} positive dims",
        )
        total += t.elements
        need(total <= MAX_STATE_ELEMENTS, f"plan state needs more than {MAX_STATE_ELEMENTS} floats per sequence")


def _is(buffers: dict, name: str, shape: tuple, dtype: str = "f32") -> bool:
    b = buffers.get(name)
    return b is not None and tuple(b.shape) == shape and b.dtype == dtype


def check_op(plan: Plan, buffers: dict, i: int, op: Op) -> None:
    schema = OPS.get(op.kind) if isinstance(op.kind, str) else None
    where = f"plan op {i} ({str(op.kind)[:32]})"
    need(schema is not None, f"{where} is not an op this runtime knows")
    need(
        len(op.inputs) == schema.inputs and len(op.outputs) == schema.outputs,
        f"{where} has the wrong number of buffers",
    )
    lo, hi = schema.weights
    need(lo <= len(op.weights) <= hi, f"{where} has {len(op.weights)} weights, expects {lo}..{hi}")
    missing = [a for a in schema.attrs if a not in op.attrs]
    need(not missing, f"{where} lacks attributes {missing}")
    known = set(schema.attrs) | {name for name, _ in schema.optional}
    unknown = [str(a)[:32] for a in op.attrs if a not in known]
    need(not unknown, f"{where} has unknown attributes {unknown}")
    for b in (*op.inputs, *op.outputs):
        need(b in buffers, f"{where} names unknown buffer {b[:64]!r}")
    OP_DEFS[op.kind].check(OpView(plan, buffers, op, where, None, i))


# -- the plan against the layout -------------------------------------------------------------


def check_layout(layout: WeightLayout, file_size: int) -> None:
    """Every tensor's bytes are its shape times its format and lie inside weights.bin."""
    need(bounded_int(layout.alignment, 1, 1 << 20), f"layout alignment {layout.alignment!r} is out of range")
    names = set()
    spans = []
    for t in layout.tensors:
        need(
            isinstance(t.name, str) and t.name not in names,
            f"layout tensor {str(t.name)[:64]!r} is listed twice or unnamed",
        )
        names.add(t.name)
        try:
            nbytes = tensor_nbytes(weight_format(t.format), tuple(t.shape))
        except FormatError as e:
            raise PlanError(f"layout tensor {t.name[:64]}: {e}") from None
        need(
            t.nbytes == nbytes,
            f"layout tensor {t.name[:64]}: {t.nbytes!r} bytes, but shape {list(t.shape)} in {t.format} is {nbytes}",
        )
        need(bounded_int(t.offset, 0, file_size) and t.offset % layout.alignment == 0,
              f"layout tensor {t.name[:64]}: offset {t.offset!r} is not an aligned offset inside "
              f"weights.bin")  # fmt: skip
        need(
            t.offset + t.nbytes <= file_size,
            f"layout tensor {t.name[:64]} ends past the end of weights.bin ({file_size} bytes)",
        )
        spans.append((t.offset, t.offset + t.nbytes, t.name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        need(start >= end, f"layout tensors {a[:64]} and {b[:64]} overlap")


def check_plan_weights(plan: Plan, layout: WeightLayout) -> None:
    """Every op's weights exist with the shapes the op's buffers need."""
    entries = layout.by_name()
    buffers = {b.name: b for b in plan.buffers}
    for i, op in enumerate(plan.ops):
        where = f"plan op {i} ({op.kind} of {', '.join(w[:64] for w in op.weights) or 'no weights'})"
        for w in op.weights:
            need(w in entries, f"{where} reads weight {w[:64]!r}, which the layout does not have")
        OP_DEFS[op.kind].check(OpView(plan, buffers, op, where, entries, i))


def check_weight_map(weights: dict, plan: Plan, layout: WeightLayout, where: str) -> None:
    """A step program's weight map (StepProgram.weights): every key a weight the plan reads,
    every value a layout entry of the same shape (a variant of it in another format)."""
    entries = layout.by_name()
    read = {w for op in plan.ops for w in op.weights}
    for name, entry in weights.items():
        need(name in read, f"{where}: weight map names {str(name)[:64]!r}, which no plan op reads")
        need(
            entry in entries, f"{where}: weight {name[:64]} maps to {str(entry)[:64]!r}, which the layout does not have"
        )
        need(
            tuple(entries[entry].shape) == tuple(entries[name].shape),
            f"{where}: weight {name[:64]} maps to {entry[:64]}, of another shape",
        )
