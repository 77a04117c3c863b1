"""gemma3n's AltUp and gaussian_topk GPU kernels (templates/gpu_altup_*.hip.j2,
gpu_gaussian_topk.hip.j2) without a GPU: a plan of the six ops planned for gfx90a (wave 64) and
sm_90 (wave 32) by gpu_plan, rendered, and each kernel launched in the emulator
(gpu_emulator.py) with the arguments KERNEL_ARGS declares, against the numpy reference
(runtime/devices/altup.py); and every one of those kernels built by hipcc (gfx90a) and nvcc
(sm_90, -Xptxas -v) without a stack frame or spills.

Sizes: n = 4 streams of E = 72 (a partial wave on either target, more than one wave of 64 with
the 128 threads gfx90a takes), the active stream 0 and 2; a gaussian_topk row of 1001 (256 threads,
several values each). Tolerance 1e-5 relative + 2e-6: float32 block sums against float64.
"""

from __future__ import annotations

import ctypes
import shlex

import numpy as np
import pytest

from rfc.artifacts.plan import Op
from rfc.compiler.codegen import gpu
from rfc.compiler.codegen.gpu_plan import KERNEL_ARGS, plan_kernels
from rfc.compiler.codegen.gpu_usage import cuda_usage, hip_usage
from rfc.compiler.targets import parse_target
from rfc.runtime.devices import altup as ref
from tests.kernels.gpu_emulator import build_source_emulator, needs_emulator
from tests.kernels.gpu_support import toolchain_marks
from tests.kernels.kit.state_ops import _zero_weights, assert_close, state_plan

N, E, W, T = 4, 72, 1001, 5
STD_MUL = 1.6448533535003662


def _plan(active: int):
    return state_plan(
        {"x": E, "y": (N - 1) * E, "hs": N * E, "c16": N * N, "pred": N * E, "act": E, "c4": N, "out": N * E, "gate": E,
         "tail": (N - 1) * E, "merged": E, "g": W},
        (Op("altup_stack", ("x", "y"), ("hs",), (), {"n_altup": N}),
         Op("altup_predict", ("hs", "c16"), ("pred", "act"), (), {"n_altup": N, "active": active}),
         Op("altup_correct", ("pred", "x", "c4"), ("out", "gate"), ("scale",), {"n_altup": N, "active": active}),
         Op("altup_add", ("out", "x"), ("pred", "tail"), (), {"n_altup": N, "first": 1}),
         Op("altup_add", ("out", "gate"), ("out", "act"), (), {"n_altup": N, "first": active}),
         Op("altup_merge", ("hs", "tail"), ("merged",), (), {"n_altup": N, "active": active}),
         Op("gaussian_topk", ("g",), ("g",), (), {"std_mul": STD_MUL})),
        states=(), output="x", hidden="x")  # fmt: skip


def _kernels(target: str, active: int):
    plan = _plan(active)
    t = parse_target(target)
    specs, op_kernels = plan_kernels(t, plan, _zero_weights({"scale": (E,)}))
    return plan, t, specs, op_kernels, gpu.render_source(t, specs)


def _want(arrays: dict, op: Op) -> list[np.ndarray]:
    a, n = op.attrs, op.attrs.get("n_altup", 0)
    ins = [arrays[b] for b in op.inputs]
    if op.kind == "altup_stack":
        return [ref.altup_stack(*ins, n)]
    if op.kind == "altup_predict":
        return list(ref.altup_predict(*ins, n, a["active"]))
    if op.kind == "altup_correct":
        return list(ref.altup_correct(*ins, arrays["scale"], n, a["active"]))
    if op.kind == "altup_add":
        return list(ref.altup_add(*ins, n, a["first"], arrays[op.outputs[1]].shape[1] // E))
    if op.kind == "altup_merge":
        return [ref.altup_merge(*ins, n, a["active"])]
    return [ref.gaussian_topk(ins[0], a["std_mul"])]


@needs_emulator
@pytest.mark.parametrize("target", ["gfx90a", "sm_90"])
@pytest.mark.parametrize("active", [0, 2])
def test_kernels_match_the_reference_in_the_emulator(target, active, tmp_path):
    plan, _t, specs, op_kernels, source = _kernels(target, active)
    lib = ctypes.CDLL(str(build_source_emulator(source, [s.name for s in specs], tmp_path)))
    by_name = {s.name: s for s in specs}
    rng = np.random.default_rng(active)
    arrays = {b.name: (rng.standard_normal((T, b.shape[1])) * 2).astype(np.float32) for b in plan.buffers}
    arrays["c16"] *= 0.25
    arrays["scale"] = rng.standard_normal(E).astype(np.float32)
    for op, kernel in zip(plan.ops, op_kernels):
        spec = by_name[kernel]
        want = _want(arrays, op)
        slots = [*op.outputs, *op.inputs, *op.weights]  # KERNEL_ARGS order: outputs, inputs, the weight, n_rows
        assert spec.args == KERNEL_ARGS[op.kind] and len(spec.args) == len(slots) + 1, spec.args
        ptrs = [ctypes.c_void_p(arrays[b].ctypes.data) for b in slots]
        n_rows = ctypes.c_int(T)
        params = (ctypes.c_void_p * (len(ptrs) + 1))(*[ctypes.addressof(p) for p in ptrs], ctypes.addressof(n_rows))
        fn = getattr(lib, f"rfc_emu_launch_{kernel}")
        fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p]
        fn(T, 1, 1, spec.threads, ctypes.cast(params, ctypes.c_void_p))
        for b, w in zip(op.outputs, want):
            assert_close(arrays[b], w, 1e-5, 2e-6)
    assert (arrays["g"] > 0).mean() < 0.1  # the sparsity kept the tail only


@pytest.mark.parametrize("target", [pytest.param("gfx90a", marks=toolchain_marks("gfx90a")),
                                    pytest.param("sm_90", marks=toolchain_marks("sm_90"))])  # fmt: skip
def test_kernels_use_no_local_memory(target):
    """n = 4 keeps merge's magnitudes in registers; nothing in these kernels indexes a local array."""
    _, t, specs, _, source = _kernels(target, 2)
    if t.family == "cuda":
        usage = cuda_usage(source, shlex.split(" ".join(gpu.TOOLCHAINS["cuda"].command(t))))
    else:
        usage = hip_usage(gpu._compile(gpu.TOOLCHAINS["hip"], t, source), target)
    ours = [u for name, u in usage.items() if name.startswith(("rfc_altup_", "rfc_gaussian_topk_"))]
    assert len(ours) == len(specs) == 7, sorted(usage)
    assert not [u for u in ours if u.uses_local_memory], [(u.name, u.stack_bytes, u.spill_bytes) for u in ours]
