"""Every cpu kernel against the reference op (ReferenceDevice), for every weight format, each
called alone through the kit (tests/kernels/kit/cpu.py: the library's per-op exports).

Two builds of one generated library are tested: the one for this machine's ISA (the AVX2
int8 paths where the CPU has AVX2) and the portable build without SIMD flags (scalar C).
Sizes are odd on purpose: N = 37 rows (not a multiple of the row tile), T in {1, 3, 8, 17}
tokens (17 > the token chunk of the test build), K = 352 (11 blocks of 32: not a multiple
of 8 blocks) for the 32-element formats, 512 for the k-quants and 347 (not a multiple of the
8-element step) for F32/F16/BF16.

Tolerances:
- matmul: activations that a build rounds to int8 (`rfc_act_block_<fmt>` > 0: one scale d
  per block, values rounded to the nearest multiple of d) move each product by at most
  |w| d / 2, so |got - ref| <= sum_k |w_nk| d_t(k) / 2 + 2e-5 sum_k |w_nk x_tk| + 1e-6; for
  float activations only the float32 summation order differs: 2e-5 sum_k |w x| + 1e-6.
- embed (dequantization): 1e-6 relative (the same float32 operations; the compiler may fuse
  a multiply-add). rmsnorm, rope, swiglu, add, add_bias: 1e-5 relative + 1e-6.
- attention: the cache holds F16 (relative rounding 2^-11 of k and v): 2e-3 absolute on
  outputs of unit scale.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import platform
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.hashing import sha256_bytes
from rfc.artifacts.layout import TensorEntry, WeightLayout, align_up
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan
from rfc.compiler.codegen import CodegenInput, cpu
from rfc.compiler.errors import CompileError
from rfc.compiler.spec import HParams
from rfc.compiler.targets import parse_target
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.reference import ReferenceDevice
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.artifacts.formats import PACKED_FORMATS, Kernels, tensor_nbytes
from rfc.compiler.weights import pack_x8
from rfc.runtime.model.quants import FORMATS
from tests import testdata
from tests.conftest import FIXTURES
from tests.kernels.kit.cpu import CpuOpDevice, HostBuffer

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
GGUF_ONLY = sorted(f for f in FORMATS if Kernels.CPU in FORMATS[f].kernels)  # the GGUF formats with cpu kernels
ALL_FORMATS = GGUF_ONLY + sorted(PACKED_FORMATS)  # and the packed layouts (Q4_0x8, ...)
# the embedding lookup reads these (tied embeddings)
EMBED_PACKED = sorted(n for n, f in PACKED_FORMATS.items() if "embed" in f.ops)
N_ROWS = 37
N_EMBD, N_HEADS, N_KV_HEADS, HEAD_DIM, N_ROT, N_FF = 256, 8, 2, 32, 24, 96
KV = KVSpec(n_layers=2, n_kv_heads=N_KV_HEADS, head_dim=HEAD_DIM)
NUM_BLOCKS, BLOCK_SIZE = 16, 4
LOCAL_ROPE = {"freq_base": 500.0, "freq_scale": 1.0, "attn_factor": 1.25}  # a second rope: other base, attn_factor
# a third: YaRN, factor 4 over an original context of 4096 (the ramp spans pairs 3..9 of 12), its magnitude
YARN_ROPE = {"freq_scale": 0.25, "ext_factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "orig_ctx": 4096,
             "attn_factor": 1.0 + 0.1 * math.log(4.0)}  # fmt: skip
WINDOW_SOFTCAP = {"window": 5, "softcap": 1.5}  # small: most scores are capped, most positions masked
OAI = {"activation": "swiglu_oai", "alpha": 1.702, "limit": 7.0}  # gpt-oss's gate
# Experts: a few formats (float, 32-element int8, k-quants with and without a packed prefill,
# MXFP4 as gpt-oss's experts, a lattice i-quant)
MLA_HEADS, MLA_K = 4, {"F16": 40, "Q8_0": 64, "Q4_K": 256}  # deepseek2's per-head matmuls: format -> K
N_EXPERT, N_USED = 6, 2
# and the x8 layouts the cpu targets repack experts into (rows a whole number of groups: N_X8_EXPERT)
MOE_FORMATS = ("F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "MXFP4", "IQ2_XXS", "Q4_Kx8", "Q8_0x8")
N_X8_EXPERT = 40


def expert_rows(fmt: str) -> int:
    return N_X8_EXPERT if fmt in PACKED_FORMATS else N_ROWS


def k_of(fmt: str) -> int:
    """Rows of an odd number of blocks where the format allows (float rows: any length, the demo
    model's n_ff is 172; 32-element blocks: 11, not a multiple of 8; 256: 2, the k-quants' 512)."""
    fmt = PACKED_FORMATS[fmt].base if fmt in PACKED_FORMATS else fmt
    qk = FORMATS[fmt].block_elems
    return 347 if qk == 1 else qk * {32: 11, 64: 9, 128: 5, 256: 2}[qk]


# -- test weights --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _fixture_blocks(fmt: str) -> np.ndarray:
    """Every block of format `fmt` in the fixture GGUFs, as rows of raw bytes."""
    size = FORMATS[fmt].block_bytes
    found = [
        np.ascontiguousarray(t.data).view(np.uint8).reshape(-1, size)
        for path in sorted(FIXTURES.glob("tiny-llama-*.gguf"))
        for t in GGUFReader(path).tensors
        if t.tensor_type.name == fmt
    ]
    if not found:
        pytest.skip(f"no {fmt} tensor in the fixtures under {FIXTURES}")
    return np.concatenate(found)


def weight_bytes(fmt: str, rows: int, k: int, rng: np.random.Generator) -> bytes:
    """rows x k weights in `fmt`: quantized by gguf-py where it can, else real fixture blocks;
    a packed layout repacks its base format's rows (padded with zero rows to whole groups)."""
    packed = PACKED_FORMATS.get(fmt)
    if packed is not None:
        raw = np.frombuffer(weight_bytes(packed.base, rows, k, rng), np.uint8).reshape(rows, -1)
        padded = -(-rows // packed.group_rows) * packed.group_rows
        raw = np.concatenate([raw, np.zeros((padded - rows, raw.shape[1]), np.uint8)])
        out = pack_x8(raw, fmt).tobytes()
        assert len(out) == tensor_nbytes(fmt, (rows, k))
        return out
    generator = testdata._generator()
    if fmt in generator.RANDOM_BLOCK_FORMATS:  # no quantizer: random valid blocks (tools/fixtures/tiny_models.py)
        f = FORMATS[fmt]
        raw = rng.integers(0, 256, (rows * k // f.block_elems, f.block_bytes), np.uint8)
        return generator.random_blocks(fmt, raw, 1 / math.sqrt(k)).tobytes()
    try:
        x = (rng.standard_normal((rows, k)) / math.sqrt(k)).astype(np.float32)
        return np.ascontiguousarray(gguf.quants.quantize(x, GGMLQuantizationType[fmt])).tobytes()
    except NotImplementedError:
        blocks = _fixture_blocks(fmt)
        per_row = k // FORMATS[fmt].block_elems
        pick = rng.choice(len(blocks), size=rows * per_row, replace=len(blocks) < rows * per_row)
        return blocks[pick].tobytes()


class Blob:
    """weights.bin and its layout, built tensor by tensor."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.entries: list[TensorEntry] = []

    def add(self, name: str, fmt: str, shape: tuple[int, ...], raw: bytes) -> None:
        offset = align_up(len(self.data))
        self.data += b"\0" * (offset - len(self.data)) + raw
        self.entries.append(TensorEntry(name, name, fmt, shape, offset, len(raw), ""))


@functools.cache  # ~3.5 s of weights each; every kit and build of a rope style takes the same (immutable) model
def build_model(rope_style: str) -> tuple[HParams, Plan, WeightLayout, bytes]:
    rng = np.random.default_rng(1)
    blob = Blob()
    f32 = lambda a: np.asarray(a, np.float32).tobytes()  # noqa: E731
    ops = []
    for fmt in ALL_FORMATS:
        k = k_of(fmt)
        blob.add(f"mm.{fmt}", fmt, (N_ROWS, k), weight_bytes(fmt, N_ROWS, k, rng))
        ops.append(Op("matmul", ("x",), ("y",), (f"mm.{fmt}",)))
        if fmt not in PACKED_FORMATS or fmt in EMBED_PACKED:  # a tied output matrix is repacked if the lookup reads it
            blob.add(f"tok.{fmt}", fmt, (N_ROWS, N_EMBD), weight_bytes(fmt, N_ROWS, N_EMBD, rng))
            ops.append(Op("embed", ("tokens",), ("x",), (f"tok.{fmt}",)))
    for fmt in MOE_FORMATS:
        k = k_of(fmt)
        n = expert_rows(fmt)
        blob.add(f"moe.{fmt}", fmt, (N_EXPERT, n, k), weight_bytes(fmt, N_EXPERT * n, k, rng))
        ops.append(Op("moe_matmul", ("x", "expert_ids"), ("ey",), (f"moe.{fmt}",)))
    ops += [
        Op("moe_route", ("router",), ("expert_ids", "expert_weights"), (), {"n_used": N_USED}),
        Op("moe_combine", ("ey", "expert_weights"), ("h",)),
    ]
    blob.add("exp_bias", "F32", (N_EXPERT,), f32(0.5 * rng.standard_normal(N_EXPERT)))  # a router's selection bias
    ops.append(
        Op(
            "moe_route",
            ("router",),
            ("expert_ids", "expert_weights"),
            ("exp_bias",),
            {"n_used": N_USED, **ROUTE_VARIANTS[0]},
        )
    )
    blob.add("exp_scale", "F32", (N_EXPERT,), f32(0.5 + rng.random(N_EXPERT)))  # gemma4's per-expert output scales
    ops.append(
        Op(
            "moe_route",
            ("router",),
            ("expert_ids", "expert_weights"),
            ("exp_scale",),
            {"n_used": N_USED, "expert_scale": True},
        )
    )
    for fmt, k in MLA_K.items():  # deepseek2's per-head matmuls: [heads, N, K]
        blob.add(f"heads.{fmt}", fmt, (MLA_HEADS, 24, k), weight_bytes(fmt, MLA_HEADS * 24, k, rng))
        ops.append(Op("head_matmul", ("hx",), ("hy",), (f"heads.{fmt}",), {"heads": MLA_HEADS}))
    ops.append(Op("concat_heads", ("hx", "hy"), ("hxy",), (), {"heads": MLA_HEADS}))
    ops.append(Op("slice_heads", ("hxy",), ("hs",), (), {"heads": MLA_HEADS, "width": 8}))
    blob.add("norm", "F32", (N_EMBD,), f32(1.0 + 0.1 * rng.standard_normal(N_EMBD)))
    blob.add("norm16", "F16", (N_EMBD,), (1.0 + 0.1 * rng.standard_normal(N_EMBD)).astype(np.float16).tobytes())
    blob.add("bias", "F32", (N_ROWS,), f32(rng.standard_normal(N_ROWS)))
    blob.add("rope_freqs", "F32", (N_ROT // 2,), f32(1.0 + rng.random(N_ROT // 2)))
    blob.add("head_norm", "F32", (HEAD_DIM,), f32(1.0 + 0.1 * rng.standard_normal(HEAD_DIM)))
    blob.add("sinks", "F32", (N_HEADS,), f32([0.0, 12.0, -30.0, 2.5, -1.0, 40.0, 1.5, -4.0][:N_HEADS]))  # gpt-oss
    blob.add("exp_biases", "F32", (N_EXPERT, N_ROWS), f32(rng.standard_normal((N_EXPERT, N_ROWS))))  # gpt-oss
    rope = {
        "n_heads": N_HEADS,
        "n_kv_heads": N_KV_HEADS,
        "head_dim": HEAD_DIM,
        "n_rot": N_ROT,
        "style": rope_style,
        "freq_base": 10000.0,
        "freq_scale": 0.5,
    }
    att = {"n_heads": N_HEADS, "n_kv_heads": N_KV_HEADS, "head_dim": HEAD_DIM, "scale": 1.0 / math.sqrt(HEAD_DIM)}
    ops += [
        Op("rmsnorm", ("x",), ("h",), ("norm",), {"eps": 1e-5}),
        Op("rope", ("q", "k"), ("q", "k"), ("rope_freqs",), rope),
        Op("kv_write", ("k", "v"), (), (), {"layer": 1}),
        Op("attention", ("q",), ("att",), (), {"layer": 1, **att}),
        # the attributes layers of newer architectures differ in (qwen3, gemma2, gemma3)
        Op("rmsnorm", ("q",), ("q",), ("head_norm",), {"eps": 1e-5, "heads": N_HEADS}),
        Op("rope", ("q", "k"), ("q", "k"), (), {**rope, **LOCAL_ROPE}),
        Op("rope", ("q", "k"), ("q", "k"), (), {**rope, **YARN_ROPE}),
        Op("attention", ("q",), ("att",), (), {"layer": 1, **att, **WINDOW_SOFTCAP}),
        Op("swiglu", ("gate", "up"), ("gate",), (), {"activation": "gelu_tanh"}),
        Op("softcap", ("y",), ("y",), (), {"cap": 3.0}),
        Op("scale", ("y",), ("y",), (), {"factor": 0.75}),
        # gpt-oss: attention sinks, swiglu_oai, per-expert biases
        Op("attention", ("q",), ("att",), ("sinks",), {"layer": 1, **att, "window": 5}),
        Op("swiglu", ("gate", "up"), ("gate",), (), OAI),
        Op("moe_add_bias", ("ey", "expert_ids"), ("ey",), ("exp_biases",)),
        Op("moe_scale", ("ey", "expert_ids"), ("ey",), ("exp_scale",)),  # the experts' gate and up weight scales
        Op("slot_scale", ("ey", "expert_weights"), ("ey",)),  # llama4's per-slot input weights
    ]
    hp = HParams(
        architecture="llama",
        name="kernel-test",
        context_length=64,
        n_embd=N_EMBD,
        n_ff=N_FF,
        n_layers=2,
        n_heads=N_HEADS,
        n_kv_heads=N_KV_HEADS,
        head_dim=HEAD_DIM,
        n_rot=N_ROT,
        rope_style=rope_style,
        rope_freq_base=10000.0,
        rope_freq_scale=0.5,
        rope_scaling_type="linear",
        rms_eps=1e-5,
        vocab_size=N_ROWS,
        tied_embeddings=False,
        qkv_bias=False,
        rope_freq_factors=True,
    )
    plan = Plan(
        buffers=(Buffer("x", ("T", N_EMBD)), Buffer("router", ("T", N_EXPERT))),
        ops=tuple(ops),
        kv=KV,
        input_tokens="tokens",
        output_logits="y",
        output_hidden="x",
        vocab_size=N_ROWS,
        n_embd=N_EMBD,
        context_length=64,
    )
    return hp, plan, WeightLayout(256, tuple(blob.entries)), bytes(blob.data)


# -- the library under test ----------------------------------------------------------------

# native: the `cpu` target (x86-64-v3, AVX2: always tested on x86-64); portable: cpu-generic;
# avx512: the cpu-avx512 target (AVX-512 + VNNI paths), run where this CPU has that ISA.
BUILDS = [("native", "adjacent"), ("portable", "adjacent"), ("avx512", "adjacent")]
# The rope style is a constant of the rope kernel alone (cpu_rope.c.j2): the neox library is
# built for test_rope only, of the plan's rope ops alone (the whole model's library took ~24 s of cc).
ROPE_BUILDS = [*BUILDS, ("native", "neox")]
ROPE_ONLY_STYLES = {"neox"}
BUILD_TARGETS = {"native": "cpu", "portable": "cpu-generic", "avx512": "cpu-avx512"}
# A token chunk of 8-11: T = 17 spans several. Formats with a multi-token dot (Q6_K) take it
# for T = 3 and 8 (full and partial tiles of RFC_DOTN_TT) and pack rows from 12 tokens on, so
# T = 17 and 19 still reach the packed path.
TUNING = cpu.CpuTuning(act_budget_bytes=4096, dotn_gemm_min_tokens=12)


def kit_plan(rope_style: str) -> Plan:
    """The plan a kit of this rope style tests: the model's, or its rope ops alone (ROPE_ONLY_STYLES)."""
    plan = build_model(rope_style)[1]
    if rope_style in ROPE_ONLY_STYLES:
        return dataclasses.replace(plan, ops=tuple(op for op in plan.ops if op.kind == "rope"))
    return plan


def render_library(build: str, rope_style: str, plan: Plan | None = None) -> str:
    """The test library's source for a build and rope style (`plan`: another plan over the same
    weights and hyperparameters)."""
    hp, _, layout, _ = build_model(rope_style)
    return cpu.render_source(
        CodegenInput(parse_target(BUILD_TARGETS[build]), hp, plan or kit_plan(rope_style), layout, None, None),
        TUNING,
        step=False,
    )


@functools.cache
def built_library(build: str, rope_style: str) -> bytes:
    """The test library of a build and rope style, compiled once in a test run (~20 s each): the
    kit of that build and test_avx512_build_uses_the_targets_flags share it."""
    return cpu.compile_source(
        render_library(build, rope_style), cpu.compile_command(parse_target(BUILD_TARGETS[build]))
    )


class Kit:
    """A compiled test library behind both devices."""

    def __init__(self, root: Path, build: str, rope_style: str):
        hp, _, layout, weights = build_model(rope_style)
        plan = kit_plan(rope_style)
        target = parse_target(BUILD_TARGETS[build])
        isa = list(target.isa)
        lib = root / "kernels" / "cpu" / cpu.LIBRARY
        lib.parent.mkdir(parents=True)
        self.build, self.rope_style = build, rope_style
        self.source, self.command = render_library(build, rope_style), cpu.compile_command(target)
        self.library = built_library(build, rope_style)
        lib.write_bytes(self.library)
        rel = f"kernels/cpu/{cpu.LIBRARY}"
        entry = {"name": target.name, "family": "cpu", "kernels": rel, "isa": isa, "abi_version": cpu.ABI_VERSION}
        files = {rel: {"sha256": sha256_bytes(self.library), "size": len(self.library)}}
        bundle = Bundle(
            root=root, manifest={"targets": [entry], "files": files}, layout=layout, plan=plan, weights=weights
        )
        self.bundle, self.plan, self.isa, self.cpu_target = bundle, plan, isa, target.name
        self.cpu = CpuOpDevice(bundle, target.name, KV, NUM_BLOCKS, BLOCK_SIZE)
        self.ref = ReferenceDevice(bundle, KV, NUM_BLOCKS, BLOCK_SIZE)
        self.lib = ctypes.CDLL(str(lib))

    def op(self, kind: str) -> Op:
        return next(op for op in self.plan.ops if op.kind == kind)

    def act_block(self, fmt: str) -> int:
        return getattr(self.lib, f"rfc_act_block_{fmt.lower()}")()


def _kit(request, tmp_path_factory) -> Kit:
    build, style = request.param
    if build != "portable" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the native builds are tested on x86-64")
    if build == "avx512":
        from rfc.artifacts.targets import missing_isa
        from rfc.runtime.devices.cpu import cpu_flags

        lacking = missing_isa(parse_target("cpu-avx512"), cpu_flags())
        if lacking:
            pytest.skip(
                f"this CPU lacks {', '.join(lacking)}: the cpu-avx512 kernels cannot run here (they are still "
                "built: test_avx512_build_uses_the_targets_flags)"
            )
    return Kit(tmp_path_factory.mktemp(f"cpu-{build}-{style}"), build, style)


@pytest.fixture(scope="module", params=BUILDS, ids=lambda b: f"{b[0]}-{b[1]}")
def kit(request, tmp_path_factory) -> Kit:
    return _kit(request, tmp_path_factory)


@pytest.fixture(scope="module", params=ROPE_BUILDS, ids=lambda b: f"{b[0]}-{b[1]}")
def rope_kit(request, tmp_path_factory) -> Kit:
    return _kit(request, tmp_path_factory)


def host(a: np.ndarray) -> HostBuffer:
    return HostBuffer(np.ascontiguousarray(a))


def one_seq_batch(t: int):
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    blocks.allocate(0, t)
    return build_batch([ScheduledChunk(0, 0, tuple(range(t)), all_logits=True)], blocks)


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> None:
    err = np.abs(got - want)
    bound = rtol * np.abs(want) + atol
    assert (err <= bound).all(), f"max |Δ| {err.max():.3g} (bound there {bound.flat[err.argmax()]:.3g})"


# -- matmul and embed ------------------------------------------------------------------------


def matmul_bound(w: np.ndarray, x: np.ndarray, act_block: int) -> np.ndarray:
    """|got - ref| allowed for out = x @ w.T when x is rounded to int8 per act_block values."""
    w64, x64 = np.abs(w.astype(np.float64)), np.abs(x.astype(np.float64))
    bound = 2e-5 * (x64 @ w64.T) + 1e-6
    if act_block:
        t, k = x.shape
        d = x64.reshape(t, k // act_block, act_block).max(axis=-1) / 127.0
        half_step = np.repeat(d / 2, act_block, axis=1) * (1 + 1e-3)
        bound += half_step @ w64.T
    return bound


@pytest.mark.parametrize("tokens", [1, 3, 8, 17])
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_matmul_matches_reference(kit: Kit, fmt: str, tokens: int):
    rng = np.random.default_rng(tokens)
    name = f"mm.{fmt}"
    x = rng.standard_normal((tokens, k_of(fmt))).astype(np.float32)
    want = np.zeros((tokens, N_ROWS), np.float32)
    kit.ref.launch(kit.op("matmul"), [want], [x], [kit.ref.weight(name)], None)
    got = host(np.full((tokens, N_ROWS), np.nan, np.float32))
    op = Op("matmul", ("x",), ("y",), (name,))
    kit.cpu.launch(op, [got], [host(x)], [kit.cpu.weight(name)], None)
    err = np.abs(got.array - want)
    bound = matmul_bound(kit.ref.weight(name), x, kit.act_block(fmt))
    assert (err <= bound).all(), f"{fmt}: max |Δ| {err.max():.3g}, worst Δ/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("fmt", ["Q4_0x8", "Q4_1x8", "Q8_0x8", "Q4_Kx8", "Q5_Kx8", "Q6_Kx8", "IQ4_XSx8"])
def test_x8_rows_do_not_depend_on_the_token_count(kit: Kit, fmt: str):
    """The x8 layouts run one kernel for every token count (docs/determinism.md): a token's
    outputs are bit for bit the same alone as inside steps of 3, 5-7, 13 and 17 tokens. Q4_Kx8 and
    Q5_Kx8 only on the cpu-avx512 build (the AVX2 one dots 4-token tiles unlike single tokens);
    IQ4_XSx8's and Q6_Kx8's sums are integer up to one multiply-add per super-block on every
    build (AVX2, cpu-avx512, and the portable build's float dot, token by token)."""
    if fmt in ("Q4_Kx8", "Q5_Kx8") and kit.cpu_target != "cpu-avx512":
        pytest.skip(f"{fmt} is batch invariant on cpu-avx512 only")
    rng = np.random.default_rng(5)
    w = kit.cpu.weight(f"mm.{fmt}")
    x = rng.standard_normal((17, k_of(fmt))).astype(np.float32)
    scratch = host(np.zeros(1 << 20, np.uint8))

    def run(rows: np.ndarray) -> np.ndarray:
        out = host(np.zeros((len(rows), N_ROWS), np.float32))
        w.matmul(w.ptr, w.row_bytes, N_ROWS, x.shape[1], host(rows).ptr, len(rows), out.ptr, None, None, scratch.ptr)
        return out.array

    full = run(x)
    for t in (0, 7, 8, 16):
        np.testing.assert_array_equal(run(x[t : t + 1])[0], full[t])
    # every count inlines its own copy of the kernel (nt constant): 3 and 5-7 tokens (a verify
    # step, a batch), 13 (a full tile and 5 more); 17 above (tiles of 8 or 16, and 1 more)
    for n in (3, 5, 6, 7, 13):
        np.testing.assert_array_equal(run(x[2 : 2 + n]), full[2 : 2 + n], err_msg=f"{fmt}, {n} tokens")


@pytest.mark.parametrize(
    "fmt", ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16", "Q4_0x8", "Q4_1x8", "Q8_0x8", "Q4_Kx8", "Q6_Kx8"]
)
def test_matmul_fused_bias_and_residual(kit: Kit, fmt: str):
    """out = x W^T + bias and accum += out, in one call (what the device fuses)."""
    rng = np.random.default_rng(7)
    w = kit.cpu.weight(f"mm.{fmt}")
    x = rng.standard_normal((5, k_of(fmt))).astype(np.float32)
    bias = kit.ref.weight("bias")
    residual = rng.standard_normal((5, N_ROWS)).astype(np.float32)
    out, acc, scratch = (
        host(np.zeros((5, N_ROWS), np.float32)),
        host(residual.copy()),
        host(np.zeros(1 << 20, np.uint8)),
    )
    w.matmul(
        w.ptr,
        w.row_bytes,
        N_ROWS,
        x.shape[1],
        host(x).ptr,
        5,
        out.ptr,
        kit.cpu.weight("bias").ptr,
        acc.ptr,
        scratch.ptr,
    )
    want = x @ kit.ref.weight(f"mm.{fmt}").T + bias
    bound = matmul_bound(kit.ref.weight(f"mm.{fmt}"), x, kit.act_block(fmt))
    assert (np.abs(out.array - want) <= bound).all()
    assert (np.abs(acc.array - (residual + want)) <= bound + 1e-5 * np.abs(residual)).all()


@pytest.mark.parametrize("fmt", GGUF_ONLY + EMBED_PACKED)
def test_embed_matches_reference(kit: Kit, fmt: str):
    """Packed tables too: 37 rows, so token 36 sits alone in a last group padded to 8."""
    batch = one_seq_batch(5)
    tokens = np.array([3, 0, 36, 3, 17], np.int32)
    name = f"tok.{fmt}"
    want = np.zeros((5, N_EMBD), np.float32)
    kit.ref.launch(Op("embed", ("tokens",), ("x",), (name,)), [want], [tokens], [kit.ref.weight(name)], batch)
    got = host(np.zeros((5, N_EMBD), np.float32))
    op = Op("embed", ("tokens",), ("x",), (name,))
    kit.cpu.launch(op, [got], [host(tokens)], [kit.cpu.weight(name)], kit.cpu.upload_batch(batch))
    assert_close(got.array, want, 1e-6, 1e-7)


@pytest.mark.parametrize("fmt", ["Q8_0", "F16", "Q4_K", "Q8_0x8"])
def test_embed_with_a_scale(kit: Kit, fmt: str):
    """gemma: the rows times sqrtf(n_embd)."""
    batch = one_seq_batch(3)
    tokens = np.array([3, 36, 0], np.int32)
    op = Op("embed", ("tokens",), ("x",), (f"tok.{fmt}",), {"scale": float(np.sqrt(np.float32(N_EMBD)))})
    want = np.zeros((3, N_EMBD), np.float32)
    kit.ref.launch(op, [want], [tokens], [kit.ref.weight(f"tok.{fmt}")], batch)
    got = host(np.zeros((3, N_EMBD), np.float32))
    kit.cpu.launch(op, [got], [host(tokens)], [kit.cpu.weight(f"tok.{fmt}")], kit.cpu.upload_batch(batch))
    assert_close(got.array, want, 1e-6, 1e-7)


def test_embed_refuses_token_outside_vocabulary(kit: Kit):
    tokens = host(np.array([1, N_ROWS], np.int32))
    with pytest.raises(DeviceError, match="outside the vocabulary"):
        kit.cpu.launch(
            Op("embed", ("tokens",), ("x",), ("tok.Q4_0",)),
            [host(np.zeros((2, N_EMBD), np.float32))],
            [tokens],
            [kit.cpu.weight("tok.Q4_0")],
            None,
        )


# -- the other ops ----------------------------------------------------------------------------


def run_both(kit: Kit, op: Op, outs: list[np.ndarray], ins: list[np.ndarray], weights: list[str], batch):
    """The op on both devices from the same inputs; returns (cpu outputs, reference outputs)."""
    ref_outs = [o.copy() for o in outs]
    ref_ins = [i.copy() for i in ins]
    if op.kind == "rope":  # in place: the outputs are the inputs
        ref_outs = ref_ins
    kit.ref.launch(op, ref_outs, ref_ins, [kit.ref.weight(w) for w in weights], batch)
    cpu_ins = [host(i.copy()) for i in ins]
    cpu_outs = cpu_ins if op.kind == "rope" else [host(o.copy()) for o in outs]
    dev_batch = kit.cpu.upload_batch(batch) if batch is not None else None
    kit.cpu.launch(op, cpu_outs, cpu_ins, [kit.cpu.weight(w) for w in weights], dev_batch)
    return [o.array for o in cpu_outs], ref_outs


@pytest.mark.parametrize("norm", ["norm", "norm16"])
@pytest.mark.parametrize("rows", [1, 7])
def test_rmsnorm(kit: Kit, rows: int, norm: str):
    x = np.random.default_rng(rows).standard_normal((rows, N_EMBD)).astype(np.float32) * 3
    op = Op("rmsnorm", ("x",), ("h",), (norm,), {"eps": 1e-5})
    got, want = run_both(kit, op, [np.zeros_like(x)], [x], [norm], None)
    assert_close(got[0], want[0], 1e-5, 1e-6)


@pytest.mark.parametrize(
    "heads,width", [(N_HEADS, N_HEADS * HEAD_DIM), (N_KV_HEADS, N_KV_HEADS * HEAD_DIM), (1, HEAD_DIM)]
)
def test_rmsnorm_per_head(kit: Kit, heads: int, width: int):
    """qwen3's and gemma3's Q/K norms: each head's segment on its own, in place (one head:
    a row narrower than n_embd, gemma3's single kv head)."""
    x = np.random.default_rng(heads).standard_normal((5, width)).astype(np.float32) * 3
    x[:, :HEAD_DIM] *= 40  # heads of different scales: one norm over the row would differ
    op = Op("rmsnorm", ("q",), ("q",), ("head_norm",), {"eps": 1e-5, "heads": heads})
    got, want = run_both(kit, op, [np.zeros_like(x)], [x], ["head_norm"], None)
    assert_close(got[0], want[0], 1e-5, 1e-6)


@pytest.mark.parametrize("heads,width", [(N_KV_HEADS, N_KV_HEADS * HEAD_DIM), (1, N_EMBD)])
def test_rmsnorm_without_a_weight(kit: Kit, heads: int, width: int):
    """gemma4's V norm: each head's segment normalized and nothing more (a NULL weight), in
    place; a whole n_embd row without a weight takes the same kernel."""
    x = np.random.default_rng(heads).standard_normal((5, width)).astype(np.float32) * 3
    x[:, :HEAD_DIM] *= 40
    op = Op("rmsnorm", ("q",), ("q",), (), {"eps": 1e-5, "heads": heads})
    got, want = run_both(kit, op, [np.zeros_like(x)], [x], [], None)
    assert_close(got[0], want[0], 1e-5, 1e-6)
    np.testing.assert_allclose((want[0].reshape(5, heads, -1) ** 2).mean(-1), 1.0, atol=1e-3)  # unit RMS per head


@pytest.mark.parametrize("factors", [True, False])
@pytest.mark.parametrize("variant", ["first", "local", "yarn"])
def test_rope(rope_kit: Kit, factors: bool, variant: str):
    kit = rope_kit
    rng = np.random.default_rng(3)
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    blocks.allocate(0, 40)
    batch = build_batch([ScheduledChunk(0, 31, tuple(range(9)))], blocks)  # positions 31..39
    q = rng.standard_normal((9, N_HEADS * HEAD_DIM)).astype(np.float32)
    k = rng.standard_normal((9, N_KV_HEADS * HEAD_DIM)).astype(np.float32)
    op = [o for o in kit.plan.ops if o.kind == "rope"][["first", "local", "yarn"].index(variant)]
    weights = list(kit.op("rope").weights) if factors else []
    op = Op("rope", op.inputs, op.outputs, tuple(weights), op.attrs)
    got, want = run_both(kit, op, [q, k], [q, k], weights, batch)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-5, 1e-5)


@pytest.mark.parametrize("fmt", sorted(MLA_K))
@pytest.mark.parametrize("pad", [0, 16])
def test_head_matmul_and_concat_heads(kit: Kit, fmt: str, pad: int):
    """deepseek2's per-head matmul (each head's K columns of a row of heads x stride: pad 16,
    the attention output's rope columns skipped) and the per-head concatenation."""
    k = MLA_K[fmt]
    x = np.random.default_rng(pad).standard_normal((5, MLA_HEADS * (k + pad))).astype(np.float32)
    op = Op(
        "head_matmul", ("hx",), ("hy",), (f"heads.{fmt}",), {"heads": MLA_HEADS, **({"stride": k + pad} if pad else {})}
    )
    got, want = run_both(kit, op, [np.zeros((5, MLA_HEADS * 24), np.float32)], [x], [f"heads.{fmt}"], None)
    assert_close(got[0], want[0], 1e-4, 1e-4)
    op = Op("concat_heads", ("hx", "hy"), ("hxy",), (), {"heads": MLA_HEADS})
    got, want = run_both(kit, op, [np.zeros((5, x.shape[1] + want[0].shape[1]), np.float32)], [x, want[0]], [], None)
    np.testing.assert_array_equal(got[0], want[0])
    assert np.array_equal(want[0].reshape(5, MLA_HEADS, -1)[:, 1, : k + pad], x.reshape(5, MLA_HEADS, -1)[:, 1])
    # and back: each head's first k + pad values (minicpm3's and mimo2's narrower values, cut after attention)
    op = Op("slice_heads", ("hxy",), ("hs",), (), {"heads": MLA_HEADS, "width": k + pad})
    got, want = run_both(kit, op, [np.full_like(x, np.nan)], [want[0]], [], None)
    np.testing.assert_array_equal(got[0], x)
    np.testing.assert_array_equal(want[0], x)


def test_swiglu_add_add_bias_gather(kit: Kit):
    rng = np.random.default_rng(4)
    g = (rng.standard_normal((3, 1001)) * 6).astype(np.float32)
    u = rng.standard_normal((3, 1001)).astype(np.float32)
    got, want = run_both(kit, Op("swiglu", ("g", "u"), ("g",)), [np.zeros_like(g)], [g, u], [], None)
    assert_close(got[0], want[0], 1e-5, 1e-6)
    gelu = Op("swiglu", ("g", "u"), ("g",), (), {"activation": "gelu_tanh"})
    got, want = run_both(kit, gelu, [np.zeros_like(g)], [g, u], [], None)
    assert_close(got[0], want[0], 1e-5, 1e-6)
    oai, u8 = Op("swiglu", ("g", "u"), ("g",), (), OAI), 8 * u  # both clamps at work: |u| > 7 and g > 7 in places
    assert (g > 7).mean() > 0.1 and (np.abs(u8) > 7).mean() > 0.3
    got, want = run_both(kit, oai, [np.zeros_like(g)], [g, u8], [], None)
    assert_close(got[0], want[0], 1e-5, 1e-6)
    got, want = run_both(kit, Op("softcap", ("g",), ("g",), (), {"cap": 3.0}), [np.zeros_like(g)], [g], [], None)
    assert_close(got[0], want[0], 1e-5, 1e-6)
    got, want = run_both(kit, Op("scale", ("g",), ("g",), (), {"factor": 0.6}), [np.zeros_like(g)], [g], [], None)
    assert_close(got[0], want[0], 1e-6, 0)
    got, want = run_both(kit, Op("clamp", ("g",), ("g",), (), {"limit": 0.75}), [np.zeros_like(g)], [g], [], None)
    assert_close(got[0], want[0], 0, 0)
    # the ungated FFNs' GELU, over both tails (|x| up to ~12)
    got, want = run_both(kit, Op("gelu", ("g",), ("g",)), [np.zeros_like(g)], [3 * g], [], None)
    assert_close(got[0], want[0], 1e-5, 1e-6)
    # the original T5's ReLU: exact
    got, want = run_both(kit, Op("relu", ("g",), ("g",)), [np.zeros_like(g)], [g], [], None)
    assert_close(got[0], want[0], 0, 0)
    assert (want[0] == 0).mean() > 0.3 and (want[0] > 0).mean() > 0.3
    # apertus's xIELU: both branches, an eps that clips part of the negative side (-0.05) and a real one
    for consts in (
        {"alpha_n": 1.6, "alpha_p": 1.17, "beta": 0.5, "eps": -1e-6},
        {"alpha_n": 0.72, "alpha_p": 1.7, "beta": 0.25, "eps": -0.05},
    ):
        got, want = run_both(kit, Op("xielu", ("g",), ("g",), (), consts), [np.zeros_like(g)], [g / 6], [], None)
        assert_close(got[0], want[0], 1e-5, 1e-6)
    got, want = run_both(kit, Op("add", ("a", "b"), ("a",)), [np.zeros_like(g)], [g, u], [], None)
    assert_close(got[0], want[0], 1e-6, 0)
    x = rng.standard_normal((3, N_ROWS)).astype(np.float32)
    got, want = run_both(kit, Op("add_bias", ("x",), ("x",), ("bias",)), [np.zeros_like(x)], [x], ["bias"], None)
    assert_close(got[0], want[0], 1e-6, 0)
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    blocks.allocate(0, 3)
    blocks.allocate(1, 5)
    batch = build_batch(
        [ScheduledChunk(0, 0, (1, 2, 3)), ScheduledChunk(1, 0, (1, 2, 3, 4, 5), all_logits=True)], blocks
    )
    x = rng.standard_normal((8, N_EMBD)).astype(np.float32)
    out = np.zeros((batch.num_rows, N_EMBD), np.float32)
    got, want = run_both(kit, Op("gather_rows", ("x",), ("xr",)), [out], [x], [], batch)
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize(
    "extra",
    [{}, WINDOW_SOFTCAP, {"window": 40}, {"softcap": 1.5}, {"sinks": True}, {"window": 5, "sinks": True}],
    ids=["plain", "window5-softcap", "window40", "softcap", "sinks", "window5-sinks"],
)
def test_kv_write_and_attention_over_paged_cache(kit: Kit, extra: dict):
    """Two sequences with interleaved blocks, prefill then mixed decode/prefill steps; the
    last step spans several query blocks and several chunks of cache positions. Sliding
    windows (gemma2/3: of 5, inside a chunk; of 40, across chunks), soft-capped scores and
    gpt-oss's sinks (a logit per query head: far above the scores, far below, in between)."""
    rng = np.random.default_rng(5)
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    steps = [[(0, 0, 6), (1, 0, 3)], [(0, 6, 1), (1, 3, 2)], [(1, 5, 7), (0, 7, 1)], [(0, 8, 37), (1, 12, 1)]]
    kv_op, att_op = kit.op("kv_write"), kit.op("attention")
    sinks = ["sinks"] if extra.get("sinks") else []
    attrs = {k: v for k, v in extra.items() if k != "sinks"}
    att_op = Op(att_op.kind, att_op.inputs, att_op.outputs, tuple(sinks), {**att_op.attrs, **attrs})
    for step in steps:
        for seq, start, n in step:
            blocks.allocate(seq, start + n)
        batch = build_batch([ScheduledChunk(s, start, tuple(range(n))) for s, start, n in step], blocks)
        t = batch.num_tokens
        q = rng.standard_normal((t, N_HEADS * HEAD_DIM)).astype(np.float32)
        k = rng.standard_normal((t, N_KV_HEADS * HEAD_DIM)).astype(np.float32)
        v = rng.standard_normal((t, N_KV_HEADS * HEAD_DIM)).astype(np.float32)
        run_both(kit, kv_op, [], [k, v], [], batch)
        got, want = run_both(kit, att_op, [np.zeros_like(q)], [q], sinks, batch)
        assert_close(got[0], want[0], 0, 2e-3)


def test_avx512_attention_gives_the_avx2_kernels_bits(tmp_path):
    """cpu-avx512's attention runs 16 lanes wide (scores of several rows per load of K, values of
    several heads per load of V), each lane doing the 8-wide path's operations in its order: its
    outputs are the cpu (AVX2) build's bit for bit, for two sequences over several chunks and
    query blocks of an F16 cache, plain, with a sliding window and soft-capping, and with sinks."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the native builds are tested on x86-64")
    from rfc.artifacts.targets import missing_isa
    from rfc.runtime.devices.cpu import cpu_flags

    if missing_isa(parse_target("cpu-avx512"), cpu_flags()):
        pytest.skip("this CPU lacks the cpu-avx512 target's ISA")
    libs = []
    for build in ("native", "avx512"):
        (tmp_path / build).write_bytes(built_library(build, "adjacent"))
        libs.append(ctypes.CDLL(str(tmp_path / build)))
    rng = np.random.default_rng(11)
    lens, width = (37, 70), N_KV_HEADS * HEAD_DIM  # tokens of each sequence in the step; cached before it
    tables = np.array([[2 * b for b in range(32)], [2 * b + 1 for b in range(32)]], np.int32)  # interleaved blocks
    k = rng.standard_normal((64 * BLOCK_SIZE, width)).astype(np.float16)
    v = rng.standard_normal((64 * BLOCK_SIZE, width)).astype(np.float16)
    positions = np.concatenate([np.arange(29, 29 + lens[0]), np.arange(50, 50 + lens[1])]).astype(np.int32)
    seq_start = np.array([0, lens[0], sum(lens)], np.int32)
    q = rng.standard_normal((sum(lens), N_HEADS * HEAD_DIM)).astype(np.float32)
    sinks = np.array([0.0, 12.0, -30.0, 2.5, -1.0, 40.0, 1.5, -4.0][:N_HEADS], np.float32)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    for window, softcap, with_sinks in ((0, 0.0, False), (40, 1.5, False), (5, 0.0, True)):
        outs = []
        for lib in libs:
            out = np.zeros_like(q)
            fn = lib.rfc_attention_sinks
            fn.argtypes = (
                [ctypes.c_void_p] * 6
                + [ctypes.c_int, ctypes.c_void_p]
                + [ctypes.c_int] * 3
                + [ctypes.c_float, ctypes.c_void_p]
            )
            fn(
                ptr(q),
                ptr(out),
                ptr(k),
                ptr(v),
                ptr(positions),
                ptr(seq_start),
                2,
                ptr(tables),
                tables.shape[1],
                BLOCK_SIZE,
                window,
                softcap,
                ptr(sinks) if with_sinks else None,
            )
            outs.append(out)
        assert np.isfinite(outs[0]).all() and np.abs(outs[0]).max() > 0.1
        np.testing.assert_array_equal(outs[1], outs[0])


@pytest.mark.parametrize("fmt", ["Q4_0x8", "Q4_1x8", "Q8_0x8", "Q6_Kx8"])
def test_avx512_x8_matmuls_give_the_avx2_kernels_bits(tmp_path, fmt: str):
    """cpu-avx512 dots two groups (16 rows) of Q4_0x8, Q4_1x8 and Q8_0x8 per pass in zmm lanes
    (Q8_0's weights biased by 128, as AVX-512 has no vpsignb), each lane doing the 8-row AVX2
    kernel's operations in its order: every token count gives the cpu (AVX2) build's outputs
    bit for bit, an odd last group (37 rows: 5 groups) included. Q6_Kx8 too: both builds sum a
    super-block in exact integers (kernels/cpu_q6k_x8.h), then the same float multiply-add."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the native builds are tested on x86-64")
    from rfc.artifacts.targets import missing_isa
    from rfc.runtime.devices.cpu import cpu_flags

    if missing_isa(parse_target("cpu-avx512"), cpu_flags()):
        pytest.skip("this CPU lacks the cpu-avx512 target's ISA")
    rng = np.random.default_rng(13)
    k = k_of(fmt)
    w = np.frombuffer(weight_bytes(fmt, N_ROWS, k, rng), np.uint8).copy()
    row_bytes = len(w) // (-(-N_ROWS // 8) * 8)
    x = rng.standard_normal((19, k)).astype(np.float32)
    x[3] *= 1e3  # rows far apart in scale: the float epilogue's order shows
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    outs = []
    for build in ("native", "avx512"):
        (tmp_path / build).write_bytes(built_library(build, "adjacent"))
        fn = getattr(ctypes.CDLL(str(tmp_path / build)), f"rfc_matmul_{fmt.lower()}")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int] + [
            ctypes.c_void_p
        ] * 4
        scratch = np.zeros(1 << 20, np.uint8)
        got = {}
        for t in range(1, 20):
            out = np.full((t, N_ROWS), np.nan, np.float32)
            fn(ptr(w), row_bytes, N_ROWS, k, ptr(x), t, ptr(out), None, None, ptr(scratch))
            got[t] = out
        outs.append(got)
    for t in range(1, 20):
        assert np.isfinite(outs[0][t]).all() and np.abs(outs[0][t]).max() > 0.1
        np.testing.assert_array_equal(outs[1][t], outs[0][t], err_msg=f"{fmt}, {t} tokens")


@pytest.mark.parametrize("fmt", ["Q4_0x8", "Q4_1x8", "Q8_0x8", "Q4_Kx8", "Q5_Kx8", "Q6_Kx8", "IQ4_XSx8"])
def test_avx512_x8_rows_do_not_depend_on_the_group_beside_them(tmp_path, fmt: str):
    """cpu-avx512's pass pairs group p of a tile's first half with group p of its second half
    (two long weight streams, templates/cpu_matmul_x8.c.j2). 520 rows make tiles of several
    groups and an odd last one: every group of the whole matmul must be what that group gives
    alone, one pass with itself beside it (a row stored to the wrong place, or a lane that
    reads its neighbour's group, fails)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the native builds are tested on x86-64")
    from rfc.artifacts.targets import missing_isa
    from rfc.runtime.devices.cpu import cpu_flags

    if missing_isa(parse_target("cpu-avx512"), cpu_flags()):
        pytest.skip("this CPU lacks the cpu-avx512 target's ISA")
    n, rng = 520, np.random.default_rng(29)
    k = k_of(fmt)
    w = np.frombuffer(weight_bytes(fmt, n, k, rng), np.uint8).copy()
    row_bytes = len(w) // n
    x = rng.standard_normal((9, k)).astype(np.float32)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    (tmp_path / "avx512").write_bytes(built_library("avx512", "adjacent"))
    fn = getattr(ctypes.CDLL(str(tmp_path / "avx512")), f"rfc_matmul_{fmt.lower()}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int] + [
        ctypes.c_void_p
    ] * 4
    scratch = np.zeros(1 << 20, np.uint8)
    for t in (1, 3, 9):
        whole = np.full((t, n), np.nan, np.float32)
        fn(ptr(w), row_bytes, n, k, ptr(x), t, ptr(whole), None, None, ptr(scratch))
        assert np.isfinite(whole).all() and np.abs(whole).max() > 0.1
        for g in range(n // 8):
            part = np.full((t, 8), np.nan, np.float32)
            group = w[8 * g * row_bytes : 8 * (g + 1) * row_bytes].copy()
            fn(ptr(group), row_bytes, 8, k, ptr(x), t, ptr(part), None, None, ptr(scratch))
            np.testing.assert_array_equal(whole[:, 8 * g : 8 * g + 8], part, err_msg=f"{fmt}, group {g}, {t} tokens")


# -- the device's contract ----------------------------------------------------------------------


def test_device_refuses_cpu_without_the_targets_isa(kit: Kit, monkeypatch):
    """The ISA a target needs comes from the target table, and a host without it is refused."""
    import rfc.runtime.devices.cpu as cpu_device

    if not kit.isa:
        pytest.skip("cpu-generic needs no ISA flags")
    monkeypatch.setattr(cpu_device, "cpu_flags", lambda: {"sse2"})
    with pytest.raises(DeviceError, match=f"cannot run bundle target {kit.cpu_target} here: this CPU lacks avx"):
        CpuOpDevice(kit.bundle, kit.cpu_target, KV, NUM_BLOCKS, BLOCK_SIZE)


def test_pooled_buffers_are_reused_across_steps(kit: Kit):
    first = [kit.cpu.alloc((3, 8), "f32"), kit.cpu.alloc((3,), "i32")]
    kit.cpu.upload_batch(one_seq_batch(3))
    second = [kit.cpu.alloc((3, 8), "f32"), kit.cpu.alloc((3,), "i32")]
    kit.cpu.upload_batch(one_seq_batch(3))
    assert [b.ptr for b in first] == [b.ptr for b in second]
    assert first[0].ptr != first[1].ptr


# -- the build ---------------------------------------------------------------------------------


def test_build_is_byte_identical(kit: Kit):
    """The same source, flags and compiler give the same library, byte for byte: the kit's plan
    renders to the same source again, and a smaller program of the same templates (every op
    kind, the weights of one format: ~3 s a build, not ~20 s) builds twice to the same bytes
    with the kit's flags."""
    assert render_library(kit.build, kit.rope_style) == kit.source
    ops, seen = [], set()
    for op in kit.plan.ops:  # the ops build_model repeats per weight format: the first format's alone
        family = (
            op.weights[0].split(".")[0]
            if op.weights and op.weights[0].startswith(("mm.", "tok.", "moe.", "heads."))
            else None
        )
        if family is None or (op.kind, family) not in seen:
            ops.append(op)
            seen.add((op.kind, family))
    assert {op.kind for op in ops} == {op.kind for op in kit.plan.ops} and len(ops) < len(kit.plan.ops) // 2
    source = render_library(kit.build, kit.rope_style, dataclasses.replace(kit.plan, ops=tuple(ops)))
    assert cpu.compile_source(source, kit.command) == cpu.compile_source(source, kit.command)


def test_compiler_errors_name_the_command_and_the_error(monkeypatch):
    with pytest.raises(CompileError) as e:
        cpu.compile_source("int main( {\n", cpu.compile_command(parse_target("cpu-generic")))
    assert "cc -O3" in str(e.value) and "error" in str(e.value)
    monkeypatch.setattr(cpu, "CC", "/nonexistent/rfc-cc")
    with pytest.raises(CompileError, match="rfc-cc"):
        cpu.toolchain_version()


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_single_token_and_many_token_paths_agree(kit: Kit, fmt: str):
    """Decode (one token) and prefill (packed, many tokens) kernels round the activations the
    same way, so a token's result does not depend on the batch it came in: equal up to float
    summation order."""
    rng = np.random.default_rng(11)
    w = kit.cpu.weight(f"mm.{fmt}")
    x = rng.standard_normal((19, k_of(fmt))).astype(np.float32)
    scratch = host(np.zeros(1 << 22, np.uint8))

    def run(rows: np.ndarray) -> np.ndarray:
        out = host(np.zeros((len(rows), N_ROWS), np.float32))
        w.matmul(w.ptr, w.row_bytes, N_ROWS, rows.shape[1], host(rows).ptr, len(rows), out.ptr, None, None, scratch.ptr)
        return out.array

    many = run(x)
    one = np.concatenate([run(x[t : t + 1]) for t in range(len(x))])
    scale = np.abs(x) @ np.abs(kit.ref.weight(f"mm.{fmt}")).T
    assert (np.abs(many - one) <= 1e-5 * scale + 1e-6).all(), f"max |Δ| {np.abs(many - one).max():.3g}"


@pytest.mark.parametrize("fmt", sorted(PACKED_FORMATS))
def test_packed_layout_round_trips(fmt: str):
    """The weight planner's repacking (compiler/weights.py pack_x8) and the reference's decoder
    (runtime/model/quants.py unpack_x8) are inverses, and a packed tensor decodes to its base's values."""
    from rfc.runtime.model.quants import dequantize, unpack_x8

    base = PACKED_FORMATS[fmt].base
    k = 3 * PACKED_FORMATS[fmt].block_elems
    rng = np.random.default_rng(2)
    raw = np.frombuffer(weight_bytes(base, 16, k, rng), np.uint8).reshape(16, -1)
    packed = pack_x8(raw, fmt)
    assert not np.array_equal(packed, raw)
    np.testing.assert_array_equal(unpack_x8(packed.reshape(-1), fmt, 16, k), raw)
    odd = np.frombuffer(weight_bytes(fmt, 13, k, rng), np.uint8)  # 13 rows: 3 zero rows of padding
    want = dequantize(unpack_x8(odd, fmt, 13, k), base, (13, k))
    np.testing.assert_array_equal(dequantize(odd, fmt, (13, k)), want)


def test_avx512_build_uses_the_targets_flags():
    """The cpu-avx512 library builds on any x86-64 build machine from the target's explicit
    flags (never -march=native), and its packed 4-bit matmuls use VNNI (vpdpbusd)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 targets")
    command = cpu.compile_command(parse_target("cpu-avx512"))
    assert "-march=x86-64-v4" in command and "-mavx512vnni" in command and not any("native" in c for c in command)
    library = built_library("avx512", "adjacent")  # the avx512 kit's, built by that command
    if shutil.which("objdump") is None:
        pytest.skip("objdump not found: cannot look at the instructions")
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(library)
        f.flush()
        asm = subprocess.run(["objdump", "-d", f.name], capture_output=True, text=True, check=True).stdout
    assert "vpdpbusd" in asm and "zmm" in asm
    native = built_library("native", "adjacent")  # the native kit's
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(native)
        f.flush()
        asm = subprocess.run(["objdump", "-d", f.name], capture_output=True, text=True, check=True).stdout
    assert "vpdpbusd" not in asm and "zmm" not in asm  # the cpu (AVX2) build stays within x86-64-v3


# -- mixture of experts ------------------------------------------------------------------------


def test_moe_route_matches_reference(kit: Kit):
    """Ids exactly (ties: the lower expert first) and the renormalized weights."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((9, N_EXPERT)).astype(np.float32)
    logits[1] = 0.5  # all equal: experts 0 and 1
    logits[2, [1, 4]] = logits[2].max() + 1.0  # a tie for the top: 1, then 4
    logits[3, [0, 3, 5]] = logits[3].max() + 2.0  # three equal: 0 and 3
    logits[4] *= 60.0  # one expert takes nearly all
    ids, w = np.zeros((9, N_USED), np.int32), np.zeros((9, N_USED), np.float32)
    (got_ids, got_w), (want_ids, want_w) = run_both(kit, kit.op("moe_route"), [ids, w], [logits], [], None)
    np.testing.assert_array_equal(got_ids, want_ids)
    assert want_ids[1].tolist() == [0, 1] and want_ids[2].tolist() == [1, 4] and want_ids[3].tolist() == [0, 3]
    assert_close(got_w, want_w, 1e-6, 1e-7)


# Routers other than Mixtral's softmax (moe_route's attributes): DeepSeek-V3's (sigmoid, selection
# bias, 3 groups of which 2 kept, scaled), GLM-4.5's (sigmoid, bias) unnormalized, gpt-oss's
# softmax over the chosen logits, and the softmax variants. Biased ones read "exp_bias".
ROUTE_VARIANTS = (
    {"gating": "sigmoid", "groups": 3, "groups_used": 2, "scale": 2.5},
    {"gating": "sigmoid", "norm": False, "scale": 1.5},
    {"gating": "softmax_weight"},
    {"gating": "softmax_weight", "groups": 3, "groups_used": 1},
    {"norm": False, "scale": 16.0},
    {"groups": 3, "groups_used": 1},
)


@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("variant", range(len(ROUTE_VARIANTS)))
def test_moe_route_variants_match_reference(kit: Kit, variant: int, biased: bool):
    """Every gating, the selection bias, groups, norm and scale: ids exactly, weights within
    float rounding of the reference's float64."""
    rng = np.random.default_rng(11 + variant)
    tokens = 17
    logits = (2.0 * rng.standard_normal((tokens, N_EXPERT))).astype(np.float32)
    logits[1] = 0.5  # all equal: the lower index, the lower group
    attrs = {"n_used": N_USED, **ROUTE_VARIANTS[variant]}
    op = Op("moe_route", ("router",), ("expert_ids", "expert_weights"), ("exp_bias",) if biased else (), attrs)
    outs = [np.zeros((tokens, N_USED), np.int32), np.zeros((tokens, N_USED), np.float32)]
    (got_ids, got_w), (want_ids, want_w) = run_both(kit, op, outs, [logits], ["exp_bias"] if biased else [], None)
    np.testing.assert_array_equal(got_ids, want_ids)
    assert_close(got_w, want_w, 1e-6, 1e-7)
    if biased:  # the bias changed some token's choice
        plain = Op("moe_route", ("router",), ("expert_ids", "expert_weights"), (), attrs)
        _, (plain_ids, _) = run_both(kit, plain, [o.copy() for o in outs], [logits], [], None)
        assert (plain_ids != want_ids).any()


@pytest.mark.parametrize("biased", [False, True])
def test_moe_route_expert_scale_matches_reference(kit: Kit, biased: bool):
    """expert_scale (gemma4's ffn_down_exps.scale): each chosen expert's weight times its factor,
    the last weight, after the selection bias where there is one; the ids as without it."""
    rng = np.random.default_rng(23)
    logits = (2.0 * rng.standard_normal((17, N_EXPERT))).astype(np.float32)
    attrs = {"n_used": N_USED, "expert_scale": True, **(ROUTE_VARIANTS[0] if biased else {})}
    names = ["exp_bias", "exp_scale"] if biased else ["exp_scale"]
    op = Op("moe_route", ("router",), ("expert_ids", "expert_weights"), tuple(names), attrs)
    outs = [np.zeros((17, N_USED), np.int32), np.zeros((17, N_USED), np.float32)]
    (got_ids, got_w), (want_ids, want_w) = run_both(kit, op, outs, [logits], names, None)
    np.testing.assert_array_equal(got_ids, want_ids)
    assert_close(got_w, want_w, 1e-6, 1e-7)
    plain = Op(
        "moe_route", ("router",), ("expert_ids", "expert_weights"), tuple(names[:-1]), {**attrs, "expert_scale": False}
    )
    _, (plain_ids, plain_w) = run_both(kit, plain, [o.copy() for o in outs], [logits], names[:-1], None)
    np.testing.assert_array_equal(plain_ids, want_ids)
    np.testing.assert_allclose(want_w, plain_w * np.asarray(kit.ref.weight("exp_scale"))[want_ids], rtol=1e-6)


def _expert_ids(tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Every token's first choice is expert 0 (it gets all tokens), expert N_EXPERT - 1 none."""
    ids = np.zeros((tokens, N_USED), np.int32)
    for t in range(tokens):
        ids[t, 1:] = rng.choice(np.arange(1, N_EXPERT - 1), N_USED - 1, replace=False)
    return ids


@pytest.mark.parametrize("per_slot", [False, True])
@pytest.mark.parametrize("tokens", [1, 3, 17])
@pytest.mark.parametrize("fmt", MOE_FORMATS)
def test_moe_matmul_matches_reference(kit: Kit, fmt: str, tokens: int, per_slot: bool):
    """Slots grouped by expert: expert 0 has every token (17: the packed prefill path where the
    format has one), expert 5 none, the others a few. Each slot within the dense bound."""
    rng = np.random.default_rng(tokens + 100 * per_slot)
    k, n = k_of(fmt), expert_rows(fmt)
    name = f"moe.{fmt}"
    x = rng.standard_normal((tokens, N_USED * k if per_slot else k)).astype(np.float32)
    ids = _expert_ids(tokens, rng)
    out = np.full((tokens, N_USED * n), np.nan, np.float32)
    op = Op("moe_matmul", ("x", "expert_ids"), ("ey",), (name,))
    (got,), (want,) = run_both(kit, op, [out], [x, ids], [name], None)
    w = kit.ref.weight(name)
    for t in range(tokens):
        for j in range(N_USED):
            row = x[t, j * k : (j + 1) * k] if per_slot else x[t]
            bound = matmul_bound(w[ids[t, j]], row[None], kit.act_block(fmt))[0]
            err = np.abs(got[t, j * n : (j + 1) * n] - want[t, j * n : (j + 1) * n])
            assert (err <= bound).all(), (
                f"{fmt} slot ({t}, {j}): max |Δ| {err.max():.3g}, worst Δ/bound {(err / bound).max():.3g}"
            )


@pytest.mark.parametrize("fmt", ["Q4_Kx8", "Q8_0x8"])
def test_x8_expert_rows_do_not_depend_on_the_token_count(kit: Kit, fmt: str):
    """Experts in an x8 layout run the dense x8 tiles (docs/determinism.md): a token's expert
    outputs are bit for bit the same alone as inside a step of 17 tokens whose other tokens
    share its experts (so each expert's tile holds more rows). Q4_Kx8 on cpu-avx512 only, as
    its dense rows."""
    if fmt == "Q4_Kx8" and kit.cpu_target != "cpu-avx512":
        pytest.skip("Q4_Kx8 is batch invariant on cpu-avx512 only")
    rng = np.random.default_rng(11)
    k, n = k_of(fmt), expert_rows(fmt)
    x = rng.standard_normal((17, k)).astype(np.float32)
    ids = _expert_ids(17, rng)
    op = Op("moe_matmul", ("x", "expert_ids"), ("ey",), (f"moe.{fmt}",))

    def run(t: slice) -> np.ndarray:
        out = host(np.zeros((len(x[t]), N_USED * n), np.float32))
        kit.cpu.launch(op, [out], [host(x[t].copy()), host(ids[t].copy())], [kit.cpu.weight(f"moe.{fmt}")], None)
        return out.array

    full = run(slice(0, 17))
    for t in (0, 7, 16):
        np.testing.assert_array_equal(run(slice(t, t + 1))[0], full[t])


def test_moe_add_bias_matches_reference(kit: Kit):
    """gpt-oss's per-expert biases: slot j of token t adds row ids[t, j] of the bias."""
    rng = np.random.default_rng(8)
    y = rng.standard_normal((5, N_USED * N_ROWS)).astype(np.float32)
    ids = rng.integers(0, N_EXPERT, (5, N_USED)).astype(np.int32)
    (got,), (want,) = run_both(
        kit,
        Op("moe_add_bias", ("ey", "expert_ids"), ("ey",), ("exp_biases",)),
        [np.zeros_like(y)],
        [y, ids],
        ["exp_biases"],
        None,
    )
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, y)


def test_moe_scale_matches_reference(kit: Kit):
    """The experts' gate and up weight scales (llama, mistral3, qwen3moe): slot j of token t times
    the factor of expert ids[t, j]."""
    rng = np.random.default_rng(9)
    y = rng.standard_normal((5, N_USED * N_ROWS)).astype(np.float32)
    ids = rng.integers(0, N_EXPERT, (5, N_USED)).astype(np.int32)
    (got,), (want,) = run_both(
        kit,
        Op("moe_scale", ("ey", "expert_ids"), ("ey",), ("exp_scale",)),
        [np.zeros_like(y)],
        [y, ids],
        ["exp_scale"],
        None,
    )
    np.testing.assert_array_equal(got, want)
    scale = np.asarray(kit.ref.weight("exp_scale"), np.float32)
    np.testing.assert_array_equal(want, (y.reshape(5, N_USED, -1) * scale[ids][..., None]).reshape(5, -1))
    assert not np.array_equal(got, y)


def test_slot_scale_matches_reference(kit: Kit):
    """llama4's per-slot weights (more than one expert per token): slot j of token t times w[t, j]."""
    rng = np.random.default_rng(10)
    y = rng.standard_normal((5, N_USED * N_ROWS)).astype(np.float32)
    w = rng.random((5, N_USED)).astype(np.float32)
    (got,), (want,) = run_both(
        kit, Op("slot_scale", ("ey", "expert_weights"), ("ey",)), [np.zeros_like(y)], [y, w], [], None
    )
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, (y.reshape(5, N_USED, -1) * w[..., None]).reshape(5, -1))


def test_moe_combine_matches_reference(kit: Kit):
    rng = np.random.default_rng(7)
    y = rng.standard_normal((5, N_USED * N_ROWS)).astype(np.float32)
    w = rng.random((5, N_USED)).astype(np.float32)
    (got,), (want,) = run_both(kit, kit.op("moe_combine"), [np.zeros((5, N_ROWS), np.float32)], [y, w], [], None)
    assert_close(got, want, 1e-6, 1e-7)


@pytest.mark.parametrize("n_expert,n_used", [(cpu.MAX_EXPERTS + 1, 2), (4, 5), (4, 0)])
def test_moe_expert_counts_are_bounded_before_they_size_anything(n_expert: int, n_used: int):
    plan = Plan(buffers=(Buffer("router", ("T", n_expert)),),
                ops=(Op("moe_route", ("router",), ("ids", "w"), (), {"n_used": n_used}),), kv=KV,
                input_tokens="tokens", output_logits="w", output_hidden="w", vocab_size=N_ROWS, n_embd=N_EMBD,
                context_length=64)  # fmt: skip
    with pytest.raises(CompileError, match="expert counts out of range"):
        cpu._moe_params(plan, {}, {"moe_route": list(plan.ops)})
