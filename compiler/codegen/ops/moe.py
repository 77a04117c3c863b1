"""The lowerings of the mixture-of-experts family (artifacts/ops/moe.py) but its matmul: the
router (which on the cpu also groups the step's slots by expert for the expert matmuls), the
combination, and the per-expert and per-slot biases and scales. The expert matmul is planned
beside the dense matmul, with its tiling (compiler/codegen/cpu_step.py, gpu_plan.py).

The classes are mixins of the cpu step program's lowering (compiler/codegen/cpu_step.py
_Lowering) and of the GPU planner (compiler/codegen/gpu_plan.py _Planner): their methods are the
ones the ops' descriptors name (CpuPart.lower, GpuPart.lower) and use the helpers of those
classes (buffer indices and widths, weight vectors, row-wise kernel specs).
"""

from __future__ import annotations

import dataclasses
import math

from rfc.artifacts.plan import MOE_GATINGS, Op
from rfc.compiler.codegen.cpu_phase import Phase
from rfc.compiler.codegen.gpu_kernel import KernelSpec
from rfc.compiler.errors import CompileError


class CpuLowering:
    # -- mixture of experts (cpu_moe.c.j2, cpu_moe_matmul.c.j2) ------------------------------------
    # moe_route also groups the step's slots by expert (one thread: T x n_expert work); the
    # expert matmuls read that grouping ("@moe"), so their ids must be the last route's.
    def _moe_route(self, op: Op) -> Phase:
        (logits,), (ids, weights) = op.inputs, op.outputs
        self.moe_ids = ids
        return Phase("moe_route", {"logits": self.buf(logits), "ids": self.buf(ids), "w": self.buf(weights),
                                   "n_expert": self.width(logits), "n_used": int(op.attrs["n_used"]),
                                   # the router's variant (cpu_moe.c.j2 numbers the gatings as MOE_GATINGS lists them)
                                   "gating": MOE_GATINGS.index(op.attr("gating")), "norm": int(bool(op.attr("norm"))),
                                   "scale": float(op.attr("scale")), "groups": int(op.attr("groups")),
                                   "groups_used": int(op.attr("groups_used")), "id_div": int(op.attr("id_div")),
                                   "pick": op.attr("pick"),
                                   # the selection bias, the experts' output scales (expert_scale: the last weight)
                                   "bias": self.vec(op.weights[0])
                                   if len(op.weights) > int(bool(op.attr("expert_scale"))) else [],
                                   "escale": self.vec(op.weights[-1]) if op.attr("expert_scale") else []},
                     {logits}, {ids, weights, "@moe"})  # fmt: skip

    def _moe_combine(self, op: Op, add: Op | None = None) -> Phase:
        (y, w), (out,) = op.inputs, op.outputs
        acc = add.outputs[0] if add is not None else None
        return Phase("moe_combine", {"y": self.buf(y), "w": self.buf(w), "out": self.buf(out), "n_used": self.width(w),
                                     "width": self.width(out), "rows": self.rows(out),
                                     "accum": self.buf(acc) if acc else -1},
                     {y, w} | ({acc} if acc else set()), {out} | ({acc} if acc else set()))  # fmt: skip

    def _moe_add_bias(self, op: Op) -> Phase:
        (y, ids), (out,) = op.inputs, op.outputs
        n_used = self.width(ids)
        return Phase("moe_add_bias", {"y": self.buf(y), "ids": self.buf(ids), "out": self.buf(out), "n_used": n_used,
                                      "width": self.width(y) // n_used, "w": self.entries[op.weights[0]].offset},
                     {y, ids}, {out})  # fmt: skip

    def _moe_scale(self, op: Op) -> Phase:
        (y, ids), (out,) = op.inputs, op.outputs
        n_used = self.width(ids)
        return Phase("moe_scale", {"y": self.buf(y), "ids": self.buf(ids), "out": self.buf(out), "n_used": n_used,
                                   "width": self.width(y) // n_used, "scale": self.vec(op.weights[0])},
                     {y, ids}, {out})  # fmt: skip

    def _slot_scale(self, op: Op) -> Phase:
        (y, w), (out,) = op.inputs, op.outputs
        n_used = self.width(w)
        return Phase("slot_scale", {"y": self.buf(y), "w": self.buf(w), "out": self.buf(out), "n_used": n_used,
                                    "width": self.width(y) // n_used, "rows": self.rows(y)},
                     {y, w}, {out})  # fmt: skip


class GpuLowering:
    def _moe_route(self, op: Op) -> KernelSpec:
        """The router's variant is the kernel's: gating, groups, norm and scale are constants of
        it, the selection bias (where there is one) an argument."""
        n_expert, n_used = self._width(op.inputs[0]), int(op.attrs["n_used"])
        gating, norm, scale = op.attr("gating"), bool(op.attr("norm")), float(op.attr("scale"))
        groups, groups_used = int(op.attr("groups")), int(op.attr("groups_used"))
        id_div = int(op.attr("id_div"))  # grovemoe's adjugate experts: the chosen ids divided
        if op.attr("pick") == "index":  # graniteswitch: the expert the first logit names
            spec = self._rowwise(op, "gpu_moe_route_index.hip.j2", f"rfc_moe_route_{n_expert}_index", 1,
                                 n_expert=n_expert)  # fmt: skip
            return dataclasses.replace(spec, args=tuple(a for a in spec.args if a[0] not in ("bias", "escale")))
        if gating not in MOE_GATINGS or not math.isfinite(scale) or groups < 1 or n_expert % groups:
            raise CompileError(f"no GPU kernel for moe_route with gating {gating!r}, scale {scale}, {groups} groups")
        has_escale = bool(op.attr("expert_scale"))  # the experts' output scales: the last weight (gemma4)
        has_bias = len(op.weights) > int(has_escale)
        for w in op.weights:
            self._f32_vector(op, w)
        name = (
            f"rfc_moe_route_{n_expert}_{n_used}"
            + ("" if gating == "softmax" else f"_{gating}")
            + ("_bias" if has_bias else "")
            + ("_escale" if has_escale else "")
            + (f"_g{groups}x{groups_used}" if groups > 1 else "")
            + ("" if norm else "_raw")
            + ("" if scale == 1.0 else "_scaled")
            + (f"_div{id_div}" if id_div > 1 else "")
        )
        spec = self._rowwise(op, "gpu_moe_route.hip.j2", name, n_expert, n_expert=n_expert, n_used=n_used,
                             gating=gating, norm=norm, scale=scale, groups=groups, groups_used=groups_used,
                             per_group=n_expert // groups, has_bias=has_bias, has_escale=has_escale,
                             id_div=id_div)  # fmt: skip
        absent = {arg for arg, on in (("bias", has_bias), ("escale", has_escale)) if not on}
        return dataclasses.replace(spec, args=tuple(a for a in spec.args if a[0] not in absent))

    def _moe_combine(self, op: Op) -> KernelSpec:
        width, n_used = self._width(op.outputs[0]), self._width(op.inputs[1])
        return self._rowwise(op, "gpu_moe_combine.hip.j2", f"rfc_moe_combine_{n_used}x{width}", width, n_used=n_used)

    def _moe_add_bias(self, op: Op) -> KernelSpec:
        entry = self.tensors[op.weights[0]]
        if entry.format != "F32":
            raise CompileError(f"GPU moe_add_bias reads {op.weights[0]} as F32, but it is stored as {entry.format}")
        n_used = self._width(op.inputs[1])
        width = self._width(op.inputs[0]) // n_used
        return self._rowwise(
            op, "gpu_moe_add_bias.hip.j2", f"rfc_moe_add_bias_{n_used}x{width}", n_used * width, n_used=n_used, n=width
        )

    def _moe_scale(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        n_used = self._width(op.inputs[1])
        width = self._width(op.inputs[0]) // n_used
        return self._rowwise(
            op, "gpu_moe_scale.hip.j2", f"rfc_moe_scale_{n_used}x{width}", n_used * width, n_used=n_used, n=width
        )

    def _slot_scale(self, op: Op) -> KernelSpec:
        n_used = self._width(op.inputs[1])
        width = self._width(op.inputs[0]) // n_used
        return self._rowwise(
            op, "gpu_slot_scale.hip.j2", f"rfc_slot_scale_{n_used}x{width}", n_used * width, n_used=n_used, n=width
        )
