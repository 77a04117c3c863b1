"""The lowerings of RWKV's ops (artifacts/ops/rwkv.py). On the cpu (kernels/cpu_rwkv.h) the lerps are row
functions the step calls per token (`row_op` phases), the token shift splits channels among the team and
the WKVs take (sequence, head) items from a counter; on the GPU the lerps are a block per row, the token
shift a block per sequence and channel tile, the WKVs a block per sequence and head with a thread per row
of the head's state (templates/gpu_token_shift.hip.j2, gpu_lerp.hip.j2, gpu_wkv.hip.j2).

Mixins of the cpu step program's lowering (compiler/codegen/cpu_step.py _Lowering) and of the GPU
planner (compiler/codegen/gpu_plan.py _Planner), as compiler/codegen/ops/recurrent.py's.
"""

from __future__ import annotations

import struct

import numpy as np

from rfc.artifacts.plan import Op
from rfc.compiler.codegen.cpu_phase import Phase
from rfc.compiler.codegen.gpu_kernel import KERNEL_ARGS, MAX_THREADS, KernelSpec
from rfc.compiler.errors import CompileError


def _scale(op: Op) -> float:
    """gla's query scale as a float32 (1 for wkv6, which has none)."""
    return float(np.float32(op.attr("scale"))) if op.attr("mode") == "gla" else 1.0


class CpuLowering:
    def _lerp(self, op: Op) -> Phase:
        (a, b), (out,) = op.inputs, op.outputs
        c = self.width(a)
        bufs = [[self.buf(x), c] for x in (a, b, out)]
        return Phase("row_op", {"fn": "rfc_lerp_row", "rows": self.rows(a), "bufs": bufs, "w": self.vec(op.weights[0]),
                                "consts": [c, int(op.attr("part"))]}, {a, b}, {out})  # fmt: skip

    def _lerp_data(self, op: Op) -> Phase:
        (a, b, m), (out,) = op.inputs, op.outputs
        c = self.width(a)
        bufs = [[self.buf(a), c], [self.buf(b), c], [self.buf(m), self.width(m)], [self.buf(out), c]]
        return Phase("row_op", {"fn": "rfc_lerp_data_row", "rows": self.rows(a), "bufs": bufs, "w": [],
                                "consts": [c, int(op.attr("part"))]}, {a, b, m}, {out})  # fmt: skip

    def _sigmoid(self, op: Op) -> Phase:
        x = op.inputs[0]
        return Phase("sigmoid", {"x": self.buf(x), "out": self.buf(op.outputs[0]), "width": self.width(x),
                                 "rows": self.rows(x)}, {x}, set(op.outputs))  # fmt: skip

    def _token_shift(self, op: Op) -> Phase:
        (x,), (out,) = op.inputs, op.outputs
        index = int(op.attrs["state"])
        return Phase("token_shift", {"x": self.buf(x), "out": self.buf(out), "c": self.width(x),
                                     "state": self.plan.state.offset(index)},
                     {x, f"@state{index}"}, {out, f"@state{index}"})  # fmt: skip

    def _wkv6(self, op: Op) -> Phase:
        (r, k, v, w), (out,) = op.inputs, op.outputs
        index, gla = int(op.attrs["state"]), op.attr("mode") == "gla"
        u, decay = ([], op.weights[0]) if gla else op.weights
        return Phase("wkv6", {"r": self.buf(r), "k": self.buf(k), "v": self.buf(v), "w": self.buf(w),
                              "out": self.buf(out), "h": int(op.attrs["n_heads"]), "hkv": int(op.attrs["n_kv_heads"]),
                              "s": int(op.attrs["head_dim"]), "u": self.vec(u) if u else [], "decay": self.vec(decay),
                              "gla": int(gla), "scale": _scale(op), "state": self.plan.state.offset(index),
                              "counter": self.counter()},
                     {r, k, v, w, f"@state{index}"}, {out, f"@state{index}"})  # fmt: skip

    def _wkv7(self, op: Op) -> Phase:
        (r, w, k, v, a), (out, bonus) = op.inputs, op.outputs
        index = int(op.attrs["state"])
        return Phase("wkv7", {"r": self.buf(r), "w": self.buf(w), "k": self.buf(k), "v": self.buf(v), "a": self.buf(a),
                              "out": self.buf(out), "bonus": self.buf(bonus), "h": int(op.attrs["n_heads"]),
                              "s": int(op.attrs["head_dim"]), "vecs": [self.vec(x) for x in op.weights],
                              "state": self.plan.state.offset(index), "counter": self.counter()},
                     {r, w, k, v, a, f"@state{index}"}, {out, bonus, f"@state{index}"})  # fmt: skip


