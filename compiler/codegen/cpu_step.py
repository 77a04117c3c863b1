"""Lowers a plan into the cpu step program: one C entry per step, one thread team per step.

The plan's ops become *phases* that every thread of one OpenMP team runs in order; a
barrier goes in only where a phase touches what an earlier phase since the last barrier
wrote (or writes what it read): a true dependency. Work inside a phase is split so that a
thread the OS preempts does not hold the others up: matmul row tiles and attention items
come from shared atomic counters; row-local ops (norms, rope) split tokens statically
(they are a few microseconds).

Fusions the lowering decides (the plan keeps the unfused ops, which the reference runs):
- matmuls that read the same input with weights of one format (Q, K, V; gate, up) are one
  matmul over segments: the activation is quantized once, one pool of row tiles, one barrier;
- an add_bias right after a matmul is added in that matmul's epilogue;
- an `add(x, h) -> x` right after a matmul writing h is that matmul's residual epilogue;
- the rmsnorm or swiglu that writes a matmul's input runs row by row in the matmul's
  quantization phase (each thread normalizes a row, then quantizes it: no barrier between);
- rope and the kv_write of its k (with v) run token by token in one phase.

What layers may differ in (gemma's windows, gemma3's rope bases) are constants of each phase:
an attention phase's window and soft-cap, a rope phase's frequency table (one compiled per
distinct base, scale and YaRN ramp: rope_variants) and attn_factor. Per-head norms and norms of
rows other than n_embd are phases of their own (no matmul prologue).

Repeated layers are not unrolled: a run of blocks of phases that differ only in per-layer
numbers (offsets, KV layers, tile counters, windows, rope table indices) is one C loop over a
table of those numbers (loop_layers), which cuts the library's compile time several times over
and runs the same calls in the same order.

The generated source takes only numbers and compiler-chosen identifiers (render.py checks).
"""

from dataclasses import dataclass


from rfc.artifacts.formats import FORMATS, row_nbytes
from rfc.artifacts.ops import OP_DEFS
from rfc.artifacts.plan import Buffer, Op, Plan
from rfc.compiler.codegen.cpu_phase import Phase, f32_literal  # noqa: F401 (f32_literal: read as cpu_step.f32_literal)
from rfc.compiler.codegen.ops import activations, altup, hc, moe, recurrent, rwkv
from rfc.compiler.errors import CompileError

MAX_SEGMENTS = 8  # rfc_mm_run's per-call segment arrays
# The C row function of each gated activation (artifacts/plan.py GLU_ACTIVATIONS; cpu_elementwise.c.j2).
GLU_SPANS = {
    "silu": "rfc_swiglu_span",
    "gelu_tanh": "rfc_geglu_span",
    "swiglu_oai": "rfc_swiglu_oai_span",
    "sigmoid": "rfc_sigmoid_glu_span",
    "relu": "rfc_relu_glu_span",
    "silu_clamp": "rfc_swiglu_clamp_span",
    "softplus": "rfc_softplus_glu_span",
    "linear": "rfc_mul_glu_span",
}


def cap_limits(ops) -> list[float]:
    """The distinct limits of the plan's swiglu 'silu_cap' ops, in order: each has a span function
    of its own (rfc_swiglu_cap<k>_span, its limit compiled in)."""
    return sorted(
        {float(op.attr("limit")) for op in ops if op.kind == "swiglu" and op.attr("activation") == "silu_cap"}
    )


def situ_pairs(ops) -> list[tuple[float, float]]:
    """The distinct (alpha, limit) of the plan's swiglu 'situ' ops, in order: each has a span function
    of its own (rfc_swiglu_situ<k>_span, its constants compiled in)."""
    pairs = {(float(op.attr("alpha")), float(op.attr("limit"))) for op in ops
             if op.kind == "swiglu" and op.attr("activation") == "situ"}  # fmt: skip
    return sorted(pairs)


def glu_span(op: Op, ops) -> str:
    """The C row function of a swiglu op (its plan's `ops`: silu_cap's by its limit, situ's by its pair)."""
    if op.attr("activation") == "silu_cap":
        return f"rfc_swiglu_cap{cap_limits(ops).index(float(op.attr('limit')))}_span"
    if op.attr("activation") == "situ":
        return f"rfc_swiglu_situ{situ_pairs(ops).index((float(op.attr('alpha')), float(op.attr('limit'))))}_span"
    return GLU_SPANS[op.attr("activation")]


# The attributes a rope op's frequency table is made of: rope_inv_freq's arguments after n_rot.
RopeKey = tuple[float, float, float, float, float, int]


