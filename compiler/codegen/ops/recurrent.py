"""The lowerings of the recurrent family (artifacts/ops/recurrent.py): LFM2's short convolution,
the conv before Gated DeltaNet and Mamba2, the Gated DeltaNet recurrence and Mamba2's selective
scan. Each reads and writes its per-sequence state: on the cpu a team splits channels or heads,
on the GPU a block per sequence (and channel tile or head).

The classes are mixins of the cpu step program's lowering (compiler/codegen/cpu_step.py
_Lowering) and of the GPU planner (compiler/codegen/gpu_plan.py _Planner): their methods are the
ones the ops' descriptors name (CpuPart.lower, GpuPart.lower) and use the helpers of those
classes (buffer indices and widths, weight vectors, row-wise kernel specs).
"""

from __future__ import annotations

import math
import struct

from rfc.artifacts.plan import Op
from rfc.compiler.codegen.cpu_phase import Phase
from rfc.compiler.codegen.gpu_kernel import GPU_MAX_CONV_KERNEL, KERNEL_ARGS, MAX_THREADS, KernelSpec
from rfc.compiler.errors import CompileError

GPU_MAX_SSM1_SHARED = 4096  # floats of B and C the GPU Mamba-1 scan holds in shared memory (16 KiB)


class CpuLowering:
    # -- LFM2's short conv (kernels/cpu_short_conv.h): channels split among the team, the state
    # tensor at its float offset in each sequence's slot; "@state<i>" orders the phases that touch it
    def _short_conv(self, op: Op) -> Phase:
        (bcx,), (out,) = op.inputs, op.outputs
        e = self.entries[op.weights[0]]
        if e.format != "F32":
            raise CompileError(
                f"short_conv {op.weights[0]}: the cpu step program reads the conv kernel as F32, it is {e.format}"
            )
        index = int(op.attrs["state"])
        return Phase("short_conv", {"bcx": self.buf(bcx), "out": self.buf(out), "c": self.width(out), "k": e.shape[1],
                                    "w": e.offset, "state": self.plan.state.offset(index)},
                     {bcx, f"@state{index}"}, {out, f"@state{index}"})  # fmt: skip

    # -- Gated DeltaNet (kernels/cpu_delta_net.h): the state tensor's float offset in a slot, and
    # "@state<i>" orders the phases that touch it
    def _ssm_conv(self, op: Op) -> Phase:
        (x,), (out,) = op.inputs, op.outputs
        e = self.entries[op.weights[0]]
        if e.format != "F32":
            raise CompileError(
                f"ssm_conv {op.weights[0]}: the cpu step program reads the conv kernel as F32, it is {e.format}"
            )
        index = int(op.attrs["state"])
        bias = self.vec(op.weights[1]) if len(op.weights) > 1 else []  # Mamba2's conv bias (none: NULL)
        return Phase("ssm_conv",
                     {"x": self.buf(x), "out": self.buf(out), "c": self.width(x), "k": e.shape[1], "w": e.offset,
                      "bias": bias, "state": self.plan.state.offset(index)},
                     {x, f"@state{index}"}, {out, f"@state{index}"})  # fmt: skip

    def _ssm_scan(self, op: Op) -> Phase:
        (xbc, dt), (out,) = op.inputs, op.outputs
        index, a = int(op.attrs["state"]), op.attrs
        # Mamba-1's decay per channel and state: cpu_ssm_scan1.h (heads of one row)
        return Phase("ssm_scan1" if op.attr("decay") == "state" else "ssm_scan",
                     {"xbc": self.buf(xbc), "dt": self.buf(dt), "out": self.buf(out), "h": int(a["n_heads"]),
                      "p": int(a["head_dim"]), "g": int(a["n_groups"]), "n": int(a["state_size"]),
                      "a": self.vec(op.weights[0]), "d": self.vec(op.weights[1]),
                      "dt_bias": self.vec(op.weights[2]), "state": self.plan.state.offset(index),
                      "counter": self.counter()},
                     {xbc, dt, f"@state{index}"}, {out, f"@state{index}"})  # fmt: skip

    def _gated_delta_net(self, op: Op) -> Phase:
        (qkv, alpha, beta), (out,) = op.inputs, op.outputs
        index = int(op.attrs["state"])
        return Phase("gated_delta_net", {"qkv": self.buf(qkv), "alpha": self.buf(alpha), "beta": self.buf(beta),
                                         "out": self.buf(out), "hk": int(op.attrs["n_k_heads"]),
                                         "hv": int(op.attrs["n_v_heads"]), "s": int(op.attrs["head_dim"]),
                                         "a": self.vec(op.weights[0]), "dt": self.vec(op.weights[1]),
                                         "eps": float(op.attrs["eps"]), "state": self.plan.state.offset(index),
                                         "counter": self.counter(),
                                         **({"kda": True, "lb": float(op.attr("lower_bound"))}
                                            if op.attr("decay") != "head" else {})},
                     {qkv, alpha, beta, f"@state{index}"}, {out, f"@state{index}"})  # fmt: skip

    def _lightning_attention(self, op: Op) -> Phase:
        (qkv,), (out,) = op.inputs, op.outputs
        index = int(op.attrs["state"])
        return Phase("lightning_attention", {"qkv": self.buf(qkv), "out": self.buf(out), "h": int(op.attrs["n_heads"]),
                                             "d": int(op.attrs["head_dim"]), "decay": self.vec(op.weights[0]),
                                             "state": self.plan.state.offset(index), "counter": self.counter()},
                     {qkv, f"@state{index}"}, {out, f"@state{index}"})  # fmt: skip


