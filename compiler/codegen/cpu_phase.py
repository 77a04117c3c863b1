"""What the cpu step program's lowerings produce (compiler/codegen/cpu_step.py and the family
modules of compiler/codegen/ops/): a Phase, one call of templates/cpu_step.c.j2 with the buffers
it reads and writes (the barriers between phases follow from them), and the check of a float
that becomes a C literal."""

import math
from dataclasses import dataclass, field

from rfc.compiler.errors import CompileError


@dataclass
class Phase:
    kind: str
    params: dict
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)

    def as_template(self) -> dict:
        return {"kind": self.kind, **self.params}


def f32_literal(value: float, what: str, *, signed: bool = False) -> float:
    """A positive attribute (any sign with `signed`) that becomes a float literal in C: a normal
    float32, so that it is neither rounded to zero (which the kernels read as "off") nor to infinity."""
    v = float(value)
    if not math.isfinite(v) or not 1e-30 <= (abs(v) if signed else v) <= 1e30:
        raise CompileError(f"{what} = {v} is outside the float32 range the cpu step program takes")
    return v
