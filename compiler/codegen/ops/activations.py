"""The lowerings of the activations family (artifacts/ops/activations.py): gemma's final-logit
soft-capping, the scalar multipliers, apertus's xIELU, the ungated FFNs' GELU and ReLU, the Q/K/V clamp,
mpt's per-channel division. Each is a row-wise
kernel on both targets.

The classes are mixins of the cpu step program's lowering (compiler/codegen/cpu_step.py
_Lowering) and of the GPU planner (compiler/codegen/gpu_plan.py _Planner): their methods are the
ones the ops' descriptors name (CpuPart.lower, GpuPart.lower) and use the helpers of those
classes (buffer indices and widths, weight vectors, row-wise kernel specs).
"""

from __future__ import annotations

import math

import numpy as np

from rfc.artifacts.plan import Op
from rfc.compiler.codegen.cpu_phase import Phase, f32_literal
from rfc.compiler.codegen.gpu_kernel import KernelSpec
from rfc.compiler.errors import CompileError


class CpuLowering:
    def _scale(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase("scale",
                     {"x": self.buf(x), "out": self.buf(op.outputs[0]), "width": self.width(x), "rows": self.rows(x),
                      "factor": f32_literal(op.attrs["factor"], "scale factor", signed=True)}, {x},
                     set(op.outputs))  # fmt: skip

    def _clamp(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase("clamp",
                     {"x": self.buf(x), "out": self.buf(op.outputs[0]), "width": self.width(x), "rows": self.rows(x),
                      "limit": f32_literal(op.attrs["limit"], "clamp limit")}, {x}, set(op.outputs))  # fmt: skip

    def _gelu(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase("gelu", {"x": self.buf(x), "out": self.buf(op.outputs[0]), "width": self.width(x),
                              "rows": self.rows(x)}, {x}, set(op.outputs))  # fmt: skip

    def _relu(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase("relu", {"x": self.buf(x), "out": self.buf(op.outputs[0]), "width": self.width(x),
                              "rows": self.rows(x)}, {x}, set(op.outputs))  # fmt: skip

    def _channel_div(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase("channel_div", {"x": self.buf(x), "out": self.buf(op.outputs[0]), "w": self.vec(op.weights[0]),
                                     "width": self.width(x), "rows": self.rows(x)}, {x}, set(op.outputs))  # fmt: skip

    def _xielu(self, op: Op) -> Phase:
        x = op.inputs[0]
        # validate_plan bounded the four to finite float32s of magnitude <= 1e6; C literals of them
        consts = {k: float(np.float32(op.attrs[k])) for k in ("alpha_n", "alpha_p", "beta", "eps")}
        return Phase("xielu",
                     {"x": self.buf(x), "out": self.buf(op.outputs[0]), "width": self.width(x), "rows": self.rows(x),
                      **consts}, {x}, set(op.outputs))  # fmt: skip

    def _softcap(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase("softcap",
                     {"x": self.buf(x), "out": self.buf(op.outputs[0]), "width": self.width(x), "rows": self.rows(x),
                      "cap": f32_literal(op.attrs["cap"], "softcap cap")}, {x}, set(op.outputs))  # fmt: skip


class GpuLowering:
    def _scale(self, op: Op) -> KernelSpec:
        width, factor = self._width(op.inputs[0]), float(op.attrs["factor"])
        if not (math.isfinite(factor) and factor != 0):
            raise CompileError(f"scale factor {factor} is not a finite nonzero number")
        # the factor is compiled in: one kernel per (width, factor), its bits in the name
        name = f"rfc_scale_{width}_" + f"{factor:.9g}".replace(".", "p").replace("-", "m").replace("+", "")
        return self._rowwise(op, "gpu_scale.hip.j2", name, width, factor=factor)

    def _clamp(self, op: Op) -> KernelSpec:
        width, limit = self._width(op.inputs[0]), np.float32(op.attrs["limit"])
        # the limit is compiled in: one kernel per (width, limit), its bits in the name
        name = f"rfc_clamp_{width}_{int(limit.view(np.uint32)):08x}"
        return self._rowwise(op, "gpu_clamp.hip.j2", name, width, limit=float(limit))

    def _gelu(self, op: Op) -> KernelSpec:
        width = self._width(op.inputs[0])
        return self._rowwise(op, "gpu_gelu.hip.j2", f"rfc_gelu_{width}", width)

    def _relu(self, op: Op) -> KernelSpec:
        width = self._width(op.inputs[0])
        return self._rowwise(op, "gpu_relu.hip.j2", f"rfc_relu_{width}", width)

    def _channel_div(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        width = self._width(op.inputs[0])
        return self._rowwise(op, "gpu_channel_div.hip.j2", f"rfc_channel_div_{width}", width)

    def _xielu(self, op: Op) -> KernelSpec:
        width = self._width(op.inputs[0])
        # the four float32 constants are compiled in (they differ per layer): one kernel per
        # (width, constants), their bits in the name; validate_plan bounded them to finite values
        consts = {k: np.float32(op.attrs[k]) for k in ("alpha_n", "alpha_p", "beta", "eps")}
        name = f"rfc_xielu_{width}_" + "_".join(f"{int(v.view(np.uint32)):08x}" for v in consts.values())
        return self._rowwise(op, "gpu_xielu.hip.j2", name, width, **{k: float(v) for k, v in consts.items()})

    def _softcap(self, op: Op) -> KernelSpec:
        width = self._width(op.inputs[0])
        return self._rowwise(op, "gpu_softcap.hip.j2", f"rfc_softcap_{width}", width, cap=float(op.attrs["cap"]))
