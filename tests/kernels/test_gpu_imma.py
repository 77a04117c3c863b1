"""The int8 tensor-core prefill matmul (templates/gpu_matmul_imma.hip.j2, kernels/rfc_gpu_imma.h)
on the emulator, for each instruction family: sm_90 (mma.sync m16n8k32), gfx90a (MFMA
16x16x16 i8, wave 64), gfx1100 (WMMA 16x16x16 iu8, wave 32). The emulator's portable form of
each instruction reads the lanes' registers where the ISA's fragment layout puts the operands
and sums in int32, which is exact: the hardware's integers.

Two oracles per shape (every format the kernel takes, GGUF and planar; partial tiles of tokens
(1, 17, 65, 130 against 64) and of rows; K of one, two and a partial 256-column chunk), for
the planner's default kernels and, on fewer shapes, for its other configurations (VARIANTS:
the 128 x 128 tile with and without prefetch, the 64 x 64 one with it, the first kernel's):
- bitwise, a numpy model of the kernel's arithmetic: activations rounded to int8 per 32 values
  in float32 as rfc_quantize32 rounds them, the weight's sub-blocks as w = a * u + b (its
  int8 quants u as the block holds them), int32 dot products per sub-block, then
  acc += xd * (a * dot + b * sum(xq)) in float32, sub-block after sub-block;
- bounded, ReferenceDevice.op_matmul in float64 over the rounded activations:
  max |gpu - ref| <= 2e-5 * max |ref|. The rounding is tests/oracle.py's "q8_32" kind (the
  decode list's, so the model tests' bounds are the decode list's) up to the rare value that
  float32 and float64 round to different sides of a half.
"""

import ctypes
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.formats import PLANAR_FORMATS
from rfc.compiler.codegen.gpu import render_source
import rfc.compiler.codegen.gpu_imma as gpu_imma
from rfc.compiler.codegen.gpu_imma import IMMA_FORMATS, IMMA_TILINGS, ImmaTiling, imma_matmul_spec, quantize_q8_spec
from rfc.compiler.codegen.gpu_mma import mma_matmul_spec
from rfc.compiler.codegen.gpu_plan import prefill_matmul_spec, weight_geometry
from rfc.compiler.targets import parse_target
from rfc.compiler.weights_planar import pack_planar
from rfc.runtime.devices.reference import ReferenceDevice
from rfc.runtime.model import quants
from rfc.runtime.model.quants import dequantize

from tests.conftest import shared_basetemp
from tests.kernels.gpu_emulator import build_source_emulator, needs_emulator
from tests.kernels.gpu_support import round_activations
from tests.kernels.test_gpu_mma import random_weight

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

