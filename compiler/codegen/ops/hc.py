"""The lowerings of hy_v4's hyper-connection ops (artifacts/ops/hc.py): on the cpu each op is a row
function of kernels/cpu_hc.h that the step calls per token (a `row_op` phase); on the GPU a block
per token (templates/gpu_hc_*.hip.j2), its constants compiled in and named in the kernel's name.

Mixins of the cpu step program's lowering (compiler/codegen/cpu_step.py _Lowering) and of the GPU
planner (compiler/codegen/gpu_plan.py _Planner), as compiler/codegen/ops/altup.py's.
"""

from __future__ import annotations

import struct

import numpy as np

from rfc.artifacts.plan import Op
from rfc.compiler.codegen.cpu_phase import Phase
from rfc.compiler.codegen.gpu_kernel import KernelSpec

GATE_CONSTS = ("scale_pre", "scale_post", "magnitude", "eps")


def _f32(op: Op, name: str) -> float:
    return float(np.float32(op.attr(name)))


def _hex(x: float) -> str:
    return f"{struct.unpack('<I', struct.pack('<f', x))[0]:08x}"


def hc_consts(op: Op, width) -> list:
    """The constants after a kernels/cpu_hc.h row function's buffers and weight: (n, m, the four gate
    constants as float32 and post_eps as 0 or 1) for hc_gates, (n, E, the gates' width) for hc_reduce, (n,
    scale, eps, iters) for hc_comb, (n, E) for hc_post, hc_mix_post and hc_mean."""
    if op.kind in ("res_mix", "put_cols"):
        return res_consts(op, width)
    n = int(op.attrs["streams"])
    if op.kind == "hc_gates":
        return [n, width(op.inputs[0]), *(_f32(op, c) for c in GATE_CONSTS), int(bool(op.attr("post_eps")))]
    if op.kind == "hc_comb":
        return [n, _f32(op, "scale"), _f32(op, "eps"), int(op.attrs["iters"])]
    if op.kind == "hc_mean":
        return [n, width(op.outputs[0])]
    if op.kind == "hc_reduce":
        return [n, width(op.outputs[0]), width(op.inputs[1])]
    return [n, width(op.inputs[0])]


def res_consts(op: Op, width) -> list:
    """The constants after a res_mix / put_cols row function's buffers and weight: (n, E, eps as
    float32, the stack's width) for res_mix, (W, offset, out's width) for put_cols (the widths the
    T-row exports step by)."""
    if op.kind == "res_mix":
        return [int(op.attrs["streams"]), width(op.outputs[0]), _f32(op, "eps"), width(op.inputs[0])]
    return [width(op.inputs[0]), int(op.attrs["offset"]), width(op.outputs[0])]


class CpuLowering:
    def _hc_row(self, op: Op) -> Phase:
        bufs = [[self.buf(b), self.width(b)] for b in (*op.inputs, *op.outputs)]
        return Phase("row_op", {"fn": f"rfc_{op.kind}_row", "rows": self.rows(op.inputs[0]), "bufs": bufs,
                                "w": self.vec(op.weights[0]) if op.weights else [],
                                "consts": hc_consts(op, self.width)},
                     set(op.inputs), set(op.outputs))  # fmt: skip


class GpuLowering:
    def _hc_gates(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        n, m = int(op.attrs["streams"]), self._width(op.inputs[0])
        consts = {c: _f32(op, c) for c in GATE_CONSTS}
        name = f"rfc_hc_gates_{n}x{m}_" + "_".join(_hex(v) for v in consts.values())
        if not op.attr("post_eps"):  # mHC's post gates without the eps
            return self._rowwise(op, "gpu_hc_gates.hip.j2", name + "_np", m, n=n, m=m, no_post_eps=True, **consts)
        return self._rowwise(op, "gpu_hc_gates.hip.j2", name, m, n=n, m=m, **consts)

    def _hc_reduce(self, op: Op) -> KernelSpec:
        n, e, gw = int(op.attrs["streams"]), self._width(op.outputs[0]), self._width(op.inputs[1])
        return self._rowwise(op, "gpu_hc_reduce.hip.j2", f"rfc_hc_reduce_{n}x{e}_g{gw}", e, n=n, e=e, gw=gw)

    def _hc_post(self, op: Op) -> KernelSpec:
        n, e = int(op.attrs["streams"]), self._width(op.inputs[0])
        return self._rowwise(op, "gpu_hc_post.hip.j2", f"rfc_hc_post_{n}x{e}", e, n=n, e=e)

    def _hc_comb(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        n, iters = int(op.attrs["streams"]), int(op.attrs["iters"])
        scale, eps = _f32(op, "scale"), _f32(op, "eps")
        name = f"rfc_hc_comb_{n}_i{iters}_s{_hex(scale)}_e{_hex(eps)}"
        return self._rowwise(op, "gpu_hc_comb.hip.j2", name, n * n, n=n, iters=iters, scale=scale, eps=eps)

    def _hc_mix_post(self, op: Op) -> KernelSpec:
        n, e = int(op.attrs["streams"]), self._width(op.inputs[0])
        return self._rowwise(op, "gpu_hc_mix_post.hip.j2", f"rfc_hc_mix_post_{n}x{e}", e, n=n, e=e)

    def _hc_mean(self, op: Op) -> KernelSpec:
        n, e = int(op.attrs["streams"]), self._width(op.outputs[0])
        return self._rowwise(op, "gpu_hc_mean.hip.j2", f"rfc_hc_mean_{n}x{e}", e, n=n, e=e)

    def _res_mix(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        n, e, s = int(op.attrs["streams"]), self._width(op.outputs[0]), self._width(op.inputs[0])
        eps = _f32(op, "eps")
        name = f"rfc_res_mix_{n}of{s // e}x{e}_e{_hex(eps)}"
        return self._rowwise(op, "gpu_res_mix.hip.j2", name, e, n=n, e=e, stride=s, eps=eps)

    def _put_cols(self, op: Op) -> KernelSpec:
        w, n, off = self._width(op.inputs[0]), self._width(op.outputs[0]), int(op.attrs["offset"])
        return self._rowwise(op, "gpu_put_cols.hip.j2", f"rfc_put_cols_{w}_at{off}of{n}", w, w=w, n=n, offset=off)
