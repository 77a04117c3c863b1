"""Stage 5: kernel codegen. Renders templates/ for one target and builds them.

`build_target` is the entry point; each target family has a module (cpu.py, gpu.py) with a
`build(inp: CodegenInput) -> dict` that writes its files under `kernels/<target>/` in the
bundle and returns the target's manifest entry.
"""

from dataclasses import dataclass
from pathlib import Path

from rfc.artifacts.bundle import BundleWriter
from rfc.artifacts.layout import WeightLayout
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

    @property
    def bundle_dir(self) -> str:
        """Relative folder in the bundle for this target's files."""
        return f"kernels/{self.target.name}"


def build_target(inp: CodegenInput) -> dict:
    if inp.target.family is Family.CPU:
        from rfc.compiler.codegen import cpu

        return cpu.build(inp)
    from rfc.compiler.codegen import gpu

    return gpu.build(inp)
