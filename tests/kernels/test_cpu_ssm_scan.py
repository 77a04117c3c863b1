"""The Mamba2 cpu kernels (kernels/cpu_ssm_scan.h: ssm_scan; cpu_delta_net.h: ssm_conv
with its bias) against the reference (runtime/devices/reference.py ssm_scan_chunk,
ssm_conv_chunk), with explicit states as test_cpu_delta_net.py: in one call a sequence from
position 0 over a stale slot, one decoding a token, one continuing a chunk from a nonzero
state, one without a slot (NULL); and a chunk continued from the state the last one left
equals one longer chunk. Both the native (AVX2) and the portable build.

Tolerances: ssm_scan 1e-5 relative + 1e-5 on outputs and states (a float32 recurrence over 7
tokens against float64; head 2's dt' of ~25 makes values of ~50); the conv 1e-5 relative + 1e-6. Sizes are odd: head
size 6, state size 20 (not a multiple of the 8-wide AVX2 step), 4 heads in 2 groups (head h reads
group h // 2), softplus past its linear threshold on one head.
"""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from rfc.artifacts.plan import Op
from rfc.compiler.codegen import cpu
from rfc.runtime.devices.reference import ssm_conv_chunk, ssm_scan_chunk
from tests.kernels.kit.state_ops import (
    BUILDS, LENGTHS, STARTS, assert_close, layout, open_library, ptr, slot_ptrs, state_plan,
)  # fmt: skip

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

H, P, G, N, K = 4, 6, 2, 20, 4
C = H * P + 2 * G * N  # the conv's channels: x, B, C
_P = ctypes.c_void_p
A = np.array([-0.05, -0.3, -1.0, -2.5], np.float32)  # ssm_a = -exp(A_log)
D = np.array([1.0, 0.5, -0.3, 1.2], np.float32)
DT_BIAS = np.array([-1.0, 0.5, 25.0, -3.0], np.float32)  # head 2: softplus's linear branch
PLAN = state_plan({"x": C, "xbc": C, "dt": H, "y": H * P}, (
    Op("ssm_conv", ("x",), ("xbc",), ("conv", "bias"), {"state": 0}),
    Op("ssm_scan", ("xbc", "dt"), ("y",), ("a", "d", "dt_bias"),
       {"state": 1, "n_heads": H, "head_dim": P, "n_groups": G, "state_size": N}),
), states=((K - 1, C), (H, P, N)), output="y", hidden="x")  # fmt: skip
WEIGHTS = {"conv": (C, K), "bias": (C,), "a": (H,), "d": (H,), "dt_bias": (H,)}
ARGTYPES = {
    "rfc_ssm_conv_bias": [_P, _P, _P, _P, ctypes.c_int, ctypes.c_int, _P, ctypes.c_int, _P, _P],
    "rfc_ssm_scan": [_P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, _P, _P,
                     _P, _P],
}  # fmt: skip


@pytest.fixture(scope="module", params=BUILDS)
def lib(request, tmp_path_factory):
    return open_library(request.param, tmp_path_factory, "granitehybrid", PLAN, WEIGHTS, ARGTYPES)


def _scan(lib, xbc, dt, positions, seq_start, states):
    out = np.full((len(xbc), H * P), np.nan, np.float32)
    lib.rfc_ssm_scan(ptr(xbc), ptr(dt), ptr(out), ptr(positions), ptr(seq_start), len(seq_start) - 1, H, P, G, N,
                     ptr(A), ptr(D), ptr(DT_BIAS), slot_ptrs(states))  # fmt: skip
    return out


def test_ssm_conv_with_bias_matches_reference(lib):
    rng = np.random.default_rng(0)
    positions, seq_start = layout(STARTS, LENGTHS)
    x = rng.standard_normal((len(positions), C)).astype(np.float32)
    w = (rng.standard_normal((C, K)) * 0.5).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    states = [rng.standard_normal((K - 1, C)).astype(np.float32) for _ in range(3)] + [None]
    starts = [np.zeros((K - 1, C), np.float32) if STARTS[s] == 0 or s == 3 else states[s].copy() for s in range(4)]
    out = np.full_like(x, np.nan)
    lib.rfc_ssm_conv_bias(ptr(x), ptr(out), ptr(positions), ptr(seq_start), len(STARTS), C, ptr(w), K, ptr(bias),
                          slot_ptrs(states))  # fmt: skip
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        want, after = ssm_conv_chunk(x[lo:hi], w.astype(np.float64), starts[s], bias.astype(np.float64))
        assert_close(out[lo:hi], want, 1e-5, 1e-6)
        if s < 3:
            assert_close(states[s], after, 0, 0)


def test_ssm_scan_matches_reference(lib):
    rng = np.random.default_rng(1)
    positions, seq_start = layout(STARTS, LENGTHS)
    xbc = rng.standard_normal((len(positions), C)).astype(np.float32)
    dt = rng.standard_normal((len(positions), H)).astype(np.float32)
    states = [(0.3 * rng.standard_normal((H, P, N))).astype(np.float32) for _ in range(3)] + [None]
    starts = [np.zeros((H, P, N), np.float32) if STARTS[s] == 0 or s == 3 else states[s].copy() for s in range(4)]
    out = _scan(lib, xbc, dt, positions, seq_start, states)
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        want, after = ssm_scan_chunk(xbc[lo:hi], dt[lo:hi], A.astype(np.float64), D.astype(np.float64),
                                     DT_BIAS.astype(np.float64), starts[s], H, P, G, N)  # fmt: skip
        assert_close(out[lo:hi], want, 1e-5, 1e-5)
        if s < 3:
            assert_close(states[s], after, 1e-5, 1e-5)


def test_a_chunk_continues_from_the_state_the_last_one_left(lib):
    """11 tokens as 4 then 7 (the state carried in the slot) give what 11 at once give."""
    rng = np.random.default_rng(2)
    xbc = rng.standard_normal((11, C)).astype(np.float32)
    dt = rng.standard_normal((11, H)).astype(np.float32)
    whole = _scan(lib, xbc, dt, *layout([0], [11]), [np.full((H, P, N), 7.0, np.float32)])
    slot = np.full((H, P, N), 7.0, np.float32)  # stale: position 0 must not read it
    first = _scan(lib, xbc[:4], dt[:4], *layout([0], [4]), [slot])
    rest = _scan(lib, xbc[4:], dt[4:], *layout([4], [7]), [slot])
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)
