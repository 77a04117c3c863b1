"""LFM2's short_conv cpu kernel (kernels/cpu_short_conv.h) against the reference
(runtime/devices/reference.py short_conv_chunk), with explicit states: in one call a sequence
from position 0 (its slot's stale contents must not leak in), one decoding a token and one
continuing a chunk from a nonzero state; a sequence without a slot (NULL); and the state a
chunk leaves, which the next chunk continues from exactly as one longer chunk would. Native
(AVX2) and portable builds.

Tolerance 1e-5 relative + 1e-6: float32 sums of 3 products against float64. 40 channels (not
a multiple of the 8-wide AVX2 step), kernel 3 as LFM2's.
"""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from rfc.artifacts.plan import Op
from rfc.compiler.codegen import cpu
from rfc.runtime.devices.reference import short_conv_chunk
from tests.kernels.kit.state_ops import BUILDS, layout, open_library, ptr, slot_ptrs, state_plan

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

C, K = 40, 3
_P = ctypes.c_void_p
PLAN = state_plan({"bcx": 3 * C, "y": C}, (Op("short_conv", ("bcx",), ("y",), ("conv",), {"state": 0}),),
                  states=((K - 1, C),), output="y", hidden="y")  # fmt: skip
ARGTYPES = {"rfc_short_conv": [_P, _P, _P, _P, ctypes.c_int, ctypes.c_int, _P, ctypes.c_int, _P]}


@pytest.fixture(scope="module", params=BUILDS)
def lib(request, tmp_path_factory):
    return open_library(request.param, tmp_path_factory, "lfm2", PLAN, {"conv": (C, K)}, ARGTYPES)


def test_short_conv_matches_the_reference_with_states(lib):
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.5, (C, K)).astype(np.float32)
    lens, starts = (5, 1, 4, 3), (0, 9, 2, 0)  # from zero (stale slot), decode, continue, no slot
    bcx = rng.normal(0, 1, (sum(lens), 3 * C)).astype(np.float32)
    states = rng.normal(0, 1, (3, K - 1, C)).astype(np.float32)
    before = states.copy()
    positions, seq_start = layout(starts, lens)
    out = np.zeros((sum(lens), C), np.float32)
    lib.rfc_short_conv(ptr(bcx), ptr(out), ptr(positions), ptr(seq_start), 4, C, ptr(w), K,
                       slot_ptrs([*states, None]))  # fmt: skip
    for s in range(4):
        lo, hi = seq_start[s], seq_start[s + 1]
        start = np.zeros((K - 1, C), np.float32) if s in (0, 3) else before[s]
        want, want_state = short_conv_chunk(bcx[lo:hi], w.astype(np.float64), start)
        np.testing.assert_allclose(out[lo:hi], want, rtol=1e-5, atol=1e-6)
        if s < 3:
            np.testing.assert_allclose(states[s], want_state, rtol=1e-5, atol=1e-6)


def test_short_conv_chunks_continue_as_one(lib):
    """Three chunks through one slot give the outputs of one chunk of their tokens."""
    rng = np.random.default_rng(6)
    w = rng.normal(0, 0.5, (C, K)).astype(np.float32)
    bcx = rng.normal(0, 1, (9, 3 * C)).astype(np.float32)
    state = np.full((K - 1, C), 7.0, np.float32)  # stale: the first chunk starts at position 0
    outs = []
    for lo, hi in ((0, 4), (4, 5), (5, 9)):
        out = np.zeros((hi - lo, C), np.float32)
        chunk = np.ascontiguousarray(bcx[lo:hi])
        positions, seq_start = layout([lo], [hi - lo])
        lib.rfc_short_conv(ptr(chunk), ptr(out), ptr(positions), ptr(seq_start), 1, C, ptr(w), K, slot_ptrs([state]))
        outs.append(out)
    whole = np.zeros((9, C), np.float32)
    positions, seq_start = layout([0], [9])
    lib.rfc_short_conv(ptr(bcx), ptr(whole), ptr(positions), ptr(seq_start), 1, C, ptr(w), K, slot_ptrs([None]))
    np.testing.assert_array_equal(np.concatenate(outs), whole)
