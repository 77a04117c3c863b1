"""The Gated DeltaNet cpu kernels (kernels/cpu_delta_net.h: ssm_conv, gated_delta_net)
against the reference (runtime/devices/reference.py ssm_conv_chunk, gated_delta_net_chunk),
with explicit states: in one call a sequence from position 0 (its slot's stale contents must
not leak in), one decoding a token and one continuing a chunk from a nonzero state; a
sequence without a slot (NULL); and the state a chunk leaves, which the next chunk continues
from exactly as one longer chunk would. Both the native (AVX2) and the portable build.

Tolerances: ssm_conv 1e-5 relative + 1e-6 (float32 sums of K products against float64);
gated_delta_net 2e-5 absolute on outputs and states of unit scale (a float32 recurrence
over 7 tokens against float64). Sizes are odd: 40 channels, head size 20 (not a multiple
of the 8-wide AVX2 step), 2 key heads read by 4 value heads (head h reads h % 2).
"""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from rfc.artifacts.plan import Op
from rfc.compiler.codegen import cpu
from rfc.runtime.devices.reference import gated_delta_net_chunk, lightning_chunk, ssm_conv_chunk
from tests.kernels.kit.state_ops import (
    BUILDS, LENGTHS, STARTS, assert_close, layout, open_library, ptr, slot_ptrs, state_plan,
)  # fmt: skip

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

C, K = 40, 4
HK, HV, S = 2, 4, 20
EPS = 1e-6
W_QKV = (2 * HK + HV) * S
_P = ctypes.c_void_p
PLAN = state_plan({"x": C, "y": C}, (
    Op("ssm_conv", ("x",), ("y",), ("conv",), {"state": 0}),
    Op("gated_delta_net", ("qkv", "alpha", "beta"), ("o",), ("a", "dt"),
       {"state": 1, "n_k_heads": HK, "n_v_heads": HV, "head_dim": S, "eps": EPS}),
    Op("gated_delta_net", ("qkv", "alpha_k", "beta"), ("o",), ("a", "dt_k"),
       {"state": 2, "n_k_heads": HK, "n_v_heads": HV, "head_dim": S, "eps": EPS, "decay": "key"}),
    Op("lightning_attention", ("lqkv",), ("o",), ("decay",), {"state": 3, "n_heads": HV, "head_dim": S}),
), states=((K - 1, C), (HV, S, S), (HV, S, S), (HV, S, S)), output="y", hidden="x")  # fmt: skip
ARGTYPES = {
    "rfc_ssm_conv": [_P, _P, _P, _P, ctypes.c_int, ctypes.c_int, _P, ctypes.c_int, _P],
    "rfc_gated_delta_net": [_P, _P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, _P, _P,
                            ctypes.c_float, _P],
    "rfc_lightning_attention": [_P, _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int, _P, _P],
    "rfc_kda": [_P, _P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, _P, _P, ctypes.c_float,
                ctypes.c_float, _P],
}  # fmt: skip


@pytest.fixture(scope="module", params=BUILDS)
def lib(request, tmp_path_factory):
    return open_library(
        request.param,
        tmp_path_factory,
        "qwen35",
        PLAN,
        {"conv": (C, K), "a": (HV,), "dt": (HV,), "dt_k": (HV * S,), "decay": (HV,)},
        ARGTYPES,
    )


def test_ssm_conv_matches_reference(lib):
    rng = np.random.default_rng(0)
    positions, seq_start = layout(STARTS, LENGTHS)
    x = rng.standard_normal((len(positions), C)).astype(np.float32)
    w = (rng.standard_normal((C, K)) * 0.5).astype(np.float32)
    states = [rng.standard_normal((K - 1, C)).astype(np.float32) for _ in range(3)] + [None]
    want_states = [np.zeros_like(states[0]) if STARTS[s] == 0 else states[s].copy() for s in range(3)]
    out = np.full_like(x, np.nan)
    lib.rfc_ssm_conv(ptr(x), ptr(out), ptr(positions), ptr(seq_start), len(STARTS), C, ptr(w), K, slot_ptrs(states))
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        start = want_states[s] if s < 3 else np.zeros((K - 1, C), np.float32)
        want, after = ssm_conv_chunk(x[lo:hi], w.astype(np.float64), start)
        assert_close(out[lo:hi], want, 1e-5, 1e-6)
        if s < 3:
            assert_close(states[s], after, 0, 0)  # the window's last rows, copied