class GpuLowering:
    def _lerp(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        c, part = self._width(op.inputs[0]), int(op.attr("part"))
        return self._rowwise(op, "gpu_lerp.hip.j2", f"rfc_lerp_{c}_p{part}", c, part=part, data=False)

    def _lerp_data(self, op: Op) -> KernelSpec:
        c, mw, part = self._width(op.inputs[0]), self._width(op.inputs[2]), int(op.attr("part"))
        return self._rowwise(op, "gpu_lerp.hip.j2", f"rfc_lerp_data_{c}_m{mw}_p{part}", c, part=part, mw=mw, data=True)

    def _sigmoid(self, op: Op) -> KernelSpec:
        width = self._width(op.inputs[0])
        return self._rowwise(op, "gpu_sigmoid.hip.j2", f"rfc_sigmoid_{width}", width)

    def _token_shift(self, op: Op) -> KernelSpec:
        c = self._width(op.inputs[0])
        threads = self._row_threads(c)
        name = f"rfc_token_shift_{c}"
        params = {"name": name, "threads": threads, "c": c, **self._state_params(op)}
        return KernelSpec(name, "gpu_token_shift.hip.j2", params, KERNEL_ARGS["token_shift"], threads,
                          (("n_seqs", 1), (c, threads)))  # fmt: skip

    def _wkv_heads(self, op: Op) -> tuple[int, int, int]:
        for w in op.weights:
            self._f32_vector(op, w)
        h, s = int(op.attrs["n_heads"]), int(op.attrs["head_dim"])
        if s > MAX_THREADS:
            raise CompileError(
                f"the GPU {op.kind} runs a thread per state row: a head size of {s} is over {MAX_THREADS}"
            )
        return h, s, self._row_threads(s)

    def _wkv6(self, op: Op) -> KernelSpec:
        h, s, threads = self._wkv_heads(op)
        hkv, gla = int(op.attrs["n_kv_heads"]), op.attr("mode") == "gla"
        scale = _scale(op)
        name = f"rfc_wkv6_{h}x{hkv}x{s}" + (
            f"_gla{struct.unpack('<I', struct.pack('<f', scale))[0]:08x}" if gla else ""
        )
        params = {"name": name, "threads": threads, "mode": "gla" if gla else "wkv6", "h_count": h, "hkv": hkv, "s": s,
                  "scale": scale, **self._state_params(op)}  # fmt: skip
        args = tuple(a for a in KERNEL_ARGS["wkv6"] if not gla or a[0] != "u")
        return KernelSpec(name, "gpu_wkv.hip.j2", params, args, threads, (("n_seqs", 1), (h, 1)))

    def _wkv7(self, op: Op) -> KernelSpec:
        h, s, threads = self._wkv_heads(op)
        name = f"rfc_wkv7_{h}x{s}"
        params = {"name": name, "threads": threads, "mode": "wkv7", "h_count": h, "s": s, **self._state_params(op)}
        return KernelSpec(name, "gpu_wkv.hip.j2", params, KERNEL_ARGS["wkv7"], threads, (("n_seqs", 1), (h, 1)))
