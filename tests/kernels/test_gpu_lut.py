"""The GPU kernels of the formats decoded through tables (artifacts/formats.py rows whose blocks
rfc_blocks_lut.h decodes, and the small-block formats with them), against the numpy reference,
on the emulator (gpu_emulator.py): each format's int8 matmul (rfc_gpu_lut.h's sub-block
decoders with dp4a), its embedding lookup (the block decoder) and its tensor-core prefill
matmul's decode (test_gpu_mma takes every format too).

Weights are random valid blocks (tools/fixtures/tiny_models.py random_blocks: every field drawn,
the scales set for a sane RMS), 100 rows (a partial row group), rows of an odd number of blocks
where the format allows. Tolerances as test_gpu_kernels' single ops: the matmul against the
float64 reference over activations rounded as the kernel rounds them (int8 per 32, float32
scale), max |gpu - ref| <= 2e-4 * max(1, max |ref|); the lookup 1e-6 relative (the same float32
operations, an fma allowed). The expert matmul (MXFP4, as gpt-oss's experts; IQ2_XXS) at the
matmul's tolerance per slot. And the mixed fixture (tiny-llama-IQ_MIX) compiled for sm_90 (nvcc
builds the cubin the device checks; the emulator runs the source), teacher-forced, within the
bounds test_gpu_kernels holds every fixture to.
"""

import ctypes
import math

import numpy as np
import pytest

from rfc.artifacts.formats import GGUF_FORMATS, Kernels, tensor_nbytes
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
from rfc.compiler.codegen.gpu import render_source
from rfc.compiler.codegen.gpu_plan import MATMUL_TOKENS, plan_kernels
from rfc.compiler.targets import parse_target
from rfc.runtime.model.quants import dequantize
from tests import testdata
from tests.conftest import shared_basetemp
from tests.kernels.gpu_emulator import build_source_emulator, needs_emulator
from tests.kernels.gpu_support import (  # noqa: F401
    assert_teacher_forced_within_bounds,
    gpu_build_cache,
    gpu_bundle,
    round_activations,
    toolchain_marks,
)

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

GENERATOR = testdata._generator()
FORMATS = [f for f in GENERATOR.RANDOM_BLOCK_FORMATS if f in GGUF_FORMATS and Kernels.GPU in GGUF_FORMATS[f].kernels]
ROWS, EMBD, VOCAB = 100, 256, 40
N_EXPERT, N_USED, MOE_TOKENS = 4, 2, 9
MOE_FORMATS = ("MXFP4", "IQ2_XXS")  # gpt-oss's experts; a 256-element format
REL_TOL = 2e-4


def k_of(fmt: str) -> int:
    qk = GGUF_FORMATS[fmt].block_elems
    return qk * {32: 11, 64: 9, 128: 5, 256: 2}[qk]


