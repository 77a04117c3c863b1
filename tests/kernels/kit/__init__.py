"""The kernel tests' kit: a compiled target's kernels run one plan op at a time, behind the
reference device's op-by-op interface (alloc, upload_batch, weight, launch, download; the
plan interpreted by runtime.core.device.InterpretedDevice), so a test compares a kernel with the
reference op on the same inputs, and a whole model op by op with the step program.

- gpu.py: each op's kernel as a one-launch program, from the compiler's argument slots, bound
  by the runtime's binder (the runtime itself only runs whole step programs);
- cpu.py: the cpu library's per-op exports, through ctypes signatures of their own.
"""

from rfc.artifacts.plan import Op


def op_key(op: Op) -> tuple:
    """Identifies an op by content (Op holds a dict, so it is not hashable itself)."""
    return (op.kind, op.inputs, op.outputs, op.weights, tuple(sorted(op.attrs.items())))
