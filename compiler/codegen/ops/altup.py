"""The lowerings of gemma3n's AltUp family (artifacts/ops/altup.py): on the cpu each op is a row
function of kernels/cpu_altup.h that the step calls per token (a `row_op` phase); on the GPU a
block per token.

The classes are mixins of the cpu step program's lowering (compiler/codegen/cpu_step.py
_Lowering) and of the GPU planner (compiler/codegen/gpu_plan.py _Planner): their methods are the
ones the ops' descriptors name (CpuPart.lower, GpuPart.lower) and use the helpers of those
classes (buffer indices and widths, weight vectors, row-wise kernel specs).
"""

from __future__ import annotations

import numpy as np

from rfc.artifacts.plan import Op
from rfc.compiler.codegen.cpu_phase import Phase
from rfc.compiler.codegen.gpu_kernel import KernelSpec


class CpuLowering:
    # -- gemma3n's AltUp ops and activation sparsity (kernels/cpu_altup.h): a row function per token
    def _altup_row(self, op: Op) -> Phase:
        bufs = [[self.buf(b), self.width(b)] for b in (*op.inputs, *op.outputs)]
        return Phase("row_op", {"fn": f"rfc_{op.kind}_row", "rows": self.rows(op.inputs[0]), "bufs": bufs,
                                "w": self.vec(op.weights[0]) if op.weights else [],
                                "consts": altup_consts(op, self.width)},
                     set(op.inputs), set(op.outputs))  # fmt: skip

    _altup_stack = _altup_predict = _altup_correct = _altup_add = _altup_merge = _gaussian_topk = _altup_row


class GpuLowering:
    # -- gemma3n's AltUp ops (n streams of E side by side) and activation sparsity: a block per token
    def _altup(self, op: Op, template: str, **params) -> KernelSpec:
        n = int(op.attrs["n_altup"])
        e = self._width(op.outputs[0] if op.kind == "altup_stack" else op.inputs[0]) // n
        name = f"rfc_{op.kind}_{n}x{e}" + "".join(f"_{k[0]}{v}" for k, v in params.items())
        return self._rowwise(op, template, name, e, n=n, e=e, **params)

    def _altup_stack(self, op: Op) -> KernelSpec:
        return self._altup(op, "gpu_altup_stack.hip.j2")

    def _altup_predict(self, op: Op) -> KernelSpec:
        return self._altup(op, "gpu_altup_predict.hip.j2", active=int(op.attrs["active"]))

    def _altup_correct(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        return self._altup(op, "gpu_altup_correct.hip.j2", active=int(op.attrs["active"]))

    def _altup_add(self, op: Op) -> KernelSpec:
        n = int(op.attrs["n_altup"])
        m = self._width(op.outputs[1]) // (self._width(op.inputs[0]) // n)
        return self._altup(op, "gpu_altup_add.hip.j2", first=int(op.attrs["first"]), m=m)

    def _altup_merge(self, op: Op) -> KernelSpec:
        return self._altup(op, "gpu_altup_merge.hip.j2", active=int(op.attrs["active"]))

    def _gaussian_topk(self, op: Op) -> KernelSpec:
        width, std_mul = self._width(op.inputs[0]), float(np.float32(op.attrs["std_mul"]))
        name = f"rfc_gaussian_topk_{width}_" + f"{std_mul:.9g}".replace(".", "p").replace("-", "m").replace("+", "")
        return self._rowwise(op, "gpu_gaussian_topk.hip.j2", name, width, std_mul=std_mul)


def altup_consts(op: Op, width) -> list:
    """The constants after a kernels/cpu_altup.h row function's buffers and weight: (n, E, and active,
    or first and sub's streams) for the AltUp ops, (width, std_mul as a float32) for gaussian_topk."""
    if op.kind == "gaussian_topk":
        return [width(op.inputs[0]), float(np.float32(op.attrs["std_mul"]))]
    n = int(op.attrs["n_altup"])
    e = width(op.outputs[0] if op.kind == "altup_stack" else op.inputs[0]) // n
    if op.kind == "altup_stack":
        return [n, e]
    if op.kind == "altup_add":
        return [n, e, int(op.attrs["first"]), width(op.outputs[1]) // e]
    return [n, e, int(op.attrs["active"])]
