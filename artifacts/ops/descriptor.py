"""What one op is, declared once: an OpDef (docs/design.md, "Ops").

An op's descriptor holds its whole contract and names every part that implements it:

- `schema`: arity, weights and attributes (required, and optional with their defaults) and
  the doc string that defines the op's math, which every implementation follows;
- `check`: its shape and attribute rule, which the bundle validator runs on every op of a plan
  before any kernel does (artifacts/validate.py);
- `reference`: the numpy handler, a method of runtime/devices/reference.py's ReferenceDevice
  (the oracle every kernel is tested against);
- `cpu`: the templates whose rendering holds its cpu kernel, the step program's lowering of it,
  the optional attributes the cpu kernel takes and which weights it reads as float vectors;
- `gpu`: the templates of its GPU kernel, the GPU planner's lowering of it and the kernel's
  argument list, which is part of the bundle contract: the runtime binds a launch's arguments
  by these names, the planner the op's outputs and weights to the parameters named for them.

Both lowerings of a family's ops are in compiler/codegen/ops/<family>.py (mixins of the cpu
step program's _Lowering and the GPU planner's _Planner); the core family's and the matmul-like
ops' (matmul, moe_matmul, head_matmul, which share the matmul tiling) in
compiler/codegen/cpu_step.py and gpu_plan.py.

Parts that live above artifacts/ (the runtime's handler, the compiler's lowerings) are named
here, not imported: artifacts/ imports neither. Each reader resolves the names once, at
import, and refuses a registry it cannot complete; tests/unit/test_op_registry.py checks that
every descriptor has every part for every target family.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PTR, I32 = "ptr", "i32"  # a kernel argument's kind: a device pointer or a 32-bit integer

Args = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class OpSchema:
    inputs: int
    outputs: int
    weights: tuple[int, int]  # (at least, at most)
    attrs: tuple[str, ...] = ()  # required
    optional: tuple[tuple[str, Any], ...] = ()  # (name, default)
    doc: str = ""


@dataclass(frozen=True)
class CpuPart:
    """The cpu targets' implementation."""

    templates: tuple[str, ...]  # templates/ files whose rendering holds the kernel (compiler/codegen/cpu.py)
    lower: str  # the step program's lowering: a method of compiler/codegen/cpu_step.py's _Lowering (or its mixins)
    # optional attributes the kernel takes; any other optional attribute must keep its default
    attrs: tuple[str, ...] = ()
    # those of `attrs` (and of the required ones) that may differ between ops of this kind in one
    # plan: arguments in the step program; every other attribute must be the same for all of them
    per_op: tuple[str, ...] = ()
    # the step program reads the op's weights from this index on as float vectors (norms, biases,
    # decays: compiler/codegen/cpu_step.py vector_weights); None: it reads none of them so
    vectors_from: int | None = None


@dataclass(frozen=True)
class GpuPart:
    """The GPU targets' implementation (one template source for HIP and CUDA)."""

    templates: tuple[str, ...]  # templates/ files of the op's own kernel, the first the usual one
    lower: str  # the planner's lowering: a method of compiler/codegen/gpu_plan.py's _Planner (or its mixins)
    args: Args  # the kernel's declared parameters, in order (a lowering may leave out optional ones)
    # the parameters that take the op's outputs and its weights, in the op's order (the others of
    # `args` that are buffers take its inputs): how the planner binds a launch (gpu_plan._arg_slot)
    outputs: tuple[str, ...] = ("out",)
    weights: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpDef:
    kind: str
    schema: OpSchema
    check: Callable  # (OpView) -> None: raises PlanError for an op its buffers or weights do not fit
    reference: str  # the numpy handler: a method of runtime/devices/reference.py's ReferenceDevice
    cpu: CpuPart
    gpu: GpuPart
