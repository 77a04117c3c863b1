"""gemma3n's AltUp ops and gaussian top-k: the cpu kernels (kernels/cpu_altup.h, called
through their exports) against the numpy reference (runtime/devices/altup.py), and the reference
against the float64 oracle (tests/oracle.py, written from src/models/gemma3n.cpp with the streams
as llama.cpp's graph holds them). Native (AVX2) and portable builds.

Sizes: n = 4 streams (gemma3n's) of E = 72 (not a multiple of the 16- or 32-wide vector steps),
a gaussian_topk row of 1001; the active stream 0 (gemma3n's) and 2 (streams other than 0 take
the magnitude and the innovation). Tolerances: 1e-5 relative + 1e-6 (float32 kernels, sums in
double, against float64); the oracle and the reference agree to 1e-6 relative (both float64,
rounded once to float32).
"""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from rfc.artifacts.plan import Op
from rfc.compiler.codegen import cpu
from rfc.runtime.devices import altup as ref
from tests import oracle
from tests.kernels.kit.state_ops import BUILDS, assert_close, open_library, ptr, state_plan

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

N, E, W, T = 4, 72, 1001, 5
STD_MUL = 1.6448533535003662  # llama.cpp's f_sparsity_std_mul: normal_dist.icdf(0.95)
_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
PLAN = state_plan(
    {"x": E, "y": (N - 1) * E, "hs": N * E, "c16": N * N, "pred": N * E, "act": E, "c4": N, "out": N * E, "gate": E,
     "tail": (N - 1) * E, "g": W},
    (Op("altup_stack", ("x", "y"), ("hs",), (), {"n_altup": N}),
     Op("altup_predict", ("hs", "c16"), ("pred", "act"), (), {"n_altup": N, "active": 0}),
     Op("altup_correct", ("pred", "x", "c4"), ("out", "gate"), ("scale",), {"n_altup": N, "active": 0}),
     Op("altup_add", ("out", "x"), ("out", "tail"), (), {"n_altup": N, "first": 1}),
     Op("altup_merge", ("out", "tail"), ("act",), (), {"n_altup": N, "active": 0}),
     Op("gaussian_topk", ("g",), ("g",), (), {"std_mul": STD_MUL})),
    states=(), output="x", hidden="x")  # fmt: skip
ARGTYPES = {
    "rfc_altup_stack": [_I, _P, _P, _P, _P, _I, _I],
    "rfc_altup_predict": [_I, _P, _P, _P, _P, _P, _I, _I, _I],
    "rfc_altup_correct": [_I, _P, _P, _P, _P, _P, _P, _I, _I, _I],
    "rfc_altup_add": [_I, _P, _P, _P, _P, _P, _I, _I, _I, _I],
    "rfc_altup_merge": [_I, _P, _P, _P, _P, _I, _I, _I],
    "rfc_gaussian_topk": [_I, _P, _P, _P, _I, _F],
}


@pytest.fixture(scope="module", params=BUILDS)
def lib(request, tmp_path_factory):
    return open_library(request.param, tmp_path_factory, "gemma3n", PLAN, {"scale": (E,)}, ARGTYPES)


def _rows(rng, width: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal((T, width)) * scale).astype(np.float32)


def _split(x: np.ndarray, n: int) -> list[np.ndarray]:
    return [s.astype(np.float64) for s in np.split(x, n, axis=1)]


@pytest.mark.parametrize("active", [0, 2])
def test_predict_and_correct(lib, active: int):
    rng = np.random.default_rng(active)
    hs, c16, c4, x, scale = (
        _rows(rng, N * E, 3),
        _rows(rng, N * N, 0.5),
        _rows(rng, N, 0.5),
        _rows(rng, E, 3),
        _rows(rng, E)[0],
    )
    pred, act = np.zeros_like(hs), np.zeros_like(x)
    lib.rfc_altup_predict(T, ptr(hs), ptr(c16), ptr(pred), ptr(act), None, N, E, active)
    want_pred, want_act = ref.altup_predict(hs, c16, N, active)
    assert_close(pred, want_pred, 1e-5, 1e-6)
    np.testing.assert_array_equal(act, pred[:, active * E : (active + 1) * E])
    assert_close(np.hstack(oracle.altup_predict(_split(hs, N), c16.astype(np.float64))), want_pred, 1e-6, 1e-7)

    out, gate = np.zeros_like(hs), np.zeros_like(x)
    lib.rfc_altup_correct(T, ptr(pred), ptr(x), ptr(c4), ptr(out), ptr(gate), ptr(scale), N, E, active)
    want_out, want_gate = ref.altup_correct(pred, x, c4, scale, N, active)
    assert_close(out, want_out, 1e-5, 1e-6)
    assert_close(gate, want_gate, 1e-5, 1e-6)
    corrected = oracle.altup_correct(_split(pred, N), x.astype(np.float64), c4.astype(np.float64), active)
    assert_close(np.hstack(corrected), want_out, 1e-6, 1e-7)


