"""RWKV's cpu kernels (kernels/cpu_rwkv.h: token_shift, lerp, lerp_data, wkv6 and its gla mode, wkv7)
against the reference (runtime/devices/reference.py), with explicit states as test_cpu_delta_net's: a
sequence from position 0 (its slot's stale contents must not leak in), one decoding a token, one
continuing a chunk from a nonzero state, one without a slot; and a chunk continuing from the state the
last one left. Native (AVX2) and portable builds.

Tolerances: the recurrences 2e-5 + 2e-4 relative against float64 on outputs and states of unit scale
(float32 over up to 7 tokens); the lerps bit for bit (float32, each operation rounded, no fma). Sizes are
odd: 40 channels, head size 20 (not a multiple of the 8-wide AVX2 step), wkv6's K/V of 2 heads under 4.
"""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from rfc.artifacts.plan import Op
from rfc.compiler.codegen import cpu
from rfc.runtime.devices.reference import wkv6_chunk, wkv7_chunk
from tests.kernels.kit.state_ops import (
    BUILDS, LENGTHS, STARTS, assert_close, layout, open_library, ptr, slot_ptrs, state_plan,
)  # fmt: skip

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

H, HKV, S = 4, 2, 20
C = H * S
_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
PLAN = state_plan({"x": C, "y": C, "xp": C, "m": 3 * C, "kv": HKV * S, "b": C}, (
    Op("token_shift", ("x",), ("xp",), (), {"state": 0}),
    Op("lerp", ("x", "xp"), ("y",), ("mu",), {"part": 1}),
    Op("lerp_data", ("x", "xp", "m"), ("y",), (), {"part": 2}),
    Op("wkv6", ("x", "kv", "kv", "y"), ("y",), ("u", "decay"), {"state": 1, "n_heads": H, "n_kv_heads": HKV,
                                                               "head_dim": S}),
    Op("wkv7", ("x", "y", "x", "y", "x"), ("y", "b"), ("u", "u", "u", "u", "u"), {"state": 2, "n_heads": H,
                                                                                  "head_dim": S}),
), states=((1, C), (H, S, S), (H, S, S)), output="y", hidden="x")  # fmt: skip
ARGTYPES = {
    "rfc_token_shift": [_P, _P, _P, _P, _I, _I, _P],
    "rfc_lerp": [_P, _P, _P, _P, _I, _I, _I],
    "rfc_lerp_data": [_P, _P, _P, _P, _I, _I, _I, _I],
    "rfc_wkv6": [_P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _P, _P, _I, _F, _P],
    "rfc_wkv7": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _P, _P, _P, _P, _P, _P],
}


@pytest.fixture(scope="module", params=BUILDS)
def lib(request, tmp_path_factory):
    return open_library(request.param, tmp_path_factory, "rwkv6", PLAN, {"mu": (3 * C,), "u": (C,), "decay": (C,)},
                        ARGTYPES)  # fmt: skip


def _f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def test_token_shift_matches_reference(lib):
    """Each row gets the one before it; a chunk's first row its slot's (zeros at position 0 and without a
    slot), and the slot keeps the chunk's last row."""
    rng = np.random.default_rng(0)
    positions, seq_start = layout(STARTS, LENGTHS)
    x = _f32(rng, len(positions), C)
    states = [_f32(rng, 1, C) for _ in range(3)] + [None]
    before = [None if st is None else st.copy() for st in states]
    out = np.full_like(x, np.nan)
    lib.rfc_token_shift(ptr(x), ptr(out), ptr(positions), ptr(seq_start), len(STARTS), C, slot_ptrs(states))
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        first = before[s][0] if STARTS[s] and before[s] is not None else np.zeros(C, np.float32)
        np.testing.assert_array_equal(out[lo], first)
        np.testing.assert_array_equal(out[lo + 1 : hi], x[lo : hi - 1])
        if states[s] is not None:
            np.testing.assert_array_equal(states[s][0], x[hi - 1])


def test_lerps_round_as_ggml(lib):
    """(b - a) * mix + a with each operation rounded to float32 (numpy's order: ggml's sub, mul, add)."""
    rng = np.random.default_rng(1)
    a, b, m = _f32(rng, 5, C), _f32(rng, 5, C), _f32(rng, 5, 3 * C)
    mu = _f32(rng, 3 * C)
    out = np.empty_like(a)
    lib.rfc_lerp(ptr(a), ptr(b), ptr(out), ptr(mu), 5, C, 1)
    np.testing.assert_array_equal(out, (b - a) * mu[C : 2 * C] + a)
    lib.rfc_lerp_data(ptr(a), ptr(b), ptr(m), ptr(out), 5, C, 3 * C, 2)
    np.testing.assert_array_equal(out, (b - a) * m[:, 2 * C :] + a)


def _wkv6(lib, r, k, v, w, u, decay, positions, seq_start, states, gla):
    out = np.full((len(r), C), np.nan, np.float32)
    lib.rfc_wkv6(ptr(r), ptr(k), ptr(v), ptr(w), ptr(out), ptr(positions), ptr(seq_start), len(seq_start) - 1, H, HKV,
                 S, ptr(u), ptr(decay), int(gla), 0.5 if gla else 1.0, slot_ptrs(states))  # fmt: skip
    return out