REL_TOL = 2e-5
TARGET = parse_target("sm_90")
# (format, rows, cols): 100 rows leave a partial row tile; 512 columns are two chunks, 320 one
# and a partial one, 256 one whole
SHAPES = (
    [(f, 100, 512) for f in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K")]
    + [(f, 70, 320) for f in ("Q8_0p", "Q4_0p", "Q4_1p", "Q5_0p", "Q5_1p")]
    + [("Q4_Kp", 70, 512), ("Q5_Kp", 70, 256)]
    + [("Q4_K", 130, 256), ("Q8_0", 10, 96)]
    + [("Q6_K", 100, 512), ("Q6_Kp", 70, 256), ("Q3_K", 100, 512), ("Q3_Kp", 70, 256)]  # halves: own scales
)
# the AMD instruction forms on fewer shapes (the kernel around them is the same): a format
# without and one with offsets, a planar one, a k-quant, partial tiles of rows and tokens
AMD_SHAPES = [("Q8_0", 10, 96), ("Q4_1p", 70, 320), ("Q4_K", 130, 256), ("Q6_K", 70, 256)]
CASES = [(f, r, c, "sm_90") for f, r, c in SHAPES] + [(*s, t) for t in ("gfx90a", "gfx1100") for s in AMD_SHAPES]
# The planner's other kernels, on shapes that leave partial tiles of the big tile too: 130 rows
# (128 + 2), 200 rows, 10 rows; K of 2.5 and 1.25 chunks of 128 columns, one short chunk, four
# whole ones; with the tokens above (130: 128 + 2)
VARIANT_SHAPES = [("Q4_1p", 200, 320), ("Q5_0", 130, 160), ("Q8_0", 10, 96), ("Q4_K", 130, 512), ("Q6_Kp", 130, 512)]
VARIANTS = {
    # name: (tiling, module switches while the planner runs)
    "128x128": (IMMA_TILINGS["128x128"], {}),
    "128x128-direct": (IMMA_TILINGS["128x128"], {"IMMA_PREFETCH": False, "IMMA_PAIRED_SCALES": False}),
    # each tile rounding its activations itself (no rounding launch before it)
    "128x128-rounding": (IMMA_TILINGS["128x128"], {"IMMA_PREQUANT": False}),
    "64x64-prefetch": (IMMA_TILINGS["64x64"], {"IMMA_PREFETCH": True}),
    # the first kernel's configuration (docs/benchmarks.md): B reloaded per A, scales by token,
    # scales in an array each, sums converted to float by a conversion
    "first": (
        IMMA_TILINGS["64x64"],
        {"IMMA_HOLD_B": False, "IMMA_SCALES_BY_SUB": False, "IMMA_PAIRED_SCALES": False, "IMMA_BIASED_SUMS": False},
    ),
}
# the 16-wave big tile (gpu_imma.IMMA_BIG_TILE, NVIDIA only): 512 threads, 2 x 2 fragments a wave;
# partial tiles, a format with offsets and one with halves
VARIANTS["128x128w16"] = (IMMA_TILINGS["128x128w16"], {})
VARIANT_CASES = (
    [(*s, "sm_90", v) for v in VARIANTS if v != "128x128w16" for s in VARIANT_SHAPES]
    + [(*s, "sm_90", "128x128w16") for s in VARIANT_SHAPES[2:]]
    + [(*s, "gfx90a", "128x128") for s in VARIANT_SHAPES[1:3]]
)
TOKENS = (1, 17, 65, 130)
F32 = np.float32


def decompose(raw: np.ndarray, fmt: str, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A GGUF-layout weight as the kernel reads it: u [rows, cols] its int8 quants, a and b
    [rows, cols / 32] float32 per sub-block (w = a * u + b), from the block fields; Q6_K's a and
    b per 16-element half, [rows, cols / 16], and u its quants minus 32 (b = 0): signed bytes."""
    blocks = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=quants._CODECS[fmt].block)
    n = len(blocks)
    d = blocks["d"].astype(F32)
    if fmt == "Q6_K":
        ql = blocks["ql"].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
        qh = blocks["qh"].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
        q = (ql & np.uint8(0x0F)).reshape(n, 8, 32) | ((qh & np.uint8(0x03)).reshape(n, 8, 32) << np.uint8(4))
        u = q.astype(np.int32) - 32
        a = d[:, None] * blocks["scales"].astype(F32)
        return u.reshape(rows, cols), np.asarray(a, F32).reshape(rows, -1), np.zeros((rows, cols // 16), F32)
    if fmt == "Q3_K":  # q - 4 with q = low 2 bits + 4 * the high bit, as the decoder's low - 4 * (1 - hbit)
        hbit = (blocks["hmask"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        u = quants._crumbs(blocks["qs"], 16).astype(np.int32) - 4 * (1 - hbit.reshape(n, 16, 16).astype(np.int32))
        a = d[:, None] * quants._q3_k_scales(blocks["scales"]).astype(F32)
        return u.reshape(rows, cols), np.asarray(a, F32).reshape(rows, -1), np.zeros((rows, cols // 16), F32)
    if fmt == "Q8_0":
        u, a, b = blocks["qs"].astype(np.int32), d, np.zeros_like(d)
    elif fmt in ("Q4_0", "Q4_1"):
        u, a = quants._nibbles(blocks["qs"]).astype(np.int32), d
        b = F32(-8) * d if fmt == "Q4_0" else blocks["m"].astype(F32)
    elif fmt in ("Q5_0", "Q5_1"):
        u, a = quants._q5_values(blocks).astype(np.int32), d
        b = F32(-16) * d if fmt == "Q5_0" else blocks["m"].astype(F32)
    else:  # Q4_K, Q5_K: 8 sub-blocks, 6-bit scales and mins
        q = quants._k4_values(blocks)
        if fmt == "Q5_K":
            hbit = (blocks["qh"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
            q = q | (hbit.reshape(n, 8, 32) << np.uint8(4))
        sc, mn = quants._k4_scales_mins(blocks["scales"])
        u = q.astype(np.int32)
        a = d[:, None] * sc.astype(F32)
        b = -(blocks["dmin"].astype(F32)[:, None] * mn.astype(F32))
    return u.reshape(rows, cols), np.asarray(a, F32).reshape(rows, -1), np.asarray(b, F32).reshape(rows, -1)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rfc_quantize32 in float32: xq [T, K] int, xd [T, K / 32] float32."""
    xb = x.astype(F32).reshape(len(x), -1, 32)
    d = np.abs(xb).max(axis=-1) / F32(127)
    inv = np.divide(F32(1), d, out=np.zeros_like(d), where=d > 0)
    q = np.clip(np.rint(xb * inv[..., None]), -127, 127).astype(np.int32)
    return q.reshape(len(x), -1), d


def kernel_model(x: np.ndarray, u: np.ndarray, a: np.ndarray, b: np.ndarray, has_min: bool) -> np.ndarray:
    """The kernel's arithmetic, every float32 operation in its order; with a per half (a of
    [rows, cols / 16]: Q6_K), each half's dot scaled and added on its own."""
    xq, xd = quantize_activations(x)
    subs = xq.shape[1] // 32
    acc = np.zeros((len(x), len(u)), dtype=F32)
    if a.shape[1] == 2 * subs:
        for h in range(2 * subs):
            s = slice(16 * h, 16 * h + 16)
            dot = (xq[:, s].astype(np.int64) @ u[:, s].astype(np.int64).T).astype(F32)
            acc = acc + xd[:, h // 2, None] * (a[None, :, h] * dot)
        return acc
    for sb in range(subs):
        s = slice(32 * sb, 32 * sb + 32)
        dot = (xq[:, s].astype(np.int64) @ u[:, s].astype(np.int64).T).astype(F32)  # exact: |dot| < 2^24
        t = a[None, :, sb] * dot
        if has_min:
            t = t + b[None, :, sb] * xq[:, s].sum(axis=1).astype(F32)[:, None]
        acc = acc + xd[:, sb, None] * t
    return acc


def _launch(lib, spec, grid: tuple[int, int], *values) -> None:
    params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    fn = getattr(lib, f"rfc_emu_launch_{spec.name}")
    fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p]
    fn(grid[0], grid[1], 1, spec.threads, params)


def variant_specs(target, shapes, variant: str | None) -> dict:
    """The planner's kernel for each (format, rows, cols), as it plans by default (variant None)
    or with a VARIANTS tiling and module switches."""
    if variant is None:
        return {(f, r, c): imma_matmul_spec(target, weight_geometry(f, r, c)) for f, r, c in shapes}
    tiling, switches = VARIANTS[variant]
    old = {name: getattr(gpu_imma, name) for name in switches}
    try:
        for name, value in switches.items():
            setattr(gpu_imma, name, value)
        return {(f, r, c): imma_matmul_spec(target, weight_geometry(f, r, c), tiling) for f, r, c in shapes}
    finally:
        for name, value in old.items():
            setattr(gpu_imma, name, value)


class Kernels:
    """Each case's kernel, and where it takes its input rounded once a step (IMMA_PREQUANT), the
    kernel that rounds it (gpu_quantize_q8.hip.j2), run before it as the prefill list runs it."""

    def __init__(self, target: str, build_dir: Path, variant: str | None = None):
        t = parse_target(target)
        if variant is None:
            shapes = [(f, r, c) for f, r, c, tt in CASES if tt == target]
        else:
            shapes = [(f, r, c) for f, r, c, tt, v in VARIANT_CASES if (tt, v) == (target, variant)]
        self.specs = variant_specs(t, shapes, variant)
        assert all(self.specs.values())
        self.quantize = {
            s.params["k"]: quantize_q8_spec(t, s.params["k"], s.params["max_tokens"])
            for s in self.specs.values()
            if s.params["prequant"]
        }
        kernels = [*self.specs.values(), *self.quantize.values()]
        source = render_source(t, kernels)
        self.lib = ctypes.CDLL(str(build_source_emulator(source, [s.name for s in kernels], build_dir)))

    def run(self, fmt: str, rows: int, cols: int, x: np.ndarray, raw: np.ndarray) -> np.ndarray:
        spec = self.specs[fmt, rows, cols]
        tokens = len(x)
        out_buf = np.full((tokens + 1, rows), -7.0, dtype=np.float32)  # a canary row past the tokens
        raw, x = np.ascontiguousarray(raw), np.ascontiguousarray(x, dtype=np.float32)
        source = x
        if spec.params["prequant"]:
            q = self.quantize[cols]
            # bytes past the step's tokens are never read
            source = np.full(spec.params["q8_bytes"], 0xA5, dtype=np.uint8)
            _launch(
                self.lib,
                q,
                (-(-q.params["subs"] // q.threads), tokens),
                ctypes.c_void_p(source.ctypes.data),
                ctypes.c_void_p(x.ctypes.data),
                ctypes.c_int(tokens),
            )
        _launch(
            self.lib,
            spec,
            tuple(-(-(tokens if count == "n_rows" else count) // tile) for count, tile in spec.grid),
            ctypes.c_void_p(out_buf.ctypes.data),
            ctypes.c_void_p(source.ctypes.data),
            ctypes.c_void_p(raw.ctypes.data),
            ctypes.c_int(tokens),
        )
        assert (out_buf[tokens] == -7.0).all(), "the kernel wrote past its tokens"
        return out_buf[:tokens].copy()


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    built: dict[tuple, Kernels] = {}

    def get(target: str, variant: str | None = None) -> Kernels:
        if (target, variant) not in built:
            built[target, variant] = Kernels(target, shared_basetemp(tmp_path_factory) / "gpu-imma", variant)
        return built[target, variant]

    return get


@pytest.mark.parametrize("fmt,rows,cols,target", CASES, ids=[f"{t}-{f}-{r}x{c}" for f, r, c, t in CASES])
def test_imma_matmul_is_its_model_bitwise_and_near_the_reference(fmt, rows, cols, target, kernels):
    check_kernel(fmt, rows, cols, kernels(target), target)


@pytest.mark.parametrize(
    "fmt,rows,cols,target,variant", VARIANT_CASES, ids=[f"{t}-{v}-{f}-{r}x{c}" for f, r, c, t, v in VARIANT_CASES]
)
def test_imma_tilings_are_the_same_model_bitwise(fmt, rows, cols, target, variant, kernels):
    """The big tile (with and without prefetch), the small one with prefetch and the first
    kernel's configuration: the same bits as the model, partial tiles of every kind included."""
    spec = kernels(target, variant).specs[fmt, rows, cols]
    tiling = VARIANTS[variant][0]
    assert (spec.params["tile_m"], spec.params["tile_n"], spec.params["k_chunk"]) == (
        tiling.tile_m,
        tiling.tile_n,
        tiling.k_chunk,
    )
    check_kernel(fmt, rows, cols, kernels(target, variant), f"{target} {variant}")


def check_kernel(fmt: str, rows: int, cols: int, k: Kernels, label: str) -> None:
    rng = np.random.default_rng([rows, cols, *fmt.encode()])
    base = PLANAR_FORMATS[fmt].base if fmt in PLANAR_FORMATS else fmt
    raw_base = random_weight(rng, base, rows, cols)
    raw = pack_planar(raw_base, fmt) if fmt in PLANAR_FORMATS else raw_base
    u, a, b = decompose(raw_base, base, rows, cols)
    w = dequantize(np.ascontiguousarray(raw_base).reshape(-1), base, (rows, cols))
    # the decomposition is the format's values: w = a * u + b per sub-block, as the decoders
    # (ggml's and the reference's) compute it in float32
    group = cols // a.shape[1]  # 32 values a scale, 16 for Q6_K's halves
    assert np.array_equal(w, a.repeat(group, 1) * u.astype(F32) + b.repeat(group, 1))
    for tokens in TOKENS:
        x = (3 * rng.standard_normal((tokens, cols))).astype(np.float32)
        got = k.run(fmt, rows, cols, x, raw)
        model = kernel_model(x, u, a, b, has_min=k.specs[fmt, rows, cols].params["has_min"])
        assert np.array_equal(got.view(np.uint32), model.view(np.uint32)), (
            f"{label} {fmt} {rows}x{cols}, {tokens} tokens: {np.count_nonzero(got != model)} outputs differ from the "
            f"model"
        )
        xq, xd = quantize_activations(x)
        rounded = xq * xd.astype(np.float64).repeat(32, 1)  # exact
        # the oracle's q8_32 kind rounds in float64: the same values but where x / d falls within
        # float32 rounding of a half (a rounding flip moves an output by up to xd * max |w|)
        step = xd.astype(np.float64).repeat(32, 1)
        flips = np.abs(rounded - round_activations(x)) > step / 2
        assert np.count_nonzero(flips) <= max(2, rounded.size // 1000), np.count_nonzero(flips)
        want = np.zeros((tokens, rows), dtype=np.float64)
        ReferenceDevice.op_matmul(None, [want], [rounded], [w.astype(np.float64)], {}, None)
        d = float(np.abs(got - want).max())
        bound = REL_TOL * max(1.0, float(np.abs(want).max()))
        assert d <= bound, f"{label} {fmt} {rows}x{cols}, {tokens} tokens: max |gpu - ref| {d:.2e} > {bound:.2e}"


def test_the_prefill_list_rounds_each_matmul_input_once():
    """The prefill list launches one rounding of a matmul input before the int8 matmuls of a run
    that read it (q, k and v; gate and up) into the arena slot they read, sized for the step's
    largest input, but where the launch before leaves it rounded (an add + rmsnorm, the SwiGLU
    before down); the decode list has none."""
    import tests.kernels.gpu_support  # noqa: F401  the fixtures (made by the conftest)
    from rfc.compiler.codegen.gpu_imma import Q8_SCRATCH
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from rfc.artifacts.program import unpack_program
    from tests.conftest import FIXTURES

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        emulator_compile(
            CompileOptions(model=FIXTURES / "tiny-llama-Q4_0.gguf", out_dir=Path(tmp) / "b", targets=("sm_90",))
        )
        program = unpack_program((Path(tmp) / "b" / "kernels" / "sm_90" / "program.msgpack").read_bytes())
    names = [launch.kernel for launch in program.prefill_launches]
    layer = names[names.index("rfc_rmsnorm_256_q8") + 1 :]
    # q, k and v: one segmented launch (gpu_imma.IMMA_SEGMENTS), gate and up too; the first norm leaves its
    # rows rounded (gpu_fuse.RMSNORM_Q8): no rounding launch before q, k and v
    assert layer[:1] == ["rfc_matmul_imma_q4_0p_256_64_64x256_segments"], layer[:1]
    # gate and up after the add + rmsnorm that leaves its output rounded (the decode list's q8 hand-off,
    # in the layout both lists read: gpu_imma.q8_layout): no rounding launch between; nor between the
    # SwiGLU that rounds its output (gpu_plan.GLU_Q8) and down
    ffn = layer[layer.index("rfc_add_rmsnorm_256_q8") + 1 :]
    assert ffn[:3] == [
        "rfc_matmul_imma_q4_0p_768_768x256_segments",
        "rfc_swiglu_768_q8",
        "rfc_matmul_imma_q4_0p_256x768",
    ], ffn[:3]
    # the layers after the first: q, k and v after the add + rmsnorm too, so one rounding a layer
    # (o's input) where four were
    second = names[names.index("rfc_add_rmsnorm_256_q8") + 1 :]
    second = second[second.index("rfc_add_rmsnorm_256_q8") :]
    assert second[:2] == ["rfc_add_rmsnorm_256_q8", "rfc_matmul_imma_q4_0p_256_64_64x256_segments"], second[:2]
    quantized = [i for i, n in enumerate(names) if n.startswith("rfc_quantize_q8_")]
    layers = sum(n.startswith("rfc_attention_") for n in names)
    assert len(quantized) == layers  # o's inputs (the first norm rounds the first q, k and v's)
    assert all(names[i + 1].startswith("rfc_matmul_imma_") for i in quantized)
    assert sum(n.startswith("rfc_matmul_imma_") for n in names) > len(quantized)  # shared by the runs
    assert not any(launch.kernel.startswith("rfc_quantize_q8_") for launch in program.launches)
    slot = program.arena.slot(Q8_SCRATCH)
    assert slot.nbytes >= program.arena.max_tokens * 768 * 1.25  # the largest input: ffn_down's 768 columns


def test_the_prefill_list_takes_int8_tensor_cores_where_the_target_and_format_allow():
    for fmt in IMMA_FORMATS:
        w = weight_geometry(fmt, 256, 512)
        assert prefill_matmul_spec(parse_target("sm_90"), w).template == "gpu_matmul_imma.hip.j2", fmt
        assert prefill_matmul_spec(parse_target("sm_80"), w).template == "gpu_matmul_imma.hip.j2", fmt
        for name in ("gfx908", "gfx90a", "gfx1100", "gfx1151"):
            assert prefill_matmul_spec(parse_target(name), w).template == "gpu_matmul_imma.hip.j2", (fmt, name)
        # Volta/Turing: fp16 tensor cores only
        assert prefill_matmul_spec(parse_target("sm_75"), w) == mma_matmul_spec(parse_target("sm_75"), w), fmt
        # no int8 matrix instruction built for: the decode list's kernels
        for name in ("sm_61", "gfx906", "gfx942", "gfx1030", "gfx1201"):
            assert prefill_matmul_spec(parse_target(name), w) is None, (fmt, name)
    # sub-blocks whose 16-element halves have their own scales and offsets, and float weights: half wmma
    for fmt in ("Q2_K", "Q2_Kp", "F16", "BF16"):
        w = weight_geometry(fmt, 256, 512)
        assert imma_matmul_spec(TARGET, w) is None, fmt
        assert prefill_matmul_spec(TARGET, w) == mma_matmul_spec(TARGET, w) is not None, fmt
    # Q6_K's and Q3_K's halves (own scales, b = -32 a, -4 a): int8 (gpu_imma.SIGNED_HALVES), or half
    # wmma with the switch off
    for fmt, offset in (("Q6_K", 32), ("Q6_Kp", 32), ("Q3_K", 4), ("Q3_Kp", 4)):
        w = weight_geometry(fmt, 256, 512)
        assert imma_matmul_spec(TARGET, w).params["halves"] == offset, fmt
        try:
            gpu_imma.IMMA_HALVES = False
            assert prefill_matmul_spec(TARGET, w) == mma_matmul_spec(TARGET, w) is not None, fmt
        finally:
            gpu_imma.IMMA_HALVES = True


def test_the_planner_takes_the_big_tile_for_big_matrices():
    """128 x 128 (prefetching) where a 512-token step still makes a block per multiprocessor of
    it and the target's instruction leaves the registers for it; 64 x 64 elsewhere; the module
    switches reach every configuration, the first kernel's included."""

    def tiles(target: str, rows: int, fmt: str = "Q4_K") -> tuple:
        s = imma_matmul_spec(parse_target(target), weight_geometry(fmt, rows, 4096))
        p = s.params
        assert s.grid == ((rows, p["tile_n"]), ("n_rows", p["tile_m"])) and s.threads == p["threads"]
        return p["tile_m"], p["tile_n"], p["k_chunk"], p["prefetch"]

    big, small = (128, 128, 128, True), (64, 64, 256, False)
    for target in ("sm_80", "sm_90", "gfx90a"):
        assert tiles(target, 4096) == tiles(target, 14336) == big, target  # 128 and 448 blocks at 512 tokens
        assert tiles(target, 2048) == tiles(target, 256) == small, target  # 64 and 8
    assert tiles("gfx1100", 14336) == small  # WMMA: 64 accumulators a lane spill
    # and pairs of scales made clang spill there (planar formats, K of one chunk)
    assert not imma_matmul_spec(parse_target("gfx1100"), weight_geometry("Q4_Kp", 256, 256)).params["paired"]
    assert imma_matmul_spec(parse_target("gfx90a"), weight_geometry("Q4_Kp", 256, 256)).params["paired"]
    assert imma_matmul_spec(parse_target("gfx90a"), weight_geometry("Q8_0", 4096, 4096)).threads == 512
    first = {
        "IMMA_TILING": "64x64",
        "IMMA_HOLD_B": False,
        "IMMA_SCALES_BY_SUB": False,
        "IMMA_PAIRED_SCALES": False,
        "IMMA_BIASED_SUMS": False,
    }
    for switches, want in (
        ({"IMMA_TILING": "64x64"}, small),
        ({"IMMA_TILING": "128x128"}, big),
        ({"IMMA_PREFETCH": False}, (128, 128, 128, False)),
        ({"IMMA_PREFETCH": True, "IMMA_TILING": "64x64"}, (64, 64, 256, True)),
        (first, small),
    ):
        old = {name: getattr(gpu_imma, name) for name in switches}
        try:
            for name, value in switches.items():
                setattr(gpu_imma, name, value)
            assert tiles("sm_90", 4096) == want, switches
            p = imma_matmul_spec(TARGET, weight_geometry("Q4_K", 4096, 4096)).params
        finally:
            for name, value in old.items():
                setattr(gpu_imma, name, value)
        by_sub = switches.get("IMMA_SCALES_BY_SUB", True)
        assert (p["x_stride"], p["x_sub_stride"]) == ((1, p["tile_m"]) if by_sub else (p["subs"], 1)), switches
        assert p["hold_b"] == switches.get("IMMA_HOLD_B", True)
        assert p["sum_bias"] == (0x4B400000 if switches.get("IMMA_BIASED_SUMS", True) else 0)
        assert p["paired"] == switches.get("IMMA_PAIRED_SCALES", True)  # Q4_K: with offsets b
    with pytest.raises(ValueError, match="48 KiB"):  # 2 x 128 x 272 bytes of int8 rows alone
        imma_matmul_spec(TARGET, weight_geometry("Q4_K", 4096, 4096), ImmaTiling(128, 128, 2, 4, 256, True))
    with pytest.raises(ValueError, match="threads"):  # 16-byte pieces that 256 threads do not divide
        imma_matmul_spec(TARGET, weight_geometry("Q4_K", 4096, 4096), ImmaTiling(64, 64, 2, 4, 96, True))


@pytest.mark.parametrize("target", ["sm_90", "gfx90a"])
def test_the_add_rmsnorm_hand_off_rounds_as_the_rounding_launch_does(target, tmp_path_factory):
    """The prefill list lets an add + rmsnorm's q8 twin (the decode list's hand-off) round its
    output for the int8 matmuls after it instead of a rounding launch: the two kernels leave the
    same bytes in the shared layout (gpu_imma.q8_layout): quants, scales and half sums, so the
    prefill list's logits are the rounding launch's bit for bit."""
    from rfc.artifacts.bundle import open_bundle
    from rfc.compiler.codegen.gpu import plan_target
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.conftest import FIXTURES

    out = tmp_path_factory.mktemp("handoff") / "b"
    emulator_compile(CompileOptions(model=FIXTURES / "tiny-llama-Q4_0.gguf", out_dir=out, targets=(), cache_dir=None))
    bundle = open_bundle(out)
    t = parse_target(target)
    specs = {s.name: s for s in plan_target(t, bundle.plan, bundle.layout)[0]}
    norm, rounding = specs["rfc_add_rmsnorm_256_q8"], specs["rfc_quantize_q8_256"]
    first, plain = specs["rfc_rmsnorm_256_q8"], specs["rfc_rmsnorm_256"]  # the first and last norms' (RMSNORM_Q8)
    for twin in (norm, first):
        assert twin.params["xd_offset"] == rounding.params["xd_offset"]
        assert twin.params["xs_offset"] == rounding.params["xs_offset"]
    lib = ctypes.CDLL(
        str(
            build_source_emulator(
                render_source(t, [norm, rounding, first, plain]),
                [norm.name, rounding.name, first.name, plain.name],
                shared_basetemp(tmp_path_factory) / "gpu-imma",
            )
        )
    )
    rng = np.random.default_rng(7)
    rows, width = 9, 256
    a, b = (rng.standard_normal((rows, width)) * 2).astype(F32), rng.standard_normal((rows, width)).astype(F32)
    weight = (1 + 0.1 * rng.standard_normal(width)).astype(F32)
    total, normed = np.zeros((rows, width), F32), np.zeros((rows, width), F32)
    q8_norm = np.full(norm.params["q8_bytes"], 0xA5, np.uint8)
    q8_rounding = np.full(norm.params["q8_bytes"], 0xA5, np.uint8)
    ptr = lambda arr: ctypes.c_void_p(arr.ctypes.data)  # noqa: E731
    _launch(
        lib, norm, (rows, 1), ptr(total), ptr(normed), ptr(q8_norm), ptr(a), ptr(b), ptr(weight), ctypes.c_int(rows)
    )
    _launch(
        lib,
        rounding,
        (-(-rounding.params["subs"] // rounding.threads), rows),
        ptr(q8_rounding),
        ptr(normed),
        ctypes.c_int(rows),
    )
    subs = width // 32
    xd, xs = norm.params["xd_offset"], norm.params["xs_offset"]
    for lo, hi in ((0, rows * width), (xd, xd + 4 * rows * subs), (xs, xs + 8 * rows * subs)):
        assert np.array_equal(q8_norm[lo:hi], q8_rounding[lo:hi]), (lo, hi)
        assert not (q8_rounding[lo:hi] == 0xA5).all(), (lo, hi)  # written
    assert (q8_rounding[rows * width : xd] == 0xA5).all()  # rows past the step's: untouched
    # the plain rmsnorm's twin: the plain kernel's rows, and the rounding launch's bytes of them
    normed2, plain_out = np.zeros((rows, width), F32), np.zeros((rows, width), F32)
    q8_first, q8_again = (np.full(first.params["q8_bytes"], 0xA5, np.uint8) for _ in range(2))
    _launch(lib, first, (rows, 1), ptr(normed2), ptr(q8_first), ptr(a), ptr(weight), ctypes.c_int(rows))
    _launch(lib, plain, (rows, 1), ptr(plain_out), ptr(a), ptr(weight), ctypes.c_int(rows))
    assert np.array_equal(normed2.view(np.uint32), plain_out.view(np.uint32))
    _launch(lib, rounding, (-(-rounding.params["subs"] // rounding.threads), rows), ptr(q8_again), ptr(plain_out),
            ctypes.c_int(rows))  # fmt: skip
    for lo, hi in ((0, rows * width), (xd, xd + 4 * rows * subs), (xs, xs + 8 * rows * subs)):
        assert np.array_equal(q8_first[lo:hi], q8_again[lo:hi]), (lo, hi)
        assert not (q8_again[lo:hi] == 0xA5).all(), (lo, hi)
