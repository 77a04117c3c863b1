"""The tensor-core prefill matmul (templates/gpu_matmul_mma.hip.j2) against the numpy reference,
on the emulator (gpu_emu.h implements the nvcuda::wmma calls it makes, a whole tile per lane).

Every weight format it takes (all GPU matmul formats but F32), partial tiles of tokens (1, 17, 65, 130 against tiles of
64) and of weight rows (100 and 10 rows against tiles of 64), K not a multiple of the kernel's chunk. The kernel
rounds activations and dequantized weights to half and sums their exact products in float,
so the reference is ReferenceDevice.op_matmul over the same half-rounded inputs, in float64:
max |gpu - ref| <= 2e-4 * max |ref| (float summation order). The unrounded product is further
off (half rounding: ~3e-4 of max |ref| on these sizes), which is what the model tests bound.
"""

import ctypes
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from rfc.artifacts.formats import FORMATS, PLANAR_FORMATS
from rfc.compiler.codegen.gpu import render_source
from rfc.compiler.codegen.gpu_mma import MMA_FORMATS, MMA_TILE_M, MMA_TILE_N, mma_matmul_spec
from rfc.compiler.codegen.gpu_plan import weight_geometry
from rfc.compiler.targets import parse_target
from rfc.compiler.weights_planar import pack_planar
from rfc.runtime.devices.reference import ReferenceDevice
from rfc.runtime.model.quants import dequantize
from tests import testdata
from tests.kernels.gpu_emulator import build_source_emulator, needs_emulator
from tests.conftest import shared_basetemp

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

REL_TOL = 2e-4
TARGET = parse_target("sm_90")
GENERATOR = testdata._generator()
# (format, rows, cols): every format at a row count that leaves a partial row tile; K of 512
# is four chunks; 96 and 320 leave a partial chunk (of 96 and 64 columns)
SHAPES = [(f, 100, 512) for f in MMA_FORMATS] + [("Q8_0", 10, 96), ("F16", 70, 320), ("Q4_K", 130, 256)]
TOKENS = (1, 17, 65, 130)

# byte offsets of the f16 scale fields that random bytes must not turn into inf or NaN
_SCALES = {
    "Q8_0": (0,),
    "Q4_0": (0,),
    "Q5_0": (0,),
    "Q4_1": (0, 2),
    "Q5_1": (0, 2),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}


def random_weight(rng: np.random.Generator, fmt: str, rows: int, cols: int) -> np.ndarray:
    """Bytes of a [rows, cols] weight: random blocks with finite scales, or normal floats;
    a planar GPU layout (the planner's repacking for sm_*) packs random blocks of its base."""
    if fmt in PLANAR_FORMATS:
        return pack_planar(random_weight(rng, PLANAR_FORMATS[fmt].base, rows, cols), fmt)
    if fmt == "F16":
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    if fmt == "BF16":
        return (
            (rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16)
            .astype(np.uint16)
            .view(np.uint8)
        )
    if fmt in GENERATOR.RANDOM_BLOCK_FORMATS:  # the formats newer than the k-quants (tools/fixtures/tiny_models.py)
        f = FORMATS[fmt]
        raw = rng.integers(0, 256, size=(rows * cols // f.block_elems, f.block_bytes), dtype=np.uint8)
        return GENERATOR.random_blocks(fmt, raw, 0.05).reshape(rows, -1)
    qk, ts = GGML_QUANT_SIZES[Q[fmt]]
    blocks = rng.integers(0, 256, size=(rows * cols // qk, ts), dtype=np.uint8)
    for off in _SCALES[fmt]:
        d = rng.uniform(0.01, 0.1, len(blocks)).astype(np.float16)
        blocks[:, off : off + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def reference(x: np.ndarray, raw: np.ndarray, fmt: str, rows: int, cols: int) -> np.ndarray:
    """ReferenceDevice's matmul over the inputs as the kernel rounds them (halves)."""
    w = dequantize(np.ascontiguousarray(raw).reshape(-1), fmt, (rows, cols)).astype(np.float64)
    want = np.zeros((len(x), rows), dtype=np.float64)
    half = lambda a: a.astype(np.float16).astype(np.float64)  # noqa: E731  (round to nearest even, as the GPU)
    ReferenceDevice.op_matmul(None, [want], [half(x)], [half(w)], {}, None)
    return want


class Kernels:
    """The planned tensor-core kernels for SHAPES, in one emulated source."""

    def __init__(self, build_dir: Path, shapes=SHAPES):
        self.specs = {(f, r, c): mma_matmul_spec(TARGET, weight_geometry(f, r, c)) for f, r, c in shapes}
        assert all(self.specs.values())
        source = render_source(TARGET, list(self.specs.values()))
        self.lib = ctypes.CDLL(str(build_source_emulator(source, [s.name for s in self.specs.values()], build_dir)))

    def run(self, fmt: str, rows: int, cols: int, x: np.ndarray, raw: np.ndarray) -> np.ndarray:
        spec = self.specs[fmt, rows, cols]
        tokens = len(x)
        out = np.full((tokens, rows), np.nan, dtype=np.float32)
        # a canary row past the tokens: the kernel must not write it
        out_buf = np.full((tokens + 1, rows), -7.0, dtype=np.float32)
        raw = np.ascontiguousarray(raw)
        values = [
            ctypes.c_void_p(out_buf.ctypes.data),
            ctypes.c_void_p(x.ctypes.data),
            ctypes.c_void_p(raw.ctypes.data),
            ctypes.c_int(tokens),
        ]
        params = (ctypes.c_void_p * 4)(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        fn = getattr(self.lib, f"rfc_emu_launch_{spec.name}")
        fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p]
        fn(-(-rows // MMA_TILE_N), -(-tokens // MMA_TILE_M), 1, spec.threads, params)
        assert (out_buf[tokens] == -7.0).all(), "the kernel wrote past its tokens"
        out[...] = out_buf[:tokens]
        return out


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> Kernels:
    return Kernels(shared_basetemp(tmp_path_factory) / "gpu-mma")


@pytest.mark.parametrize("fmt,rows,cols", SHAPES, ids=[f"{f}-{r}x{c}" for f, r, c in SHAPES])
def test_mma_matmul_matches_reference(fmt, rows, cols, kernels):
    rng = np.random.default_rng([rows, cols, *fmt.encode()])
    raw = random_weight(rng, fmt, rows, cols)
    for tokens in TOKENS:
        x = (3 * rng.standard_normal((tokens, cols))).astype(np.float32)
        got = kernels.run(fmt, rows, cols, x, raw)
        want = reference(x, raw, fmt, rows, cols)
        d = float(np.abs(got - want).max())
        bound = REL_TOL * max(1.0, float(np.abs(want).max()))
        assert d <= bound, f"{fmt} {rows}x{cols}, {tokens} tokens: max |gpu - ref| {d:.2e} > {bound:.2e}"


def test_only_targets_with_tensor_cores_get_the_kernel():
    w = weight_geometry("Q4_K", 256, 512)
    assert (
        mma_matmul_spec(parse_target("sm_90"), w) is not None and mma_matmul_spec(parse_target("sm_75"), w) is not None
    )
    for name in ("sm_61", "gfx90a", "gfx1100"):
        assert mma_matmul_spec(parse_target(name), w) is None, name
    assert mma_matmul_spec(TARGET, weight_geometry("F16", 64, 100)) is None  # rows of whole 32-element sub-blocks
    assert mma_matmul_spec(TARGET, weight_geometry("F32", 64, 256)) is None  # F32 weights are not rounded to half
