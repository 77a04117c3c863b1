"""The op registry: every op a plan may hold, each declared once by an OpDef
(artifacts/ops/descriptor.py) in the module of its family. The validator, the reference
device, the cpu and GPU code generators and the kernel test kit all read it.

Adding an op: its OpDef in a family module here (a new family: a new module, added to
_FAMILIES), its numpy handler in runtime/devices/reference.py, its cpu and GPU lowerings, its
templates, and its tests (docs/design.md, "Adding an op", has the list).
"""

from enum import Enum

from rfc.artifacts.ops import activations, altup, core, hc, mla, moe, recurrent, rwkv
from rfc.artifacts.ops.core import GLU_ACTIVATIONS, ROPE_STYLES, ROPE_TABLE, same_shape
from rfc.artifacts.ops.descriptor import I32, PTR, Args, CpuPart, GpuPart, OpDef, OpSchema
from rfc.artifacts.ops.moe import MOE_GATINGS
from rfc.artifacts.ops.view import MAX_WIDTH, OpView, PlanError

_FAMILIES = (core, activations, moe, mla, recurrent, altup, hc, rwkv)

OP_DEFS: dict[str, OpDef] = {}
for _family in _FAMILIES:
    for _d in _family.DEFS:
        assert _d.kind not in OP_DEFS, f"op {_d.kind} is declared twice"
        OP_DEFS[_d.kind] = _d


class _Kind(str, Enum):
    __str__ = str.__str__  # the name itself, not OpKind.X


# Every op kind a plan may hold, made from the registry. A str: an Op's kind compares equal to
# its name, and a table keyed by kind finds it by name, so plans serialize as plain names.
OpKind = _Kind("OpKind", [(kind.upper(), kind) for kind in OP_DEFS])

# Each kind's schema: arity, weights, attributes (the plan contract; artifacts/plan.py).
OPS: dict[OpKind, OpSchema] = {OpKind(kind): d.schema for kind, d in OP_DEFS.items()}

__all__ = [
    "GLU_ACTIVATIONS",
    "I32",
    "MAX_WIDTH",
    "MOE_GATINGS",
    "OPS",
    "OP_DEFS",
    "PTR",
    "ROPE_STYLES",
    "ROPE_TABLE",
    "Args",
    "CpuPart",
    "GpuPart",
    "OpDef",
    "OpKind",
    "OpSchema",
    "OpView",
    "PlanError",
    "same_shape",
]