def weight(fmt: str, rows: int, k: int, seed: int) -> np.ndarray:
    f = GGUF_FORMATS[fmt]
    rng = np.random.default_rng([seed, *fmt.encode()])
    raw = rng.integers(0, 256, (rows * k // f.block_elems, f.block_bytes), np.uint8)
    return GENERATOR.random_blocks(fmt, raw, 1 / math.sqrt(k)).reshape(-1)


class Lib:
    """One emulated source with a matmul and an embedding lookup per format."""

    def __init__(self, build_dir, target: str = "sm_90"):
        entries, ops, buffers, offset = [], [], [], 0
        for fmt in FORMATS:
            k = k_of(fmt)
            for name, shape in ((f"w.{fmt}", (ROWS, k)), (f"e.{fmt}", (VOCAB, EMBD))):
                nbytes = tensor_nbytes(fmt, shape)
                entries.append(TensorEntry(name, name, fmt, shape, offset, nbytes, ""))
                offset += -(-nbytes // 256) * 256
            buffers += [Buffer(f"x.{fmt}", ("T", k)), Buffer(f"y.{fmt}", ("R", ROWS)), Buffer(f"h.{fmt}", ("T", EMBD))]
            ops += [
                Op("matmul", (f"x.{fmt}",), (f"y.{fmt}",), (f"w.{fmt}",)),
                Op("embed", ("tokens",), (f"h.{fmt}",), (f"e.{fmt}",)),
            ]
            if fmt in MOE_FORMATS:
                name, shape = f"m.{fmt}", (N_EXPERT, ROWS, k)
                nbytes = tensor_nbytes(fmt, shape)
                entries.append(TensorEntry(name, name, fmt, shape, offset, nbytes, ""))
                offset += -(-nbytes // 256) * 256
                buffers += [Buffer(f"ey.{fmt}", ("T", N_USED * ROWS))]
                ops += [Op("moe_matmul", (f"x.{fmt}", "ids"), (f"ey.{fmt}",), (name,))]
        buffers.append(Buffer("ids", ("T", N_USED)))
        plan = Plan(buffers=tuple(buffers), ops=tuple(ops), kv=KVSpec(1, 1, 32), input_tokens="tokens",
                    output_logits=f"y.{FORMATS[0]}", output_hidden=f"h.{FORMATS[0]}", vocab_size=VOCAB, n_embd=EMBD,
                    context_length=64)  # fmt: skip
        specs, op_kernels = plan_kernels(parse_target(target), plan, WeightLayout(256, tuple(entries)))
        self.specs = {s.name: s for s in specs}
        self.kernel_of = {op.weights[0]: name for op, name in zip(plan.ops, op_kernels)}
        source = render_source(parse_target(target), specs)
        self.lib = ctypes.CDLL(str(build_source_emulator(source, sorted(self.specs), build_dir)))

    def launch(self, weight_name: str, grid: tuple[int, int], args: list) -> None:
        spec = self.specs[self.kernel_of[weight_name]]
        values = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray) else ctypes.c_int(a) for a in args]
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        fn = getattr(self.lib, f"rfc_emu_launch_{spec.name}")
        fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p]
        fn(grid[0], grid[1], 1, spec.threads, params)

    def matmul(self, fmt: str, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        spec = self.specs[self.kernel_of[f"w.{fmt}"]]
        out = np.full((len(x), ROWS), np.nan, np.float32)
        grid = (-(-ROWS // spec.params["rows_per_block"]), -(-len(x) // MATMUL_TOKENS))
        self.launch(f"w.{fmt}", grid, [out, np.ascontiguousarray(x), w, len(x)])
        return out

    def moe_matmul(self, fmt: str, w: np.ndarray, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        spec = self.specs[self.kernel_of[f"m.{fmt}"]]
        out = np.full((len(x), N_USED * ROWS), np.nan, np.float32)
        grid = (-(-ROWS // spec.params["rows_per_block"]), N_EXPERT)
        self.launch(f"m.{fmt}", grid, [out, np.ascontiguousarray(x), np.ascontiguousarray(ids), w, len(x)])
        return out

    def embed(self, fmt: str, table: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        out = np.full((len(tokens), EMBD), np.nan, np.float32)
        self.launch(f"e.{fmt}", (len(tokens), 1), [out, tokens, table, len(tokens)])
        return out


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Lib:
    return Lib(shared_basetemp(tmp_path_factory) / "gpu-emu")


@pytest.mark.parametrize("tokens", [1, 11])
@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_matmul_matches_reference(lib: Lib, fmt: str, tokens: int):
    k = k_of(fmt)
    w = weight(fmt, ROWS, k, 1)
    x = (3 * np.random.default_rng(tokens).standard_normal((tokens, k))).astype(np.float32)
    got = lib.matmul(fmt, w, x)
    want = round_activations(x).astype(np.float64) @ dequantize(w, fmt, (ROWS, k)).astype(np.float64).T
    d, bound = float(np.abs(got - want).max()), REL_TOL * max(1.0, float(np.abs(want).max()))
    assert d <= bound, f"{fmt}, {tokens} tokens: max |gpu - ref| {d:.2e} > {bound:.2e}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_embed_matches_reference(lib: Lib, fmt: str):
    table = weight(fmt, VOCAB, EMBD, 2)
    tokens = np.array([3, 0, VOCAB - 1, 3, 17], np.int32)
    got = lib.embed(fmt, table, tokens)
    want = dequantize(table, fmt, (VOCAB, EMBD))[tokens]
    assert (np.abs(got - want) <= 1e-6 * np.abs(want) + 1e-7).all(), f"{fmt}: max |Δ| {np.abs(got - want).max():.3g}"


@pytest.mark.parametrize("fmt", [f for f in MOE_FORMATS if f in FORMATS])
def test_int8_expert_matmul_matches_reference(lib: Lib, fmt: str):
    """Every slot of 9 tokens routed to 2 of 4 experts (expert 3 gets none) against its expert."""
    k = k_of(fmt)
    w = weight(fmt, N_EXPERT * ROWS, k, 3)
    rng = np.random.default_rng(4)
    x = (3 * rng.standard_normal((MOE_TOKENS, k))).astype(np.float32)
    ids = np.stack([rng.permutation(3)[:N_USED] for _ in range(MOE_TOKENS)]).astype(np.int32)
    got = lib.moe_matmul(fmt, w, x, ids)
    experts = dequantize(w, fmt, (N_EXPERT, ROWS, k)).astype(np.float64)
    xr = round_activations(x).astype(np.float64)
    want = np.concatenate(
        [np.stack([xr[t] @ experts[ids[t, j]].T for t in range(MOE_TOKENS)]) for j in range(N_USED)], axis=1
    )
    d, bound = float(np.abs(got - want).max()), REL_TOL * max(1.0, float(np.abs(want).max()))
    assert d <= bound, f"{fmt}: max |gpu - ref| {d:.2e} > {bound:.2e}"


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_mixed_fixture_within_its_bounds(target, gpu_bundle, tmp_path_factory):
    """tiny-llama-IQ_MIX (a tensor type per matrix, every format of this file but Q2_0) compiled for
    the target, teacher-forced over 40 tokens on the emulator: within tests/bounds.py's bounds of
    the reference for the GPU's activation rounding, and of llama.cpp's logits."""
    from tests.kernels.test_gpu_kernels import Pair

    model = "llama-IQ_MIX"
    pair = Pair(gpu_bundle(model, target), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    assert_teacher_forced_within_bounds(pair, model)