class GpuLowering:
    # -- recurrent layers (qwen35): a block per sequence (and channel tile / value head) ---------
    def _state_params(self, op: Op) -> dict:
        if self.plan.state.slot_floats >= 2**31:
            raise CompileError(
                f"a state slot of {self.plan.state.slot_floats} floats is over the GPU kernels' int offsets"
            )
        return {"slot_floats": self.plan.state.slot_floats}

    def _ssm_conv(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        c, k = self._width(op.inputs[0]), self.tensors[op.weights[0]].shape[-1]
        if not 2 <= k <= GPU_MAX_CONV_KERNEL:
            raise CompileError(
                f"the GPU ssm_conv keeps its window in registers: a kernel of {k} taps is over {GPU_MAX_CONV_KERNEL}"
            )
        threads = self._row_threads(c)
        has_bias = len(op.weights) > 1  # Mamba2's conv bias
        if has_bias:
            self._f32_vector(op, op.weights[1])
        name = f"rfc_ssm_conv_{c}x{k}" + ("_bias" if has_bias else "")
        params = {"name": name, "threads": threads, "c": c, "k": k, "has_bias": has_bias, **self._state_params(op)}
        args = tuple(a for a in KERNEL_ARGS["ssm_conv"] if has_bias or a[0] != "bias")
        return KernelSpec(name, "gpu_ssm_conv.hip.j2", params, args, threads, (("n_seqs", 1), (c, threads)))

    def _short_conv(self, op: Op) -> KernelSpec:
        """lfm2's gated short conv: ssm_conv's layout (a thread per channel, the window in
        registers), reading b, c, x from one in_proj row."""
        self._f32_vector(op, op.weights[0])
        c, k = self._width(op.outputs[0]), self.tensors[op.weights[0]].shape[-1]
        if not 2 <= k <= GPU_MAX_CONV_KERNEL:
            raise CompileError(
                f"the GPU short_conv keeps its window in registers: a kernel of {k} taps is over {GPU_MAX_CONV_KERNEL}"
            )
        threads = self._row_threads(c)
        name = f"rfc_short_conv_{c}x{k}"
        params = {"name": name, "threads": threads, "c": c, "k": k, **self._state_params(op)}
        return KernelSpec(
            name, "gpu_short_conv.hip.j2", params, KERNEL_ARGS["short_conv"], threads, (("n_seqs", 1), (c, threads))
        )

    def _gated_delta_net(self, op: Op) -> KernelSpec:
        for w in op.weights:
            self._f32_vector(op, w)
        hk, hv, s = int(op.attrs["n_k_heads"]), int(op.attrs["n_v_heads"]), int(op.attrs["head_dim"])
        if s > MAX_THREADS:
            raise CompileError(
                f"the GPU gated_delta_net runs a thread per state row: a head size of {s} is over {MAX_THREADS}"
            )
        threads = self._row_threads(s)
        kda = op.attr("decay") != "head"
        lb = float(op.attr("lower_bound")) if op.attr("decay") == "key_sigmoid" else 0.0
        name = (
            f"rfc_gated_delta_net_{hk}x{hv}x{s}"
            + ("_kda" if kda else "")
            + (f"_lb{struct.unpack('<I', struct.pack('<f', lb))[0]:08x}" if lb else "")
        )
        params = {"name": name, "threads": threads, "hk": hk, "hv": hv, "s": s, "eps": float(op.attrs["eps"]),
                  "scale": 1.0 / math.sqrt(s), **self._state_params(op), **({"kda": True} if kda else {}),
                  **({"lb": lb} if lb else {})}  # fmt: skip
        return KernelSpec(
            name,
            "gpu_gated_delta_net.hip.j2",
            params,
            KERNEL_ARGS["gated_delta_net"],
            threads,
            (("n_seqs", 1), (hv, 1)),
        )

    def _lightning_attention(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        h, d = int(op.attrs["n_heads"]), int(op.attrs["head_dim"])
        if d > MAX_THREADS:
            raise CompileError(f"the GPU lightning_attention runs a thread per state row: a head size of {d} is over "
                               f"{MAX_THREADS}")  # fmt: skip
        threads = self._row_threads(d)
        name = f"rfc_lightning_attention_{h}x{d}"
        params = {"name": name, "threads": threads, "h_count": h, "d": d, **self._state_params(op)}
        return KernelSpec(
            name,
            "gpu_lightning_attention.hip.j2",
            params,
            KERNEL_ARGS["lightning_attention"],
            threads,
            (("n_seqs", 1), (h, 1)),
        )

    def _ssm_scan(self, op: Op) -> KernelSpec:
        """Mamba2's scan: a block per sequence and head, a thread per row of the head's state; Mamba-1's
        (a decay per channel and state): a block per sequence and {threads} channels, a thread per channel."""
        for w in op.weights:
            self._f32_vector(op, w)
        a = op.attrs
        h, p, g, n = int(a["n_heads"]), int(a["head_dim"]), int(a["n_groups"]), int(a["state_size"])
        if op.attr("decay") == "state":
            if 2 * g * n > GPU_MAX_SSM1_SHARED:
                raise CompileError(f"the GPU Mamba-1 scan keeps B and C in shared memory: {2 * g * n} floats "
                                   f"are over {GPU_MAX_SSM1_SHARED}")  # fmt: skip
            threads = 64
            name = f"rfc_ssm_scan1_{h}x{g}x{n}"
            params = {"name": name, "threads": threads, "h": h, "g": g, "n": n, **self._state_params(op)}
            return KernelSpec(
                name, "gpu_ssm_scan1.hip.j2", params, KERNEL_ARGS["ssm_scan"], threads, (("n_seqs", 1), (h, threads))
            )
        if p > MAX_THREADS:
            raise CompileError(
                f"the GPU ssm_scan runs a thread per state row: a head size of {p} is over {MAX_THREADS}"
            )
        threads = self._row_threads(p)
        name = f"rfc_ssm_scan_{h}x{p}x{g}x{n}"
        params = {"name": name, "threads": threads, "h": h, "p": p, "g": g, "n": n, **self._state_params(op)}
        return KernelSpec(
            name, "gpu_ssm_scan.hip.j2", params, KERNEL_ARGS["ssm_scan"], threads, (("n_seqs", 1), (h, 1))
        )