@pytest.mark.parametrize("gla", [False, True], ids=["wkv6", "gla"])
def test_wkv6_matches_reference(lib, gla):
    rng = np.random.default_rng(2)
    positions, seq_start = layout(STARTS, LENGTHS)
    n = len(positions)
    r, k, v, w = _f32(rng, n, C), _f32(rng, n, HKV * S), _f32(rng, n, HKV * S), _f32(rng, n, C, scale=0.5)
    u, decay = _f32(rng, C), _f32(rng, C, scale=0.5)
    states = [_f32(rng, H, S, S, scale=0.3) for _ in range(3)] + [None]
    starts = [np.zeros((H, S, S), np.float32) if STARTS[s] == 0 or s == 3 else states[s].copy() for s in range(4)]
    out = _wkv6(lib, r, k, v, w, u, decay, positions, seq_start, states, gla)
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        want, after = wkv6_chunk(r[lo:hi], k[lo:hi], v[lo:hi], w[lo:hi], None if gla else u, decay, starts[s], H, HKV,
                                 S, scale=0.5 if gla else None)  # fmt: skip
        assert_close(out[lo:hi], want, 2e-5, 2e-4)
        if s < 3:
            assert_close(states[s], after, 2e-5, 2e-4)
    # head h reads kv head h // 2 (llama.cpp's ggml_repeat of [S, 1, Hkv] to [S, H / Hkv, Hkv]): the reference
    # reading kv head h % 2 instead is far from the kernel
    lo, hi = seq_start[3], seq_start[4]
    tiled = [np.tile(x[lo:hi].reshape(-1, HKV, S), (1, H // HKV, 1)).reshape(hi - lo, C) for x in (k, v)]
    other, _ = wkv6_chunk(r[lo:hi], *tiled, w[lo:hi], None if gla else u, decay, starts[3], H, H, S,
                          scale=0.5 if gla else None)  # fmt: skip
    assert np.abs(other - out[lo:hi]).max() > 1e-2


def _wkv7_inputs(rng, n):
    r, w, k, v, a = (_f32(rng, n, C) for _ in range(5))
    return (r, w, k, v, a), tuple(_f32(rng, C) for _ in range(5))


def _wkv7(lib, ins, weights, positions, seq_start, states):
    out, bonus = (np.full((len(ins[0]), C), np.nan, np.float32) for _ in range(2))
    lib.rfc_wkv7(*map(ptr, ins), ptr(out), ptr(bonus), ptr(positions), ptr(seq_start), len(seq_start) - 1, H, S,
                 *map(ptr, weights), slot_ptrs(states))  # fmt: skip
    return out, bonus


def test_wkv7_matches_reference(lib):
    rng = np.random.default_rng(3)
    positions, seq_start = layout(STARTS, LENGTHS)
    ins, weights = _wkv7_inputs(rng, len(positions))
    states = [_f32(rng, H, S, S, scale=0.3) for _ in range(3)] + [None]
    starts = [np.zeros((H, S, S), np.float32) if STARTS[s] == 0 or s == 3 else states[s].copy() for s in range(4)]
    out, bonus = _wkv7(lib, ins, weights, positions, seq_start, states)
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        want, want_bonus, after = wkv7_chunk(*(x[lo:hi] for x in ins), *weights, starts[s], H, S)
        assert_close(out[lo:hi], want, 2e-5, 2e-4)
        assert_close(bonus[lo:hi], want_bonus, 2e-5, 2e-4)
        if s < 3:
            assert_close(states[s], after, 2e-5, 2e-4)


def test_a_chunk_continues_from_the_state_the_last_one_left(lib):
    """11 tokens as 4 then 7 (the state carried in the slot) give what 11 at once give: wkv7 and the token
    shift; the slot's stale contents do not leak into a chunk at position 0."""
    rng = np.random.default_rng(4)
    ins, weights = _wkv7_inputs(rng, 11)
    whole, _ = _wkv7(lib, ins, weights, *layout([0], [11]), [np.full((H, S, S), 7.0, np.float32)])
    slot = np.full((H, S, S), 7.0, np.float32)
    first, _ = _wkv7(lib, tuple(x[:4] for x in ins), weights, *layout([0], [4]), [slot])
    rest, _ = _wkv7(lib, tuple(x[4:] for x in ins), weights, *layout([4], [7]), [slot])
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)
    x = _f32(rng, 11, C)
    outs, shift = [], np.full((1, C), 7.0, np.float32)
    for start, n in ((0, 11), (0, 4), (4, 7)):
        out, chunk = np.empty((n, C), np.float32), x[start : start + n].copy()
        lib.rfc_token_shift(ptr(chunk), ptr(out), *map(ptr, layout([start], [n])), 1, C, slot_ptrs([shift]))
        outs.append(out)
    np.testing.assert_array_equal(np.concatenate(outs[1:]), outs[0])