def _gdn_inputs(rng, n):
    qkv = rng.standard_normal((n, W_QKV)).astype(np.float32)
    alpha = rng.standard_normal((n, HV)).astype(np.float32)
    beta = (2 * rng.standard_normal((n, HV))).astype(np.float32)
    return qkv, alpha, beta


A = np.array([-0.05, -0.3, -1.0, -2.5], np.float32)  # ssm_a = -exp(A_log): decays from 0.97 to 0.1
DT = np.array([0.5, -0.2, 0.0, 1.0], np.float32)


def _gdn(lib, qkv, alpha, beta, positions, seq_start, states):
    out = np.full((len(qkv), HV * S), np.nan, np.float32)
    lib.rfc_gated_delta_net(ptr(qkv), ptr(alpha), ptr(beta), ptr(out), ptr(positions), ptr(seq_start),
                            len(seq_start) - 1, HK, HV, S, ptr(A), ptr(DT), EPS, slot_ptrs(states))  # fmt: skip
    return out


def test_gated_delta_net_matches_reference(lib):
    rng = np.random.default_rng(1)
    positions, seq_start = layout(STARTS, LENGTHS)
    qkv, alpha, beta = _gdn_inputs(rng, len(positions))
    states = [(0.3 * rng.standard_normal((HV, S, S))).astype(np.float32) for _ in range(3)] + [None]
    starts = [np.zeros((HV, S, S), np.float32) if STARTS[s] == 0 or s == 3 else states[s].copy() for s in range(4)]
    out = _gdn(lib, qkv, alpha, beta, positions, seq_start, states)
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        want, after = gated_delta_net_chunk(qkv[lo:hi], alpha[lo:hi], beta[lo:hi], A.astype(np.float64),
                                            DT.astype(np.float64), starts[s], HK, HV, S, EPS)  # fmt: skip
        assert_close(out[lo:hi], want, 0, 2e-5)
        if s < 3:
            assert_close(states[s], after, 0, 2e-5)


@pytest.mark.parametrize("lower_bound", [None, -5.0])
def test_kda_matches_reference(lib, lower_bound):
    """Kimi Delta Attention: gated_delta_net with a decay per value head and key channel (alpha [T, Hv S],
    dt_bias [Hv S]; kernels/cpu_kda.h), the same sequences and states; softplus(z) * a (kimi-linear), or with
    a lower bound lb * sigmoid(z * a) (bailingmoe3)."""
    rng = np.random.default_rng(5)
    positions, seq_start = layout(STARTS, LENGTHS)
    qkv, _, beta = _gdn_inputs(rng, len(positions))
    alpha = (2 * rng.standard_normal((len(positions), HV * S))).astype(np.float32)  # channels decaying apart
    dt = rng.standard_normal(HV * S).astype(np.float32)
    states = [(0.3 * rng.standard_normal((HV, S, S))).astype(np.float32) for _ in range(3)] + [None]
    starts = [np.zeros((HV, S, S), np.float32) if STARTS[s] == 0 or s == 3 else states[s].copy() for s in range(4)]
    out = np.full((len(qkv), HV * S), np.nan, np.float32)
    lib.rfc_kda(ptr(qkv), ptr(alpha), ptr(beta), ptr(out), ptr(positions), ptr(seq_start), len(STARTS), HK, HV, S,
                ptr(A), ptr(dt), EPS, lower_bound or 0.0, slot_ptrs(states))  # fmt: skip
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        want, after = gated_delta_net_chunk(qkv[lo:hi], alpha[lo:hi], beta[lo:hi], A.astype(np.float64),
                                            dt.astype(np.float64), starts[s], HK, HV, S, EPS, per_key=True,
                                            lower_bound=lower_bound)  # fmt: skip
        assert_close(out[lo:hi], want, 0, 2e-5)
        if s < 3:
            assert_close(states[s], after, 0, 2e-5)
    # a decay per head (every channel at its head's first) is another recurrence
    flat = np.repeat(alpha.reshape(-1, HV, S)[:, :, :1], S, axis=2).reshape(len(alpha), -1)
    other, _ = gated_delta_net_chunk(qkv[:5], flat[:5], beta[:5], A.astype(np.float64), dt.astype(np.float64),
                                     np.zeros((HV, S, S)), HK, HV, S, EPS, per_key=True,
                                     lower_bound=lower_bound)  # fmt: skip
    assert np.abs(other - out[:5]).max() > 1e-2


