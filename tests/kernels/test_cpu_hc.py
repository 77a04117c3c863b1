"""hy_v4's hyper-connection ops, mHC's (hc_comb, hc_mix_post, hc_mean) and Kimi-K3's residual mixes (res_mix,
put_cols): the cpu kernels (kernels/cpu_hc.h, called through their exports) against the reference device's handlers
(runtime/devices/reference.py op_hc_*, op_res_mix, op_put_cols), and those against the ops' definitions
in float64 (artifacts/ops/hc.py). Native (AVX2) and portable builds.

Sizes: n = 4 streams (hy_v4's) of E = 72 (not a multiple of a vector step), T = 5 rows; the gates of
a sublayer (2 n) and of the final mix (n); res_mix over the first 2 and all 4 streams of a stack of 4.
Tolerances: the kernels compute in float32 in the reference's order (exp apart): 1e-6 relative + 1e-7
(res_mix: + 1e-6); against float64 1e-5 relative + 1e-6.
"""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from rfc.artifacts.plan import Op
from rfc.compiler.codegen import cpu
from rfc.runtime.devices.reference import ReferenceDevice
from tests.kernels.kit.state_ops import BUILDS, assert_close, open_library, ptr, state_plan

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

N, E, T = 4, 72, 5
GATES = {"scale_pre": 0.7, "scale_post": -1.3, "magnitude": 2.0, "eps": 1e-6}
_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
PLAN = state_plan(
    {"mix": 2 * N, "gates": 2 * N, "hs": N * E, "h": E},
    (Op("hc_gates", ("mix",), ("gates",), ("base",), {"streams": N, **GATES}),
     Op("hc_reduce", ("hs", "gates"), ("h",), (), {"streams": N}),
     Op("hc_post", ("h", "hs", "gates"), ("hs",), (), {"streams": N})),
    states=(), output="h", hidden="h")  # fmt: skip
ARGTYPES = {
    "rfc_hc_gates": [_I, _P, _P, _P, _I, _I, _F, _F, _F, _F, _I],
    "rfc_hc_reduce": [_I, _P, _P, _P, _P, _I, _I, _I],
    "rfc_hc_post": [_I, _P, _P, _P, _P, _P, _I, _I],
    "rfc_hc_comb": [_I, _P, _P, _P, _I, _F, _F, _I],
    "rfc_hc_mix_post": [_I, _P, _P, _P, _P, _P, _P, _I, _I],
    "rfc_hc_mean": [_I, _P, _P, _P, _I, _I],
    "rfc_res_mix": [_I, _P, _P, _P, _I, _I, _F, _I],
    "rfc_put_cols": [_I, _P, _P, _P, _I, _I, _I],
}


@pytest.fixture(scope="module", params=BUILDS)
def lib(request, tmp_path_factory):
    return open_library(request.param, tmp_path_factory, "hy_v4", PLAN, {"base": (2 * N,)}, ARGTYPES)


def _ref(kind: str, ins: list, weights: list, attrs: dict, out_shape) -> np.ndarray:
    out = np.zeros(out_shape, np.float32)
    getattr(ReferenceDevice, f"op_{kind}")(None, [out], ins, weights, attrs, None)
    return out


@pytest.mark.parametrize("m,post_eps", [(2 * N, True), (N, True), (2 * N, False)])
def test_gates(lib, m: int, post_eps: bool):
    """A sublayer's 2 n gates (weights, then the output's gates at the magnitude), the final mix's n, and mHC's
    post gates without the eps (an eps of 0.01 here, so that its absence shows)."""
    rng = np.random.default_rng(m)
    mix, base = (rng.standard_normal((T, m)) * 3).astype(np.float32), rng.standard_normal(m).astype(np.float32)
    gates = GATES | ({} if post_eps else {"eps": 0.01})
    got = np.zeros_like(mix)
    lib.rfc_hc_gates(T, ptr(mix), ptr(got), ptr(base), N, m, *gates.values(), int(post_eps))
    want = _ref("hc_gates", [mix], [base], {"streams": N, **gates, "post_eps": post_eps}, mix.shape)
    assert_close(got, want, 1e-6, 1e-7)
    mix64, base64 = mix.astype(np.float64), base.astype(np.float64)
    scale = np.where(np.arange(m) < N, gates["scale_pre"], gates["scale_post"])
    sig = 1.0 / (1.0 + np.exp(-(mix64 * scale + base64)))
    exact = np.where(np.arange(m) < N, sig + gates["eps"], sig * gates["magnitude"] + (gates["eps"] if post_eps else 0))
    assert_close(want, exact, 1e-5, 1e-6)


