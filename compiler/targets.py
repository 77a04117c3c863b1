"""Compile targets, as data. Kernel generation per target family comes with codegen."""

import re
from dataclasses import dataclass

from rfc.compiler.errors import CompileError


@dataclass(frozen=True)
class Target:
    name: str  # as given on the command line: "cpu", "gfx1100", "sm_90"
    family: str  # "cpu", "hip" or "cuda"
    wave_size: int  # threads per wavefront/warp (1 for cpu)


_GFX = re.compile(r"gfx[0-9]{2,3}[0-9a-f]")
_SM = re.compile(r"sm_[0-9]{2,3}a?")


def parse_target(name: str) -> Target:
    if name == "cpu":
        return Target(name, "cpu", 1)
    if _GFX.fullmatch(name):
        # RDNA (gfx10xx, gfx11xx, gfx12xx) runs wave32; CDNA/GCN (gfx9xx) wave64.
        return Target(name, "hip", 32 if name[3:5] in ("10", "11", "12") else 64)
    if _SM.fullmatch(name):
        return Target(name, "cuda", 32)
    raise CompileError(f"unknown target '{name}' (expected cpu, gfx* such as gfx1100, or sm_* such as sm_90)")


def parse_targets(names: tuple[str, ...]) -> tuple[Target, ...]:
    targets = []
    for n in names or ("cpu",):
        t = parse_target(n)
        if t not in targets:
            targets.append(t)
    return tuple(targets)
