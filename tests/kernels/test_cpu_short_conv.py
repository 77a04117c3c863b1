"""LFM2's short_conv cpu kernel (templates/cpu_short_conv.c.j2) against the reference
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
import platform
import shutil

import numpy as np
import pytest

from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan, StateSpec, StateTensor
from rfc.compiler.codegen import CodegenInput, cpu
from rfc.compiler.spec import HParams
from rfc.compiler.targets import parse_target
from rfc.runtime.devices.reference import short_conv_chunk

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"),
]

C, K = 40, 3
_P = ctypes.c_void_p


def _library(build: str) -> bytes:
    raw = np.zeros((C, K), np.float32).tobytes()
    entries = (TensorEntry("conv", "conv", "F32", (C, K), 0, len(raw), ""),)
    plan = Plan(buffers=(Buffer("bcx", ("T", 3 * C)), Buffer("y", ("T", C))),
                ops=(Op("short_conv", ("bcx",), ("y",), ("conv",), {"state": 0}),), kv=KVSpec(1, 1, 8),
                input_tokens="tokens", output_logits="y", output_hidden="y", vocab_size=8, n_embd=C, context_length=64,
                state=StateSpec((StateTensor(0, (K - 1, C)),)))  # fmt: skip
    hp = HParams(architecture="lfm2", name="short-conv-test", context_length=64, n_embd=C, n_ff=8, n_layers=1, n_heads=1,
                 n_kv_heads=1, head_dim=8, n_rot=8, rope_style="neox", rope_freq_base=1e4, rope_freq_scale=1.0,
                 rope_scaling_type="none", rms_eps=1e-5, vocab_size=8, tied_embeddings=True, qkv_bias=False,
                 rope_freq_factors=False)  # fmt: skip
    target = parse_target({"native": "cpu", "portable": "cpu-generic"}[build])
    source = cpu.render_source(CodegenInput(target, hp, plan, WeightLayout(256, entries), None, None), step=False)
    return cpu.compile_source(source, cpu.compile_command(target))


@pytest.fixture(scope="module", params=["native", "portable"])
def lib(request, tmp_path_factory):
    if request.param == "native" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the native build is tested on x86-64")
    path = tmp_path_factory.mktemp(request.param) / cpu.LIBRARY
    path.write_bytes(_library(request.param))
    lib = ctypes.CDLL(str(path))
    lib.rfc_short_conv.argtypes = [_P, _P, _P, _P, ctypes.c_int, ctypes.c_int, _P, ctypes.c_int, _P]
    return lib


def test_short_conv_matches_the_reference_with_states(lib):
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.5, (C, K)).astype(np.float32)
    lens, starts = (5, 1, 4, 3), (0, 9, 2, 0)  # from zero (stale slot), decode, continue, no slot
    bcx = rng.normal(0, 1, (sum(lens), 3 * C)).astype(np.float32)
    states = rng.normal(0, 1, (3, K - 1, C)).astype(np.float32)
    before = states.copy()
    seq_start = np.cumsum((0, *lens)).astype(np.int32)
    positions = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lens)]).astype(np.int32)
    out = np.zeros((sum(lens), C), np.float32)
    ptrs = (ctypes.c_void_p * 4)(*(states[i].ctypes.data for i in range(3)), None)
    lib.rfc_short_conv(bcx.ctypes.data, out.ctypes.data, positions.ctypes.data, seq_start.ctypes.data,
                       4, C, w.ctypes.data, K, ptrs)
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
    ptrs = (ctypes.c_void_p * 1)(state.ctypes.data)
    outs = []
    for lo, hi in ((0, 4), (4, 5), (5, 9)):
        out = np.zeros((hi - lo, C), np.float32)
        chunk = np.ascontiguousarray(bcx[lo:hi])
        lib.rfc_short_conv(chunk.ctypes.data, out.ctypes.data, np.arange(lo, hi, dtype=np.int32).ctypes.data,
                           np.array([0, hi - lo], np.int32).ctypes.data, 1, C, w.ctypes.data, K, ptrs)
        outs.append(out)
    whole = np.zeros((9, C), np.float32)
    fresh = (ctypes.c_void_p * 1)(None)
    lib.rfc_short_conv(bcx.ctypes.data, whole.ctypes.data, np.arange(9, dtype=np.int32).ctypes.data,
                       np.array([0, 9], np.int32).ctypes.data, 1, C, w.ctypes.data, K, fresh)
    np.testing.assert_array_equal(np.concatenate(outs), whole)