def rope_key(op: Op) -> RopeKey:
    """The rope attributes layers may differ in that shape its table (gemma3's local and global
    bases; YaRN's ramp): rope_inv_freq(n_rot, *key). attn_factor is a per-phase constant."""
    return (float(op.attrs["freq_base"]), float(op.attrs["freq_scale"]), float(op.attr("ext_factor")),
            float(op.attr("beta_fast")), float(op.attr("beta_slow")), int(op.attr("orig_ctx")))  # fmt: skip


def rope_variants(plan: Plan, geometry: tuple | None = None) -> list[RopeKey]:
    """The distinct table keys of the plan's rope ops (of one `geometry` when given), in plan
    order: the step program's frequency tables (templates/cpu_rope.c.j2)."""
    seen: list[tuple[float, ...]] = []
    for op in plan.ops:
        if op.kind == "rope" and (geometry is None or head_geometry(op) == geometry) and rope_key(op) not in seen:
            seen.append(rope_key(op))
    return seen


def head_geometry(op: Op) -> tuple[int, ...]:
    """What an attention or rope op's kernels are compiled for: (n_heads, n_kv_heads, head_dim),
    and n_rot for rope. Layers may differ in it (Gemma 4's sliding and global layers): one
    rendering of the template per geometry (geometries)."""
    g = (int(op.attrs["n_heads"]), int(op.attrs["n_kv_heads"]), int(op.attrs["head_dim"]))
    return (*g, int(op.attrs["n_rot"])) if op.kind == "rope" else g


def per_state_decay(op: Op) -> bool:
    """An ssm_scan whose decay is per channel and state (Mamba-1: a weight of n_heads x state_size values)."""
    return op.kind == "ssm_scan" and op.attr("decay") == "state"


def short_norms(plan: Plan) -> bool:
    """Whether a one-head rmsnorm of the plan has a row that is not whole vectors of 8 (rmsnorm_short)."""
    widths = {b.name: b.shape[1] for b in plan.buffers if len(b.shape) == 2}
    return any(op.kind == "rmsnorm" and int(op.attr("heads")) == 1 and widths.get(op.inputs[0], 0) % 8
               for op in plan.ops)  # fmt: skip


def norm_eps(plan: Plan) -> list[float]:
    """The rmsnorm ops' epsilons, each once, in plan order: the first is compiled into the norm
    kernels (cpu_rmsnorm.c.j2's eps), each other into a row function of its own (extra_eps: a model
    whose norms differ in epsilon, muse-glimmer's post-norms)."""
    seen: list[float] = []
    for op in plan.ops:
        if op.kind == "rmsnorm" and float(op.attr("eps")) not in seen:
            seen.append(float(op.attr("eps")))
    return seen


def geometries(plan: Plan, kind: str) -> dict[tuple[int, ...], str]:
    """The geometries of a kind's ops in plan order, each with the suffix of its functions: ""
    for the first (the per-op exports the kernel tests call), then _{H}x{KV}x{D}[r{n_rot}]."""
    out: dict[tuple[int, ...], str] = {}
    for op in plan.ops:
        if op.kind == kind and (g := head_geometry(op)) not in out:
            out[g] = "" if not out else "_{}x{}x{}".format(*g) + (f"r{g[3]}" if len(g) > 3 else "")
    return out


def _suffix(sfx: str) -> list[str]:
    """A function-name suffix as templates take it: a list of identifiers (none: the first
    geometry's unsuffixed functions), joined in place (render.py admits no empty string)."""
    return [sfx] if sfx else []


MAX_MOE_SEGMENTS = 2  # expert matmuls sharing one gathered activation (gate, up): cpu_moe.c.j2's grouped outputs


@dataclass(frozen=True)
class Lowered:
    phases: list[dict]  # template dicts, barriers included
    counters: int  # atomic tile counters the phases use
    barriers: int