def test_reduce_and_post(lib):
    """The sublayer's input as the streams' weighted sum (gates of 2 n and of n a row), then its
    output spread back over the streams in place (out = residual)."""
    rng = np.random.default_rng(7)
    hs = (rng.standard_normal((T, N * E)) * 2).astype(np.float32)
    for gw in (2 * N, N):
        gates = rng.random((T, gw)).astype(np.float32) * 2
        got = np.zeros((T, E), np.float32)
        lib.rfc_hc_reduce(T, ptr(hs), ptr(gates), ptr(got), None, N, E, gw)
        want = _ref("hc_reduce", [hs, gates], [], {"streams": N}, (T, E))
        np.testing.assert_array_equal(got, want)
        exact = np.einsum("tne,tn->te", hs.reshape(T, N, E).astype(np.float64), gates[:, :N].astype(np.float64))
        assert_close(want, exact, 1e-5, 1e-6)
    y, gates = rng.standard_normal((T, E)).astype(np.float32), rng.random((T, 2 * N)).astype(np.float32)
    want = _ref("hc_post", [y, hs, gates], [], {"streams": N}, hs.shape)
    got = hs.copy()
    lib.rfc_hc_post(T, ptr(y), ptr(got), ptr(gates), ptr(got), None, N, E)  # in place
    np.testing.assert_array_equal(got, want)
    exact = hs.reshape(T, N, E) + y[:, None, :].astype(np.float64) * gates[:, N:, None]
    assert_close(want, exact.reshape(T, N * E), 1e-6, 1e-6)


@pytest.mark.parametrize("n", [2, N])
def test_res_mix(lib, n: int):
    """Kimi-K3's mix of the stack's first n streams (the banks, the current residual last), its scores
    apart enough (w x 0.15: scores about 1 apart) that the softmax weighs them unevenly: the kernel against
    the reference, both against the definition in float64."""
    rng = np.random.default_rng(n)
    stack = (rng.standard_normal((T, N * E)) * rng.uniform(0.5, 3.0, (T, N * E))).astype(np.float32)
    w = (rng.standard_normal(E) * 0.15).astype(np.float32)
    eps = 1e-5
    got = np.zeros((T, E), np.float32)
    lib.rfc_res_mix(T, ptr(stack), ptr(got), ptr(w), n, E, eps, N * E)
    want = _ref("res_mix", [stack], [w], {"streams": n, "eps": eps}, (T, E))
    assert_close(got, want, 1e-6, 1e-6)  # expf and numpy's exp may differ in the last place
    x = stack.reshape(T, N, E)[:, :n].astype(np.float64)
    scores = np.sum(x / np.sqrt(np.mean(x * x, axis=2, keepdims=True) + eps) * w, axis=2)
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert p.max() < 0.99 and p.min() > 1e-4  # every stream counts
    assert_close(want, np.einsum("tne,tn->te", x, p), 1e-5, 1e-6)


