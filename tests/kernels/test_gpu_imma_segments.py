"""The segmented int8 tensor-core matmul (gpu_imma.imma_segments_spec): one launch over the rows of
2-3 weights that read one input, each segment its own weight and output, on the emulator for each
instruction family (sm_90 mma.sync, gfx90a MFMA at wave 64, gfx1100 WMMA). Its oracle is the
per-op kernels it stands for (imma_matmul_spec, held to their own model in test_gpu_imma.py): every
output bit for bit, over partial tiles of tokens, a partial chunk of K, GGUF and planar formats,
with and without offsets b, and with each tile rounding its own activations (IMMA_PREQUANT off).
"""

import ctypes

import numpy as np
import pytest

import rfc.compiler.codegen.gpu_imma as gpu_imma
from rfc.compiler.codegen.gpu import render_source
from rfc.compiler.codegen.gpu_imma import imma_matmul_spec, imma_segments_spec, quantize_q8_spec
from rfc.compiler.codegen.gpu_plan import weight_geometry
from rfc.compiler.targets import parse_target
from tests.conftest import shared_basetemp
from tests.kernels.gpu_emulator import build_source_emulator, needs_emulator
from tests.kernels.test_gpu_mma import random_weight

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

# (format, rows of each segment, cols): q, k and v of a model with a quarter of the kv heads
# (K two chunks of 256), and two segments over a chunk and a partial one
SHAPES = [("Q4_K", (128, 64, 64), 512), ("Q8_0p", (64, 128), 320), ("Q5_1", (64, 64, 192), 96)]
CASES = [(t, False) for t in ("sm_90", "gfx90a", "gfx1100")] + [("sm_90", True)]
TOKENS = (1, 65, 130)


def _launch(lib, spec, tokens: int, *values) -> None:
    grid = [-(-(tokens if count == "n_rows" else count) // tile) for count, tile in spec.grid] + [1]
    params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    fn = getattr(lib, f"rfc_emu_launch_{spec.name}")
    fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p]
    fn(grid[0], grid[1], 1, spec.threads, params)


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


@pytest.mark.parametrize("target,rounding", CASES, ids=[t + ("-rounding" if r else "") for t, r in CASES])
def test_the_segmented_matmul_is_the_per_op_kernels_bitwise(target, rounding, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(gpu_imma, "IMMA_PREQUANT", not rounding)
    t = parse_target(target)
    cases = []
    for fmt, rows, cols in SHAPES:
        own = [imma_matmul_spec(t, weight_geometry(fmt, r, cols)) for r in rows]
        seg = imma_segments_spec(own)
        assert seg is not None and seg.params["n"] == sum(rows), (fmt, rows)
        cases.append((fmt, rows, cols, own, seg))
    quantize = {cols: quantize_q8_spec(t, cols, own[0].params["max_tokens"]) for _f, _r, cols, own, _s in cases}
    kernels = list({s.name: s for *_x, own, seg in cases for s in (*own, seg)}.values())
    kernels += [] if rounding else quantize.values()
    lib = ctypes.CDLL(
        str(
            build_source_emulator(
                render_source(t, kernels), [s.name for s in kernels], shared_basetemp(tmp_path_factory) / "gpu-imma"
            )
        )
    )
    for fmt, rows, cols, own, seg in cases:
        rng = np.random.default_rng([cols, *rows, *fmt.encode()])
        weights = [np.ascontiguousarray(random_weight(rng, fmt, r, cols)) for r in rows]
        for tokens in TOKENS:
            x = np.ascontiguousarray(3 * rng.standard_normal((tokens, cols)), dtype=np.float32)
            source = x
            if not rounding:  # the rounding launch the prefill list makes first; bytes past the tokens unread
                q = quantize[cols]
                source = np.full(own[0].params["q8_bytes"], 0xA5, dtype=np.uint8)
                _launch(lib, q, tokens, _ptr(source), _ptr(x), ctypes.c_int(tokens))
            want = []
            for spec, w, r in zip(own, weights, rows):
                out = np.full((tokens, r), -7.0, dtype=np.float32)
                _launch(lib, spec, tokens, _ptr(out), _ptr(source), _ptr(w), ctypes.c_int(tokens))
                want.append(out)
            # a canary row past the tokens of each output
            got = [np.full((tokens + 1, r), -7.0, dtype=np.float32) for r in rows]
            _launch(lib, seg, tokens, *map(_ptr, got), _ptr(source), *map(_ptr, weights), ctypes.c_int(tokens))
            for i, (g, w) in enumerate(zip(got, want)):
                label = f"{target} {fmt} {rows}x{cols}, {tokens} tokens, segment {i}"
                assert (g[tokens] == -7.0).all(), f"{label}: written past the tokens"
                assert np.array_equal(g[:tokens].view(np.uint32), w.view(np.uint32)), (
                    f"{label}: {np.count_nonzero(g[:tokens] != w)} outputs differ from the per-op kernel's"
                )