def test_lightning_attention_matches_reference(lib):
    """MiniMax-01's lightning attention (kernels/cpu_lightning.h): linear attention decaying per head, the same
    sequences and states; the decays from 0.9 to 0.2 a step."""
    rng = np.random.default_rng(6)
    positions, seq_start = layout(STARTS, LENGTHS)
    qkv = rng.standard_normal((len(positions), 3 * HV * S)).astype(np.float32)
    decay = np.array([0.1, 0.5, 1.0, 1.6], np.float32)
    states = [(0.3 * rng.standard_normal((HV, S, S))).astype(np.float32) for _ in range(3)] + [None]
    starts = [np.zeros((HV, S, S), np.float32) if STARTS[s] == 0 or s == 3 else states[s].copy() for s in range(4)]
    out = np.full((len(qkv), HV * S), np.nan, np.float32)
    lib.rfc_lightning_attention(ptr(qkv), ptr(out), ptr(positions), ptr(seq_start), len(STARTS), HV, S, ptr(decay),
                                slot_ptrs(states))  # fmt: skip
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        want, after = lightning_chunk(qkv[lo:hi], decay.astype(np.float64), starts[s], HV, S)
        assert_close(out[lo:hi], want, 1e-5, 1e-4)
        if s < 3:
            assert_close(states[s], after, 1e-5, 1e-4)


def test_a_chunk_continues_from_the_state_the_last_one_left(lib):
    """11 tokens as 4 then 7 (the state carried in the slot) give what 11 at once give."""
    rng = np.random.default_rng(2)
    qkv, alpha, beta = _gdn_inputs(rng, 11)
    whole = _gdn(lib, qkv, alpha, beta, *layout([0], [11]), [np.full((HV, S, S), 7.0, np.float32)])
    slot = np.full((HV, S, S), 7.0, np.float32)  # stale: position 0 must not read it
    first = _gdn(lib, qkv[:4], alpha[:4], beta[:4], *layout([0], [4]), [slot])
    rest = _gdn(lib, qkv[4:], alpha[4:], beta[4:], *layout([4], [7]), [slot])
    assert_close(np.concatenate([first, rest]), whole, 0, 1e-6)
    x = rng.standard_normal((11, C)).astype(np.float32)
    w = rng.standard_normal((C, K)).astype(np.float32)
    outs = []
    conv_slot = np.full((K - 1, C), 7.0, np.float32)
    for start, n in ((0, 11), (0, 4), (4, 7)):
        out, chunk = np.empty((n, C), np.float32), x[start : start + n].copy()
        positions, seq_start = layout([start], [n])
        lib.rfc_ssm_conv(ptr(chunk), ptr(out), ptr(positions), ptr(seq_start), 1, C, ptr(w), K,
                         slot_ptrs([conv_slot]))  # fmt: skip
        outs.append(out)
    np.testing.assert_array_equal(np.concatenate(outs[1:]), outs[0])