@pytest.mark.parametrize("active", [0, 2])
def test_stack_add_and_merge(lib, active: int):
    """The stack at the input's magnitude, the per-layer input added to streams 1.. (all of them,
    and the tail the merge's projection reads), the merge at the active stream's magnitude."""
    rng = np.random.default_rng(10 + active)
    x, y, u = _rows(rng, E, 4), _rows(rng, (N - 1) * E, 0.3), _rows(rng, (N - 1) * E, 2)
    hs = np.zeros((T, N * E), np.float32)
    lib.rfc_altup_stack(T, ptr(x), ptr(y), ptr(hs), None, N, E)
    want = ref.altup_stack(x, y, N)
    assert_close(hs, want, 1e-5, 1e-6)
    assert_close(np.hstack(oracle.altup_stack(x, _split(y, N - 1))), want, 1e-6, 1e-7)
    norms = np.linalg.norm(want.reshape(T, N, E), axis=-1)
    np.testing.assert_allclose(norms, np.repeat(norms[:, :1], N, axis=1), rtol=1e-5)  # every stream at |x|

    hs = _rows(rng, N * E, 2)
    for first, m in ((0, 1), (1, N - 1), (2, 2)):  # the router's stream 0; the merge's 1..3; two in the middle
        out, sub = np.zeros_like(hs), np.zeros((T, m * E), np.float32)
        lib.rfc_altup_add(T, ptr(hs), ptr(x), ptr(out), ptr(sub), None, N, E, first, m)
        want_out, want_sub = ref.altup_add(hs, x, N, first, m)
        np.testing.assert_array_equal(out, want_out)
        np.testing.assert_array_equal(sub, want_sub)
        np.testing.assert_array_equal(out[:, -E:], hs[:, -E:] + x)
        np.testing.assert_array_equal(out[:, :E], hs[:, :E])  # stream 0 as it was
        np.testing.assert_array_equal(sub, out[:, first * E : (first + m) * E])
    inplace = hs.copy()
    # out = hs, as the plan runs it
    lib.rfc_altup_add(T, ptr(inplace), ptr(x), ptr(inplace), ptr(sub), None, N, E, 0, 1)
    np.testing.assert_array_equal(inplace, ref.altup_add(hs, x, N, 0, 1)[0])

    merged = np.zeros((T, E), np.float32)
    lib.rfc_altup_merge(T, ptr(hs), ptr(u), ptr(merged), None, N, E, active)
    want = ref.altup_merge(hs, u, N, active)
    assert_close(merged, want, 1e-5, 1e-6)
    assert_close(oracle.altup_merge(_split(hs, N), _split(u, N - 1), active).astype(np.float32), want, 1e-6, 1e-7)


def test_gaussian_topk_keeps_the_top_tail(lib):
    """In place, as the plan runs it; about 5% of normal values stay above mean + 1.645 std."""
    rng = np.random.default_rng(3)
    g = (_rows(rng, W, 2) + rng.uniform(-1, 1, (T, 1))).astype(np.float32)
    want = ref.gaussian_topk(g, STD_MUL)
    np.testing.assert_allclose(want, oracle.gaussian_topk(g.astype(np.float64), STD_MUL), rtol=1e-6, atol=1e-6)
    lib.rfc_gaussian_topk(T, ptr(g), ptr(g), None, W, STD_MUL)
    assert_close(g, want, 1e-5, 2e-6)
    kept = (want > 0).mean()
    assert 0.02 < kept < 0.09, kept
