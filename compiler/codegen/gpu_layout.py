"""The weight layouts the GPU targets read, and which layout entry a GPU target reads for a
plan weight.

The GPU int8 matmuls (templates/gpu_matmul.hip.j2, gpu_moe_matmul.hip.j2) read the GGUF
formats whose blocks are not 16-byte multiples in a planar layout (artifacts/formats.py
PLANAR_FORMATS): aligned 128-bit, coalesced loads. Q4_K and Q5_K blocks (144 and 176 bytes)
are aligned as they are; float formats are not int8 matmuls. Only weights that matmuls alone
read are repacked: the embed kernel gathers rows of the token embedding in its GGUF layout
(a tied output matrix is both, so it stays GGUF).

A bundle whose targets are all GPUs stores the planar layout under the plan's own weight
names (the numpy reference decodes it too). A bundle with cpu targets as well stores the
cpu layout there and the GPU one as a variant entry (compiler/weights.py variant_name),
which the GPU step program's `weights` map names.
"""

from rfc.artifacts.formats import FORMATS, GGUF_FORMATS, PLANAR_FORMATS
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Plan
from rfc.compiler.errors import CompileError
from rfc.compiler.weights import WeightUse, repacked, variant, variant_name

# GGUF format -> the planar layout the GPU matmuls read it in.
GPU_REPACK: dict[str, str] = {f.base: name for name, f in PLANAR_FORMATS.items()}
_MATMUL_READERS = frozenset({"matmul", "moe_matmul"})


def _readers(plan: Plan) -> dict[str, set[str]]:
    readers: dict[str, set[str]] = {}
    for op in plan.ops:
        for w in op.weights:
            readers.setdefault(w, set()).add(op.kind)
    return readers


def gpu_format(fmt: str, readers: set[str]) -> str:
    """The format the GPU kernels read a weight of GGUF format `fmt` in, given its readers."""
    if readers and readers <= _MATMUL_READERS and fmt in GPU_REPACK:
        return GPU_REPACK[fmt]
    return fmt


def gpu_repack_plan(plan: Plan, uses: tuple[WeightUse, ...]) -> tuple[WeightUse, ...]:
    """The weight uses of a bundle whose targets are all GPUs: matmul weights planar."""
    readers = _readers(plan)
    out = []
    for use in uses:
        want = gpu_format(use.format, readers.get(use.name, set()))
        out.append(use if want == use.format else repacked(use, want))
    return tuple(out)


def gpu_variants(plan: Plan, uses: tuple[WeightUse, ...], stored: tuple[WeightUse, ...]) -> tuple[WeightUse, ...]:
    """The variant entries GPU targets need in a bundle whose plan-named weights are `stored`
    (another target's layouts; `uses` the same weights in their GGUF formats): one for every
    weight stored in a format the GPU kernels do not read."""
    readers = _readers(plan)
    kept = {s.name: s.stored_format for s in stored}
    out = []
    for use in uses:
        want = gpu_format(use.format, readers.get(use.name, set()))
        if kept.get(use.name, use.format) != want:
            out.append(variant(use, want))
    return tuple(out)


def gpu_weight_entries(plan: Plan, layout: WeightLayout) -> dict[str, TensorEntry]:
    """Every layout entry by name, with each plan weight's name mapped to the entry GPU
    targets read for it: the planar variant where one exists, else the entry itself (which
    must then be in a format the GPU kernels read)."""
    entries = layout.by_name()
    readers = _readers(plan)
    out = dict(entries)
    for name in readers:
        e = entries.get(name)
        if e is None:
            continue  # the plan validator reports it
        f = FORMATS.get(e.format)
        base = f.base if f is not None and f.base is not None else e.format
        want = gpu_format(base, readers[name])
        if e.format != want and variant_name(name, want) in entries:
            out[name] = entries[variant_name(name, want)]
        elif e.format not in GGUF_FORMATS and e.format not in PLANAR_FORMATS:
            raise CompileError(f"{name} is stored as {e.format} and the bundle has no layout of it a GPU target reads")
    return out


def gpu_weight_map(plan: Plan, layout: WeightLayout) -> dict[str, str]:
    """StepProgram.weights: plan weight -> the variant entry GPU targets read, where it differs."""
    resolved = gpu_weight_entries(plan, layout)
    return {name: resolved[name].name for name in _readers(plan) if name in resolved and resolved[name].name != name}
