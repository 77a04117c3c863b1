"""Stage 5: kernel codegen. Renders templates/ for one target and builds them.

`build_target` is the entry point; each target family has a module (cpu.py, gpu.py) with a
`build(inp: CodegenInput) -> dict` that writes its files under `kernels/<target>/` in the
bundle and returns the target's manifest entry.
"""

from dataclasses import dataclass, field

from rfc.artifacts.bundle import BundleWriter
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Plan
from rfc.compiler.spec import HParams
from rfc.compiler.codegen.cache import BuildCache
from rfc.compiler.targets import Family, Target


@dataclass(frozen=True)
class CodegenInput:
    target: Target
    hparams: HParams
    plan: Plan
    layout: WeightLayout
    writer: BundleWriter
    cache: BuildCache | None  # build cache (None: no caching)
    # plan weight -> the layout entry this target reads, where not the plan's own name (the
    # weight planner's map: compiler/weight_plan.py); the step program records it
    weights: dict[str, str] = field(default_factory=dict)
    # the cpu library also exports each op's kernel alone (CompileOptions.op_exports)
    op_exports: bool = False

    @property
    def bundle_dir(self) -> str:
        """Relative folder in the bundle for this target's files."""
        return f"kernels/{self.target.name}"

    def weight_entries(self) -> dict[str, TensorEntry]:
        """The entries this target reads, by plan weight name (every entry of the layout is
        there under its own name too)."""
        return weight_entries(self.layout, self.weights)


def weight_entries(layout: WeightLayout, weights: dict[str, str]) -> dict[str, TensorEntry]:
    entries = layout.by_name()
    return {**entries, **{name: entries[entry] for name, entry in weights.items()}}


def build_target(inp: CodegenInput) -> dict:
    if inp.target.family is Family.CPU:
        from rfc.compiler.codegen import cpu

        return cpu.build(inp)
    from rfc.compiler.codegen import gpu

    return gpu.build(inp)