def test_put_cols(lib):
    """A row copied into its slot of the stack, the other columns kept."""
    rng = np.random.default_rng(3)
    stack = rng.standard_normal((T, N * E)).astype(np.float32)
    x = rng.standard_normal((T, E)).astype(np.float32)
    got = stack.copy()
    lib.rfc_put_cols(T, ptr(x), ptr(got), None, E, 2 * E, N * E)
    want = stack.copy()
    getattr(ReferenceDevice, "op_put_cols")(None, [want], [x], [], {"offset": 2 * E}, None)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[:, 2 * E : 3 * E], x)
    np.testing.assert_array_equal(
        np.delete(got, np.s_[2 * E : 3 * E], axis=1), np.delete(stack, np.s_[2 * E : 3 * E], axis=1)
    )


def _sinkhorn(mix, base, scale, eps, iters):
    """mHC's mixing matrices in float64 ([rows, source, destination])."""
    c = (mix.astype(np.float64) * scale + base).reshape(-1, N, N)
    c = np.exp(c - c.max(axis=2, keepdims=True))
    c = c / c.sum(axis=2, keepdims=True) + eps
    c = c / (c.sum(axis=1, keepdims=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(axis=2, keepdims=True) + eps)
        c = c / (c.sum(axis=1, keepdims=True) + eps)
    return c


@pytest.mark.parametrize("iters", [1, 3, 20])
def test_hc_comb(lib, iters: int):
    """mHC's Sinkhorn-normalized 4 x 4 matrix per row (DeepSeek-V4 runs 20 iterations, GLM5-Next 2) from mixes
    spread enough (x 3) that the softmax is far from uniform; after 20 iterations its columns sum to 1 and its
    rows nearly so."""
    rng = np.random.default_rng(iters)
    mix, base = (rng.standard_normal((T, N * N)) * 3).astype(np.float32), rng.standard_normal(N * N).astype(np.float32)
    scale, eps = 0.7, 1e-6
    got = np.zeros_like(mix)
    lib.rfc_hc_comb(T, ptr(mix), ptr(got), ptr(base), N, scale, eps, iters)
    want = _ref("hc_comb", [mix], [base], {"streams": N, "scale": scale, "eps": eps, "iters": iters}, mix.shape)
    assert_close(got, want, 1e-6, 1e-7)
    assert_close(want, _sinkhorn(mix, base, np.float32(scale), eps, iters).reshape(T, N * N), 1e-5, 1e-6)
    if iters == 20:
        c = want.reshape(T, N, N)
        assert_close(c.sum(axis=1), np.ones((T, N)), 1e-5, 0)  # each destination's column: normalized last
        assert_close(c.sum(axis=2), np.ones((T, N)), 1e-2, 0)  # each source's row: converging


def test_hc_mix_post_and_mean(lib):
    """The streams after a sublayer (stream d = y gate_d + sum_s stream_s comb[s][d]) and their final mean."""
    rng = np.random.default_rng(11)
    hs = (rng.standard_normal((T, N * E)) * 2).astype(np.float32)
    y, gates = rng.standard_normal((T, E)).astype(np.float32), rng.random((T, 2 * N)).astype(np.float32)
    comb = rng.random((T, N * N)).astype(np.float32)
    got = np.zeros_like(hs)
    lib.rfc_hc_mix_post(T, ptr(y), ptr(hs), ptr(gates), ptr(comb), ptr(got), None, N, E)
    want = _ref("hc_mix_post", [y, hs, gates, comb], [], {"streams": N}, hs.shape)
    np.testing.assert_array_equal(got, want)
    h64 = hs.reshape(T, N, E).astype(np.float64)
    exact = y[:, None, :] * gates[:, N:, None] + np.einsum("tse,tsd->tde", h64, comb.reshape(T, N, N))
    assert_close(want, exact.reshape(T, N * E), 1e-5, 1e-6)
    got = np.zeros((T, E), np.float32)
    lib.rfc_hc_mean(T, ptr(hs), ptr(got), None, N, E)
    want = _ref("hc_mean", [hs], [], {"streams": N}, (T, E))
    np.testing.assert_array_equal(got, want)
    assert_close(want, h64.mean(axis=1), 1e-6, 1e-6)
