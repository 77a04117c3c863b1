"""Stage 4: the weight planner. Which layouts of every weight the bundle stores, and which
of them each target reads.

The GGUF block layout is an input format, not a runtime format: a weight goes into the
layout its readers' kernels stream best, as the format table says (artifacts/formats.py).
A GGUF format's layout row for a target's kernels (packed Q4_0x8.. for the cpu targets,
planar Q4_0p.. for the GPU ones) is where its weights go when nothing reads them but the
op kinds that row lists (`ops`: the cpu embedding lookup also gathers rows from the
chunked x8 layouts, which a tied embedding needs; the GPU embed kernel reads GGUF rows
only), and when the layout can hold them (row groups interleave 2-D matrices, and expert
tensors [E, N, K] that only expert matmuls read with N a multiple of the group: groups_fit).

Entries are keyed by (weight, format). The first kind of target in a bundle (the cpu
variants, else the GPUs) has its layouts under the plan's own weight names, which the
numpy reference and the per-op cpu device read; a later kind whose layout of a weight
differs reads a *variant* entry "<name>#<format>" written after the rest, each (weight,
format) once. Every target gets a weight map (StepProgram.weights): plan weight -> the
entry it reads, where that is not the plan's own name.
"""

from dataclasses import dataclass, replace

from rfc.artifacts.formats import MATMUL_OPS, FORMATS, Kernels, target_layout
from rfc.artifacts.plan import Plan
from rfc.compiler.errors import CompileError
from rfc.compiler.spec import ModelSpec
from rfc.compiler.targets import Target
from rfc.compiler.weights import WeightUse


@dataclass(frozen=True)
class WeightPlan:
    # (plan weight, stored format) -> the use that writes it, in weights.bin order
    entries: dict[tuple[str, str], WeightUse]
    # per target: plan weight -> the layout entry it reads, where not the plan's own name
    weight_maps: dict[Target, dict[str, str]]

    @property
    def uses(self) -> tuple[WeightUse, ...]:
        return tuple(self.entries.values())


def plan_weights(spec: ModelSpec, targets: tuple[Target, ...] | list[Target]) -> WeightPlan:
    """The weights as the bundle stores them, and each target's weight map. No targets: the
    GGUF layouts, which the numpy reference reads."""
    readers = op_readers(spec.plan)
    kinds = [k for k in (Kernels.CPU, Kernels.GPU) if any(Kernels.of(t.family) is k for t in targets)]
    chosen = {k: {u.name: layout_format(u, readers.get(u.name, set()), k) for u in spec.weights} for k in kinds}
    entries: dict[tuple[str, str], WeightUse] = {}
    for i, fmt_of in enumerate([chosen[k] for k in kinds] or [{u.name: u.format for u in spec.weights}]):
        for use in spec.weights:
            fmt = fmt_of[use.name]
            if (use.name, fmt) not in entries:
                name = use.name if i == 0 else variant_name(use.name, fmt)
                entries[use.name, fmt] = stored_as(replace(use, name=name), fmt)
    maps = {}
    for t in targets:
        fmt_of = chosen[Kernels.of(t.family)]
        maps[t] = {w: entries[w, fmt_of[w]].name for w in readers if w in fmt_of and entries[w, fmt_of[w]].name != w}
    return WeightPlan(entries, maps)


def op_readers(plan: Plan) -> dict[str, set[str]]:
    """Plan weight -> the op kinds that read it."""
    readers: dict[str, set[str]] = {}
    for op in plan.ops:
        for w in op.weights:
            readers.setdefault(w, set()).add(op.kind)
    return readers


def layout_format(use: WeightUse, readers: set[str], kernels: Kernels) -> str:
    """The format `kernels` read `use` in, given the op kinds that read it: the table's layout
    for them when it can hold the weight and its ops are all that read it, else the GGUF one."""
    f = target_layout(use.format, kernels)
    if (
        f is None
        or not readers & MATMUL_OPS
        or not readers <= f.ops
        or not groups_fit(use.shape, f.group_rows, readers)
    ):
        return use.format
    return f.name


def groups_fit(shape: tuple[int, ...], group_rows: int, readers: set[str]) -> bool:
    """Row groups can hold a tensor of `shape`: a 2-D matrix, or an [E, N, K] expert tensor read
    by expert matmuls alone with N whole groups (its E * N rows repacked are each expert's slice
    repacked, experts still N rows apart; a group of rows from two experts would be neither)."""
    if group_rows == 1 or len(shape) == 2:
        return True
    return len(shape) == 3 and readers == {"moe_matmul"} and shape[1] % group_rows == 0


def stored_as(use: WeightUse, fmt: str) -> WeightUse:
    """`use` (in its GGUF format) written as `fmt`: its own format, or a layout of it."""
    if fmt == use.format:
        return replace(use, packed=None)
    if FORMATS[fmt].base != use.format:
        raise CompileError(f"{use.name}: cannot repack {use.format} into {fmt}")
    return replace(use, packed=fmt)


def variant_name(weight: str, fmt: str) -> str:
    """The layout entry of `weight` stored again in `fmt` for a target that reads that."""
    return f"{weight}#{fmt}"