class _Lowering(
    activations.CpuLowering, moe.CpuLowering, recurrent.CpuLowering, altup.CpuLowering, hc.CpuLowering, rwkv.CpuLowering
):
    def __init__(self, plan: Plan, entries: dict, vectors: dict[str, list]):
        self.plan = plan
        self.entries = entries
        self.vectors = vectors  # weight name -> [is_const, offset] (see cpu.vector_refs)
        self.buf_index = {b.name: i for i, b in enumerate(plan.buffers)}
        self.buffers = {b.name: b for b in plan.buffers}
        self.counters = 0
        self.rope_geometries = geometries(plan, "rope")
        self.attention_geometries = geometries(plan, "attention")
        self.rope_variants = {g: rope_variants(plan, g) for g in self.rope_geometries}
        self.norm_eps = norm_eps(plan)
        self.moe_ids: str | None = None  # the ids buffer of the last moe_route (its grouping is current)

    def buf(self, name: str) -> int:
        return self.buf_index[name]

    def rows(self, name: str) -> str:
        """The C expression for a buffer's row count: T or R (tokens or logit rows)."""
        b: Buffer = self.buffers[name]
        dim = b.shape[0]
        if dim not in ("T", "R") or len(b.shape) != 2:
            raise CompileError(f"the cpu step program needs buffer {name} to be [T or R, width], it is {list(b.shape)}")
        return dim

    def width(self, name: str) -> int:
        return int(self.buffers[name].shape[1])

    def vec(self, name: str) -> list:
        return self.vectors[name]

    def counter(self) -> int:
        self.counters += 1
        return self.counters - 1

    # -- the phases -------------------------------------------------------------------------
    def lower(self, ops: list[Op]) -> list[Phase]:
        phases: list[Phase] = []
        i = 0
        while i < len(ops):
            op = ops[i]
            if op.kind == "matmul":
                i = self._matmul(ops, i, phases)
                continue
            if op.kind == "moe_matmul":
                i = self._moe_matmul(ops, i, phases)
                continue
            if op.kind == "swiglu" and self._feeds_moe(ops, i):
                i += 1  # runs in the next expert matmul's gather
                continue
            if op.kind == "moe_combine" and self._residual(ops, i):
                phases.append(self._moe_combine(op, ops[i + 1]))
                i += 2
                continue
            if op.kind in ("rmsnorm", "swiglu") and self._feeds_matmul(ops, i):
                i += 1  # runs as the next matmul's prologue
                continue
            if (
                op.kind == "rope"
                and i + 1 < len(ops)
                and ops[i + 1].kind == "kv_write"
                and ops[i + 1].inputs == (op.outputs[1], ops[i + 1].inputs[1])
            ):
                phases.append(self._rope(op, ops[i + 1]))
                i += 2
                continue
            phases.append(getattr(self, OP_DEFS[op.kind].cpu.lower)(op))  # the descriptor's lowering
            i += 1
        return phases

    def _feeds_matmul(self, ops: list[Op], i: int) -> bool:
        """ops[i] (rmsnorm/swiglu) writes exactly what the matmul right after it reads."""
        op = ops[i]
        if op.kind == "rmsnorm" and (
            op.attr("heads") != 1 or self.width(op.inputs[0]) != self.plan.n_embd or not op.weights
        ):
            return False
        if op.kind == "swiglu" and self.width(op.inputs[0]) != self.width(op.inputs[1]):
            return False  # a gate per row: its own phase
        return i + 1 < len(ops) and ops[i + 1].kind == "matmul" and ops[i + 1].inputs[0] == op.outputs[0]

    def _matmul(self, ops: list[Op], i: int, phases: list[Phase]) -> int:
        first = ops[i]
        src = first.inputs[0]
        fmt = self.entries[first.weights[0]].format
        k = self.entries[first.weights[0]].shape[-1]
        prologue = None
        if i > 0 and ops[i - 1].kind in ("rmsnorm", "swiglu") and self._feeds_matmul(ops, i - 1):
            prologue = ops[i - 1]
        segs, reads, writes = [], {src}, set()
        j = i
        while j < len(ops) and ops[j].kind == "matmul" and len(segs) < MAX_SEGMENTS:
            op = ops[j]
            e = self.entries[op.weights[0]]
            out = op.outputs[0]
            if j > i and (op.inputs[0] != src or e.format != fmt or e.shape[-1] != k or out in reads | writes):
                break
            seg = {"w": e.offset, "row_bytes": row_nbytes(e.format, e.shape[-1]), "n": e.shape[0], "out": self.buf(out),
                   "bias": [], "accum": -1}  # fmt: skip
            if self.width(out) != e.shape[0] or self.rows(out) != self.rows(src):
                raise CompileError(
                    f"matmul {op.weights[0]}: output buffer {out} is not [{self.rows(src)}, {e.shape[0]}]"
                )
            j += 1
            if j < len(ops) and ops[j].kind == "add_bias" and ops[j].inputs == (out,) and ops[j].outputs == (out,):
                seg["bias"] = self.vec(ops[j].weights[0])
                j += 1
            if (
                j < len(ops)
                and ops[j].kind == "add"
                and out in ops[j].inputs
                and ops[j].outputs[0] in ops[j].inputs
                and ops[j].outputs[0] != out
                and len(segs) == 0
                and self._single(ops, j - 1, i)
            ):
                acc = ops[j].outputs[0]
                seg["accum"] = self.buf(acc)
                reads.add(acc)
                writes.add(acc)
                j += 1
                writes.add(out)
                segs.append(seg)
                break  # the residual ends the group
            writes.add(out)
            segs.append(seg)
        rows = self.rows(src)
        pro = {"kind": "none"}
        q_reads, q_writes = {src}, {"@act"}
        if prologue is not None:
            if prologue.kind == "rmsnorm":
                pro = {
                    "kind": "rmsnorm",
                    "x": self.buf(prologue.inputs[0]),
                    "w": self.vec(prologue.weights[0]),
                    **self._eps(prologue),
                }
            else:
                pro = {"kind": "swiglu", "gate": self.buf(prologue.inputs[0]), "up": self.buf(prologue.inputs[1]),
                       "width": self.width(src), "fn": glu_span(prologue, self.plan.ops)}  # fmt: skip
            q_reads = set(prologue.inputs)
            q_writes = {src, "@act"}
        phases.append(Phase("mm_quantize", {"fmt": fmt.lower(), "k": k, "x": self.buf(src), "rows": rows, "pro": pro},
                            q_reads, q_writes))  # fmt: skip
        phases.append(Phase("mm_run", {"fmt": fmt.lower(), "k": k, "x": self.buf(src), "rows": rows, "segs": segs,
                                       "counter": self.counter()}, reads | {"@act"}, writes))  # fmt: skip
        return j

    def _feeds_moe(self, ops: list[Op], i: int) -> bool:
        """ops[i] (swiglu) writes exactly what the expert matmul right after it reads, per slot."""
        op = ops[i]
        if op.attr("activation") not in (None, "silu") or i + 1 >= len(ops) or ops[i + 1].kind != "moe_matmul":
            return False
        nxt = ops[i + 1]
        return (
            nxt.inputs[0] == op.outputs[0] == op.inputs[0]
            and self.width(op.inputs[0]) == self.width(nxt.inputs[1]) * self.entries[nxt.weights[0]].shape[2]
        )

    def _moe_matmul(self, ops: list[Op], i: int, phases: list[Phase]) -> int:
        first = ops[i]
        src, ids = first.inputs
        if ids != self.moe_ids:
            raise CompileError(f"moe_matmul {first.weights[0]}: its expert ids {ids} are not the last moe_route's")
        e0 = self.entries[first.weights[0]]
        fmt, k = e0.format, e0.shape[2]
        n_used = self.width(ids)
        per_slot = self.width(src) == n_used * k
        pro = None
        if i > 0 and ops[i - 1].kind == "swiglu" and self._feeds_moe(ops, i - 1):
            pro = ops[i - 1]
        segs, writes = [], set()
        j = i
        while j < len(ops) and ops[j].kind == "moe_matmul" and len(segs) < MAX_MOE_SEGMENTS:
            op = ops[j]
            e = self.entries[op.weights[0]]
            out = op.outputs[0]
            if j > i and (
                op.inputs != first.inputs or e.format != fmt or e.shape[2] != k or out in writes | {src, ids}
            ):
                break
            if self.width(out) != n_used * e.shape[1]:
                raise CompileError(
                    f"moe_matmul {op.weights[0]}: output buffer {out} is not [T, {n_used} x {e.shape[1]}]"
                )
            segs.append({"w": e.offset, "expert_bytes": e.shape[1] * row_nbytes(fmt, k),
                         "row_bytes": row_nbytes(fmt, k), "n": e.shape[1], "out": self.buf(out)})  # fmt: skip
            writes.add(out)
            j += 1
        q_reads = {src, "@moe"} | (set(pro.inputs) if pro is not None else set())
        q_writes = {"@act"} | writes | ({src} if pro is not None else set())  # slots without an expert get zeros
        params = {"fmt": fmt.lower(), "k": k, "x": self.buf(src),
                  "up": self.buf(pro.inputs[1]) if pro is not None else -1, "per_slot": int(per_slot),
                  "n_used": n_used, "segs": segs}  # fmt: skip
        phases.append(Phase("moe_quantize", params, q_reads, q_writes))
        phases.append(Phase("moe_run", {**params, "counter": self.counter()}, {"@act", "@moe"}, writes))
        return j

    def _residual(self, ops: list[Op], i: int) -> bool:
        """ops[i + 1] is `add(x, out) -> x` of ops[i]'s output (a residual the op can add itself)."""
        out = ops[i].outputs[0]
        return (
            i + 1 < len(ops)
            and ops[i + 1].kind == "add"
            and out in ops[i + 1].inputs
            and ops[i + 1].outputs[0] in ops[i + 1].inputs
            and ops[i + 1].outputs[0] != out
        )

    @staticmethod
    def _single(ops: list[Op], last: int, first: int) -> bool:
        """Only one matmul (with perhaps its bias) from `first` to `last`."""
        return sum(1 for op in ops[first : last + 1] if op.kind == "matmul") == 1

    def _embed(self, op: Op) -> Phase:
        e = self.entries[op.weights[0]]
        if op.inputs[0] != self.plan.input_tokens:
            raise CompileError("the cpu step program embeds the step's input tokens only")
        width, column = self.width(op.outputs[0]), int(op.attr("column"))
        params = {
            "fmt": e.format.lower(),
            "w": e.offset,
            "row_bytes": row_nbytes(e.format, e.shape[-1]),
            "out": self.buf(op.outputs[0]),
            "scale": f32_literal(op.attr("scale"), "embed scale"),
            "slice": {},
        }
        # a slice of each row (Gemma 4's per-layer table)
        if (column, width) != (0, e.shape[-1]) or width != self.plan.n_embd:
            f = FORMATS[e.format]
            if not f.is_gguf or column % f.block_elems or width % f.block_elems:
                raise CompileError(
                    f"the cpu step program slices {e.format} embedding rows at whole GGUF blocks only "
                    f"(columns {column}..{column + width} of {e.name})"
                )
            params["slice"] = {"bytes": row_nbytes(e.format, column), "width": width}
        return Phase("embed", params, {"@tokens"}, {op.outputs[0]})

    def _pos_embed(self, op: Op) -> Phase:
        e, x = self.entries[op.weights[0]], op.inputs[0]
        params = {"fmt": e.format.lower(), "w": e.offset, "row_bytes": row_nbytes(e.format, e.shape[-1]),
                  "x": self.buf(x), "out": self.buf(op.outputs[0])}  # fmt: skip
        return Phase("pos_embed", params, {x}, {op.outputs[0]})

    def _eps(self, op: Op) -> dict:
        """{"e": i} for a norm at the plan's i-th epsilon (its own row function), {} at the first."""
        i = self.norm_eps.index(float(op.attr("eps")))
        return {"e": i} if i else {}

    def _rmsnorm(self, op: Op) -> Phase:
        x, heads, width = op.inputs[0], int(op.attr("heads")), self.width(op.inputs[0])
        # per-head Q/K norms (qwen3, gemma3), a row of another width, or no weight (gemma4's V: NULL)
        if heads != 1 or width != self.plan.n_embd or not op.weights:
            eps = self._eps(op)  # a segment norm at another epsilon: rfc_rmsnorm_segs_row_e<i> (RWKV's group norm)
            if eps and heads == 1:
                raise CompileError(
                    f"rmsnorm of {x}: the cpu target norms a row of {width} at the plan's first epsilon only"
                )
            if heads == 1 and width % 8:  # a short row (jamba's dt of rank 2): rfc_rmsnorm_short_row, scalar
                return Phase("rmsnorm_short", {"x": self.buf(x), "out": self.buf(op.outputs[0]),
                                               "w": self.vec(op.weights[0]) if op.weights else [],
                                               "rows": self.rows(x), "width": width},
                             set(op.inputs), set(op.outputs))  # fmt: skip
            if heads < 1 or width % heads or (width // heads) % 8:
                raise CompileError(f"rmsnorm of {x}: {heads} heads do not split a row of {width} into multiples of 8")
            w = self.vec(op.weights[0]) if op.weights else []  # the template writes NULL
            if op.weights and heads > 1 and tuple(self.entries[op.weights[0]].shape) == (width,):  # Mamba2's groups
                return Phase("rmsnorm_segs",
                             {"x": self.buf(x), "out": self.buf(op.outputs[0]), "w": w, "rows": self.rows(x),
                              "width": width, "heads": heads, **eps}, set(op.inputs),
                             set(op.outputs))  # fmt: skip
            return Phase("rmsnorm_heads", {"x": self.buf(x), "out": self.buf(op.outputs[0]), "w": w,
                                           "rows": self.rows(x), "width": width, "heads": heads, **eps},
                         set(op.inputs), set(op.outputs))  # fmt: skip
        return Phase("rmsnorm",
                     {"x": self.buf(op.inputs[0]), "out": self.buf(op.outputs[0]), "w": self.vec(op.weights[0]),
                      "rows": self.rows(op.inputs[0]), **self._eps(op)}, set(op.inputs), set(op.outputs))  # fmt: skip

    def _rope(self, op: Op, kv: Op | None = None) -> Phase:
        q, k = op.outputs
        params = {"q": self.buf(q), "k": self.buf(k), "q_width": self.width(q), "k_width": self.width(k),
                  "factors": self.vec(op.weights[0]) if op.weights else [],
                  "v": -1, "layer": -1, "variant": self.rope_variants[head_geometry(op)].index(rope_key(op)),
                  "sfx": _suffix(self.rope_geometries[head_geometry(op)]),
                  "attn_factor": f32_literal(op.attr("attn_factor"), "rope attn_factor"),
                  "temp_scale": float(op.attr("temp_scale")), "temp_floor": int(op.attr("temp_floor")),
                  "temp_width": self.width(q)}  # fmt: skip
        if params["temp_scale"]:  # validate_plan bounded both; a literal of a float32 that is not 0
            f32_literal(abs(params["temp_scale"]), "rope temp_scale")
        reads, writes = {q, k}, {q, k}
        if kv is not None:
            params["v"], params["layer"] = self.buf(kv.inputs[1]), int(kv.attrs["layer"])
            params["kv_width"] = self.width(kv.inputs[1])
            reads.add(kv.inputs[1])
            writes.add(f"@kv{kv.attrs['layer']}")
        return Phase("rope", params, reads, writes)

    def _kv_write(self, op: Op) -> Phase:
        k, v = op.inputs
        layer = int(op.attrs["layer"])
        return Phase(
            "kv_write",
            {"k": self.buf(k), "v": self.buf(v), "layer": layer, "width": self.width(k)},
            {k, v},
            {f"@kv{layer}"},
        )

    def _attention(self, op: Op) -> Phase:
        layer = int(op.attrs["layer"])
        window, softcap = op.attr("window"), op.attr("softcap")
        if window is not None and not 1 <= int(window) < 2**31:
            raise CompileError(f"attention window {window} is out of range")
        softcap = 0.0 if softcap is None else f32_literal(softcap, "attention softcap")  # 0: no soft-capping
        table = self.vec(op.weights[0]) if op.weights else []
        biased = op.attr("pos_bias") is not None  # the weight: T5's position-bias table, else gpt-oss's sinks
        weight = {"pos_bias": table, "sinks": []} if biased else {"sinks": table}
        return Phase("attention", {"q": self.buf(op.inputs[0]), "out": self.buf(op.outputs[0]), "layer": layer,
                                   "counter": self.counter(), "window": int(window or 0), "softcap": softcap,
                                   **weight, "sfx": _suffix(self.attention_geometries[head_geometry(op)]),
                                   "causal": bool(op.attr("causal"))},
                     {op.inputs[0], f"@kv{layer}"}, {op.outputs[0]})  # fmt: skip

    def _add(self, op: Op) -> Phase:
        a, b = op.inputs
        return Phase("add", {"a": self.buf(a), "b": self.buf(b), "out": self.buf(op.outputs[0]), "width": self.width(a),
                             "rows": self.rows(a)}, {a, b}, set(op.outputs))  # fmt: skip

    def _add_bias(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase("add_bias", {"x": self.buf(x), "out": self.buf(op.outputs[0]), "w": self.vec(op.weights[0]),
                                  "width": self.width(x), "rows": self.rows(x)}, {x}, set(op.outputs))  # fmt: skip

    def _swiglu(self, op: Op) -> Phase:
        g, u = op.inputs
        if self.width(g) != self.width(u):  # 'sigmoid' with k gates per row (validate.py allows nothing else)
            # gate j of row t over segment j: the rows seen as rows x k rows of width / k, one gate each
            k = self.width(g)
            segs = {"segs": k} if k > 1 else {}
            if op.attr("activation") != "sigmoid":  # sigmoid's phase renders as it always has
                segs["fn"] = "rfc_softplus_row_span"
            return Phase("glu_row", {"gate": self.buf(g), "up": self.buf(u), "out": self.buf(op.outputs[0]),
                                     "width": self.width(u) // k, "rows": self.rows(u), **segs},
                         {g, u}, set(op.outputs))  # fmt: skip
        return Phase("swiglu",
                     {"gate": self.buf(g), "up": self.buf(u), "out": self.buf(op.outputs[0]), "width": self.width(g),
                      "rows": self.rows(g), "fn": glu_span(op, self.plan.ops)}, {g, u},
                     set(op.outputs))  # fmt: skip

    # -- multi-head latent attention (cpu_mla.c.j2) ----------------------------------------------
    def _head_matmul(self, op: Op) -> Phase:
        (x,), (out,) = op.inputs, op.outputs
        e = self.entries[op.weights[0]]
        heads, n, k = e.shape
        stride = int(op.attr("stride")) or k
        return Phase("head_matmul",
                     {"fmt": e.format.lower(), "w": e.offset, "row_bytes": row_nbytes(e.format, k), "x": self.buf(x),
                      "out": self.buf(out), "rows": self.rows(x), "heads": heads, "stride": stride,
                      "n": n, "k": k},
                     {x}, {out})  # fmt: skip

    def _concat_heads(self, op: Op) -> Phase:
        (a, b), (out,) = op.inputs, op.outputs
        heads = int(op.attrs["heads"])
        return Phase("concat_heads", {"a": self.buf(a), "b": self.buf(b), "out": self.buf(out), "rows": self.rows(a),
                                      "heads": heads, "wa": self.width(a) // heads, "wb": self.width(b) // heads},
                     {a, b}, {out})  # fmt: skip

    def _slice_heads(self, op: Op) -> Phase:
        (x,), (out,) = op.inputs, op.outputs
        heads = int(op.attrs["heads"])
        return Phase("slice_heads", {"x": self.buf(x), "out": self.buf(out), "rows": self.rows(x), "heads": heads,
                                     "stride": self.width(x) // heads, "width": int(op.attrs["width"])},
                     {x}, {out})  # fmt: skip

    def _gather_rows(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase(
            "gather", {"x": self.buf(x), "out": self.buf(op.outputs[0]), "width": self.width(x)}, {x}, set(op.outputs)
        )


def with_barriers(phases: list[Phase]) -> tuple[list[dict], int]:
    """Phases with a barrier wherever one reads or writes what an earlier phase since the
    last barrier wrote, or writes what one read (the only orderings a team needs)."""
    out: list[dict] = []
    written: set[str] = set()
    read: set[str] = set()
    barriers = 0
    for p in phases:
        if (p.reads | p.writes) & written or p.writes & read:
            out.append({"kind": "barrier"})
            barriers += 1
            written, read = set(), set()
        out.append(p.as_template())
        written |= p.writes
        read |= p.reads
    return out, barriers


def lower(plan: Plan, entries: dict, vectors: dict[str, list], output: str) -> Lowered:
    """The phases of one entry: the plan's ops up to the last one writing `output`."""
    last = max(i for i, op in enumerate(plan.ops) if output in op.outputs)
    low = _Lowering(plan, entries, vectors)
    phases = low.lower(list(plan.ops[: last + 1]))
    done, barriers = with_barriers(phases)
    return Lowered(done, low.counters, barriers)


def vector_weights(plan: Plan, entries: dict) -> list[str]:
    """The 1-D weights the phases read as float vectors (norms, biases, rope factors, attention
    sinks, routers' selection biases, experts' scales, channel divisors: each op kind's
    CpuPart.vectors_from), in plan order."""
    seen: list[str] = []
    for op in plan.ops:
        start = OP_DEFS[op.kind].cpu.vectors_from
        if start is not None:
            for w in op.weights[start:]:
                if w not in seen:
                    e = entries[w]
                    if (
                        len(e.shape) != 1
                        or FORMATS[e.format].block_elems != 1
                        and e.shape[0] % FORMATS[e.format].block_elems
                    ):
                        raise CompileError(
                            f"{w}: the cpu step program reads it as a vector, its shape is {list(e.shape)}"
                        )
                    seen.append(w)
    return seen


# -- loops over repeated layers ----------------------------------------------------------------
# Unrolled, a 30-layer step inlines every kernel 30 times into one OpenMP-outlined function, which
# is most of the library's C compile time. Runs of blocks of phases that differ only in per-layer
# numbers become one loop over a table of those numbers: the same phases, barriers and calls in
# the same order, so the same results bit for bit.
#
# The numbers a loop may read from its table: addresses and indices (weight offsets, the offsets
# of vector references, KV layers, tile counters, state offsets, the column of a per-layer
# embedding's slice, the index of a rope frequency table) and an attention's window (an argument
# of the attention team, not a kernel constant: gemma's sliding and global layers loop together).
# So may a scale phase's factor (Gemma 4's per-layer output scale), from a float table whose
# literals are the unrolled program's. Everything else, widths, tile counts, formats, geometries
# and the other float attributes included, stays a compile-time constant of the loop body: blocks
# that differ in one are different blocks, so a loop never turns a kernel's constant into a load.
LOOP_FIELDS = frozenset({"w", "layer", "counter", "state", "bytes", "window", "variant"})
LOOP_FLOAT_FIELDS = frozenset({"factor"})
MIN_LOOP_SAVED = 4  # phases and barriers a loop must save over its unrolled form


def _is_vec(value: object) -> bool:
    """A vector reference, [is_const, offset] (cpu.vector_refs)."""
    return isinstance(value, list) and len(value) == 2 and type(value[0]) is bool and type(value[1]) is int


def _is_loop_number(value: object, key: object) -> bool:
    return key in LOOP_FIELDS and type(value) is int or key in LOOP_FLOAT_FIELDS and type(value) is float


def _shape(value: object, key: object, numbers: list) -> tuple:
    """`value` with each number a loop may take from its table left out (appended to `numbers`,
    in a fixed walk order): two phases of one shape differ only in those numbers."""
    if _is_vec(value):
        numbers.append(value[1])
        return ("vec", value[0])
    if _is_loop_number(value, key):
        numbers.append(value)
        return ("#", type(value).__name__)
    if isinstance(value, dict):
        return ("{", tuple((k, _shape(v, k, numbers)) for k, v in value.items()))
    if isinstance(value, list):
        return ("[", tuple(_shape(v, None, numbers) for v in value))
    return (type(value).__name__, value)


def _fill(value: object, key: object, numbers) -> object:
    """`value` with its loop numbers (in _shape's walk order) replaced by the next of `numbers`."""
    if _is_vec(value):
        return [value[0], next(numbers)]
    if _is_loop_number(value, key):
        return next(numbers)
    if isinstance(value, dict):
        return {k: _fill(v, k, numbers) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, None, numbers) for v in value]
    return value


def _best_run(ids: list[int], lo: int, hi: int) -> tuple[int, int, int] | None:
    """The run of repeated blocks in ids[lo:hi] that saves the most items: (start, period,
    repeats), the shortest period and then the earliest start among equals."""
    best, best_key = None, (MIN_LOOP_SAVED - 1, 0, 0)
    for i in range(lo, hi):
        if hi - i - 1 < best_key[0]:  # saved <= (hi - i) - period: nothing as good starts here
            break
        for p in range(1, (hi - i) // 2 + 1):
            if (hi - i) - p < best_key[0]:
                break
            if ids[i] != ids[i + p] or ids[i + p - 1] != ids[i + 2 * p - 1]:
                continue
            block = ids[i : i + p]
            r = 1
            while i + (r + 1) * p <= hi and ids[i + r * p : i + (r + 1) * p] == block:
                r += 1
            key = (p * (r - 1), -p, -i)
            if r >= 2 and key > best_key:
                best, best_key = (i, p, r), key
    return best


def _runs(ids: list[int], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Non-overlapping runs of ids[lo:hi], the best first, then the best on either side of it."""
    run = _best_run(ids, lo, hi)
    if run is None:
        return []
    start, p, r = run
    return [*_runs(ids, lo, start), run, *_runs(ids, start + p * r, hi)]


def loop_layers(phases: list[dict]) -> list[dict]:
    """The entry's phases (barriers included) with each run of repeated blocks as one
    {"kind": "loop", "id", "n": repeats, "table": [repeats][columns], "ftable": the same for
    floats, "phases": the block}, where a number that differs between the repeats is {"col": its
    column of the table} (the template renders lp[col]; a float {"fcol": ...}, lpf[fcol]). A run
    whose repeats differ in no integer (no tile counter: no matmul or attention) stays unrolled."""
    shapes, numbers, ids = {}, [], []
    for p in phases:
        nums: list[int] = []
        ids.append(shapes.setdefault(_shape(p, None, nums), len(shapes)))
        numbers.append(nums)
    out: list[dict] = []
    at = 0
    for start, period, repeats in _runs(ids, 0, len(phases)):
        blocks = [range(start + k * period, start + (k + 1) * period) for k in range(repeats)]
        columns: list[list[int]] = []  # per number that differs between repeats, its values
        fcolumns: list[list[float]] = []
        body = []
        for j in range(period):
            values = list(zip(*(numbers[b[j]] for b in blocks)))  # per number: its value in each repeat
            fill = []
            for v in values:
                if len(set(v)) == 1:
                    fill.append(v[0])
                elif type(v[0]) is float:
                    fill.append({"fcol": len(fcolumns)})
                    fcolumns.append(list(v))
                else:
                    fill.append({"col": len(columns)})
                    columns.append(list(v))
            body.append(_fill(phases[start + j], None, iter(fill)))
        out.extend(phases[at:start])
        if columns:
            out.append({"kind": "loop", "id": sum(1 for q in out if q["kind"] == "loop"), "n": repeats, "phases": body,
                        "table": [list(row) for row in zip(*columns)],
                        "ftable": [list(row) for row in zip(*fcolumns)]})  # fmt: skip
        else:
            out.extend(phases[start : start + period * repeats])
        at = start + period * repeats
    out.extend(phases[at:])
    return out
