"""The Gated DeltaNet cpu kernels (templates/cpu_delta_net.c.j2: ssm_conv, gated_delta_net)
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
import platform
import shutil

import numpy as np
import pytest

from rfc.artifacts.layout import TensorEntry, WeightLayout, align_up
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan, StateSpec, StateTensor
from rfc.compiler.codegen import CodegenInput, cpu
from rfc.compiler.spec import HParams
from rfc.compiler.targets import parse_target
from rfc.runtime.devices.reference import gated_delta_net_chunk, ssm_conv_chunk

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"),
]

C, K = 40, 4
HK, HV, S = 2, 4, 20
EPS = 1e-6
W_QKV = (2 * HK + HV) * S
_P = ctypes.c_void_p


def _library(build: str):
    entries, data = [], b""
    for name, shape in (("conv", (C, K)), ("a", (HV,)), ("dt", (HV,))):
        off = align_up(len(data))
        raw = np.zeros(shape, np.float32).tobytes()
        data += b"\0" * (off - len(data)) + raw
        entries.append(TensorEntry(name, name, "F32", shape, off, len(raw), ""))
    state = StateSpec((StateTensor(0, (K - 1, C)), StateTensor(0, (HV, S, S))))
    ops = (Op("ssm_conv", ("x",), ("y",), ("conv",), {"state": 0}),
           Op("gated_delta_net", ("qkv", "alpha", "beta"), ("o",), ("a", "dt"),
              {"state": 1, "n_k_heads": HK, "n_v_heads": HV, "head_dim": S, "eps": EPS}))  # fmt: skip
    plan = Plan(buffers=(Buffer("x", ("T", C)), Buffer("y", ("T", C))), ops=ops, kv=KVSpec(1, 1, 8), input_tokens="tokens",
                output_logits="y", output_hidden="x", vocab_size=8, n_embd=C, context_length=64, state=state)  # fmt: skip
    hp = HParams(architecture="qwen35", name="delta-net-test", context_length=64, n_embd=C, n_ff=8, n_layers=1, n_heads=1,
                 n_kv_heads=1, head_dim=8, n_rot=8, rope_style="neox", rope_freq_base=1e4, rope_freq_scale=1.0,
                 rope_scaling_type="none", rms_eps=EPS, vocab_size=8, tied_embeddings=False, qkv_bias=False,
                 rope_freq_factors=False)  # fmt: skip
    target = parse_target({"native": "cpu", "portable": "cpu-generic"}[build])
    source = cpu.render_source(CodegenInput(target, hp, plan, WeightLayout(256, tuple(entries)), None, None), step=False)
    return cpu.compile_source(source, cpu.compile_command(target))


@pytest.fixture(scope="module", params=["native", "portable"])
def lib(request, tmp_path_factory):
    if request.param == "native" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the native build is tested on x86-64")
    path = tmp_path_factory.mktemp(request.param) / cpu.LIBRARY
    path.write_bytes(_library(request.param))
    lib = ctypes.CDLL(str(path))
    lib.rfc_ssm_conv.argtypes = [_P, _P, _P, _P, ctypes.c_int, ctypes.c_int, _P, ctypes.c_int, _P]
    lib.rfc_gated_delta_net.argtypes = [_P, _P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                        _P, _P, ctypes.c_float, _P]  # fmt: skip
    return lib


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _layout(starts: list[int], lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    positions = np.concatenate([np.arange(p, p + n) for p, n in zip(starts, lengths)]).astype(np.int32)
    return positions, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def _states(arrays: list[np.ndarray | None]):
    return (ctypes.c_void_p * len(arrays))(*[_ptr(a) for a in arrays])


def _assert_close(got, want, rtol, atol):
    err = np.abs(got - want)
    assert (err <= rtol * np.abs(want) + atol).all(), f"max |Δ| {err.max():.3g}"


# sequence 0 starts at position 0 (its slot holds stale values), 1 decodes one token, 2 continues
# a chunk, 3 has no slot (from position 0)
STARTS, LENGTHS = [0, 9, 5, 0], [5, 1, 7, 3]


def test_ssm_conv_matches_reference(lib):
    rng = np.random.default_rng(0)
    positions, seq_start = _layout(STARTS, LENGTHS)
    x = rng.standard_normal((len(positions), C)).astype(np.float32)
    w = (rng.standard_normal((C, K)) * 0.5).astype(np.float32)
    states = [rng.standard_normal((K - 1, C)).astype(np.float32) for _ in range(3)] + [None]
    want_states = [np.zeros_like(states[0]) if STARTS[s] == 0 else states[s].copy() for s in range(3)]
    out = np.full_like(x, np.nan)
    lib.rfc_ssm_conv(_ptr(x), _ptr(out), _ptr(positions), _ptr(seq_start), len(STARTS), C, _ptr(w), K, _states(states))
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        start = want_states[s] if s < 3 else np.zeros((K - 1, C), np.float32)
        want, after = ssm_conv_chunk(x[lo:hi], w.astype(np.float64), start)
        _assert_close(out[lo:hi], want, 1e-5, 1e-6)
        if s < 3:
            _assert_close(states[s], after, 0, 0)  # the window's last rows, copied


def _gdn_inputs(rng, n):
    qkv = rng.standard_normal((n, W_QKV)).astype(np.float32)
    alpha = rng.standard_normal((n, HV)).astype(np.float32)
    beta = (2 * rng.standard_normal((n, HV))).astype(np.float32)
    return qkv, alpha, beta


A = np.array([-0.05, -0.3, -1.0, -2.5], np.float32)  # ssm_a = -exp(A_log): decays from 0.97 to 0.1
DT = np.array([0.5, -0.2, 0.0, 1.0], np.float32)


def _gdn(lib, qkv, alpha, beta, positions, seq_start, states):
    out = np.full((len(qkv), HV * S), np.nan, np.float32)
    lib.rfc_gated_delta_net(_ptr(qkv), _ptr(alpha), _ptr(beta), _ptr(out), _ptr(positions), _ptr(seq_start),
                            len(seq_start) - 1, HK, HV, S, _ptr(A), _ptr(DT), EPS, _states(states))  # fmt: skip
    return out


def test_gated_delta_net_matches_reference(lib):
    rng = np.random.default_rng(1)
    positions, seq_start = _layout(STARTS, LENGTHS)
    qkv, alpha, beta = _gdn_inputs(rng, len(positions))
    states = [(0.3 * rng.standard_normal((HV, S, S))).astype(np.float32) for _ in range(3)] + [None]
    starts = [np.zeros((HV, S, S), np.float32) if STARTS[s] == 0 or s == 3 else states[s].copy() for s in range(4)]
    out = _gdn(lib, qkv, alpha, beta, positions, seq_start, states)
    for s in range(len(STARTS)):
        lo, hi = seq_start[s], seq_start[s + 1]
        want, after = gated_delta_net_chunk(qkv[lo:hi], alpha[lo:hi], beta[lo:hi], A.astype(np.float64), DT.astype(np.float64),
                                            starts[s], HK, HV, S, EPS)  # fmt: skip
        _assert_close(out[lo:hi], want, 0, 2e-5)
        if s < 3:
            _assert_close(states[s], after, 0, 2e-5)


def test_a_chunk_continues_from_the_state_the_last_one_left(lib):
    """11 tokens as 4 then 7 (the state carried in the slot) give what 11 at once give."""
    rng = np.random.default_rng(2)
    qkv, alpha, beta = _gdn_inputs(rng, 11)
    whole = _gdn(lib, qkv, alpha, beta, *_layout([0], [11]), [np.full((HV, S, S), 7.0, np.float32)])
    slot = np.full((HV, S, S), 7.0, np.float32)  # stale: position 0 must not read it
    first = _gdn(lib, qkv[:4], alpha[:4], beta[:4], *_layout([0], [4]), [slot])
    rest = _gdn(lib, qkv[4:], alpha[4:], beta[4:], *_layout([4], [7]), [slot])
    _assert_close(np.concatenate([first, rest]), whole, 0, 1e-6)
    x = rng.standard_normal((11, C)).astype(np.float32)
    w = rng.standard_normal((C, K)).astype(np.float32)
    outs = []
    conv_slot = np.full((K - 1, C), 7.0, np.float32)
    for start, n in ((0, 11), (0, 4), (4, 7)):
        out, chunk = np.empty((n, C), np.float32), x[start : start + n].copy()
        positions, seq_start = _layout([start], [n])
        lib.rfc_ssm_conv(_ptr(chunk), _ptr(out), _ptr(positions), _ptr(seq_start), 1, C, _ptr(w), K,
                         _states([conv_slot]))  # fmt: skip
        outs.append(out)
    np.testing.assert_array_equal(np.concatenate(outs[1:]), outs[0])
