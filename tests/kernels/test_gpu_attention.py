"""Split-KV attention (flash decoding) and the tiled prefill path against the
numpy reference, emulated.

The planner's attention kernels for synthetic shapes (GQA groups 1 to 4, head_dim 7 to 64,
f16 and f32 KV caches, sliding windows, soft-capping) are rendered as a GPU target renders
them and run by the host emulator (gpu_emulator.py): the split kernel (grid rows x kv heads x
slices), whose last block of each row and kv head merges the partials (or, with
ATTENTION_LAST_BLOCK_MERGE off, with its reduce kernel), as the step program launches them, and
the per-op kernel.
Both must match ReferenceDevice.op_attention within 2e-4 * max(1, max |ref|) and each other
bit for bit (the same partials merged in the same order). Rows are ragged: several sequences,
some shorter than one slice, some past the window, over shuffled block tables. Steps of more
than ATTENTION_SPLIT_ROWS rows run both kernels' tiled path: prompts, chunks after a cached
prefix and decode rows in one step. No GPU toolchain is needed.
"""

import ctypes
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.artifacts.plan import Op
from rfc.compiler.codegen.gpu import render_source
from rfc.compiler.codegen.gpu_plan import (
    ATTENTION_ACC_TILE,
    ATTENTION_SPLIT_KEYS,
    ATTENTION_SPLIT_ROWS,
    ATTENTION_SPLITS,
    ATTENTION_TILE_QUERIES,
    ATTENTION_TILE_SHARED,
    I32,
    KernelSpec,
    attention_arrival_ints,
    attention_scratch_floats,
    plan_kernels,
)
from rfc.compiler.targets import parse_target
from rfc.runtime.core.step import StepBatch
from rfc.runtime.devices.reference import ReferenceDevice
from tests.kernels.gpu_emulator import EmulatedDriver, build_source_emulator, needs_emulator
from tests.conftest import shared_basetemp

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

BLOCK_SIZE, NUM_BLOCKS = 16, 128
REL_TOL = 2e-4


class Case:
    """One attention op's kernels, built for the emulator, over a one-layer KV cache."""

    kv_types = {"k_type": 0, "v_type": 0}  # how the cache stores K and V (CacheType.code): f16
    arrivals = None  # the merging split kernel's counts: zeroed once, then left at zero by each launch

    def __init__(
        self,
        build_dir,
        target: str,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        kv_dtype: str,
        window=None,
        softcap=None,
        context_length: int = 4096,
        sinks: np.ndarray | None = None,
    ):
        attrs = {
            "layer": 0,
            "n_heads": n_heads,
            "n_kv_heads": n_kv_heads,
            "head_dim": head_dim,
            "scale": head_dim**-0.5,
            "window": window,
            "softcap": softcap,
        }
        self.op = Op("attention", ("q",), ("out",), ("sinks",) if sinks is not None else (), attrs=attrs)
        kv = SimpleNamespace(dtype=kv_dtype, row=n_kv_heads * head_dim)  # the cache row: this one layer's
        plan = SimpleNamespace(ops=[self.op], kv=kv, context_length=context_length)
        entries = {"sinks": SimpleNamespace(name="sinks", format="F32", shape=(n_heads,))} if sinks is not None else {}
        layout = SimpleNamespace(by_name=lambda: entries)
        self.sinks = sinks
        specs, (kernel,) = plan_kernels(parse_target(target), plan, layout)
        self.specs = {s.name: s for s in specs}
        self.fused = self.specs[kernel]
        self.driver = EmulatedDriver(
            build_source_emulator(render_source(parse_target(target), specs), self.specs, build_dir)
        )
        self.width, self.head_dim, self.n_kv_heads = n_heads * head_dim, head_dim, n_kv_heads
        shape = (1, NUM_BLOCKS * BLOCK_SIZE, n_kv_heads * head_dim)  # [layer, slot, row]
        # only its attention op runs: the caches and how they are stored
        self.ref = ReferenceDevice.__new__(ReferenceDevice)
        self.ref.cache_types = KvCacheTypes()  # f16, unrotated
        self.ref._k_rot, self.ref._v_rot = self.ref.cache_types.rotations(head_dim)
        rng = np.random.default_rng(head_dim * 100 + n_heads)
        dtype = np.float16 if kv_dtype == "f16" else np.float32
        self.ref.k_cache = (2 * rng.standard_normal(shape)).astype(dtype)
        self.ref.v_cache = rng.standard_normal(shape).astype(dtype)
        self.k_dev, self.v_dev = self._upload(self.ref.k_cache), self._upload(self.ref.v_cache)
        self.rng = rng

    def _upload(self, host: np.ndarray) -> int:
        ptr = self.driver.malloc(max(4, host.nbytes))
        self.driver.copy_to_device(ptr, host)
        return ptr

    def _launch(self, spec: KernelSpec, values: dict) -> None:
        cells = [ctypes.c_int32(values[n]) if k == I32 else ctypes.c_uint64(values[n]) for n, k in spec.args]
        params = (ctypes.c_void_p * len(cells))(*[ctypes.addressof(c) for c in cells])
        grid = [-(-(values[c] if isinstance(c, str) else c) // t) for c, t in spec.grid]
        self.driver.launch(
            self.driver.function(self.driver.lib, spec.name), (*grid, 1, 1)[:3], (spec.threads, 1, 1), params
        )

    def batch(self, seq_lens: list[int], rows_of: list[int]) -> StepBatch:
        """Sequences of `seq_lens` keys over shuffled cache blocks; the step's rows are the
        last rows_of[s] tokens of sequence s."""
        width = max(-(-n // BLOCK_SIZE) for n in seq_lens)
        perm = self.rng.permutation(NUM_BLOCKS).astype(np.int32)
        tables, used = np.full((len(seq_lens), width), -1, np.int32), 0
        for s, n in enumerate(seq_lens):
            blocks = -(-n // BLOCK_SIZE)
            tables[s, :blocks], used = perm[used : used + blocks], used + blocks
        assert used <= NUM_BLOCKS
        positions = np.concatenate([np.arange(n - r, n) for n, r in zip(seq_lens, rows_of)]).astype(np.int32)
        seq_of_token = np.repeat(np.arange(len(seq_lens)), rows_of).astype(np.int32)
        T = len(positions)
        return StepBatch(
            tokens=np.zeros(T, np.int32),
            positions=positions,
            slots=np.array(
                [tables[s, p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for s, p in zip(seq_of_token, positions)],
                np.int32,
            ),
            seq_of_token=seq_of_token,
            seq_start=np.concatenate([[0], np.cumsum(rows_of)]).astype(np.int32),
            block_tables=tables,
            context_lens=np.array(seq_lens, np.int32),
            logit_rows=np.arange(T, dtype=np.int32),
            block_size=BLOCK_SIZE,
        )

    def run(self, batch: StepBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reference, the step program's split kernels, per-op kernel) outputs for random queries."""
        q = (2 * self.rng.standard_normal((len(batch.positions), self.width))).astype(np.float32)
        return (self.reference(batch, q), *self.launch(batch, q, (self.fused.steps, (self.fused,))))

    def reference(self, batch: StepBatch, q: np.ndarray) -> np.ndarray:
        want = np.zeros_like(q)
        self.ref.op_attention([want], [q], [] if self.sinks is None else [self.sinks], {**self.op.attrs}, batch)
        return want

    def launch(self, batch: StepBatch, q: np.ndarray, lists) -> list[np.ndarray]:
        """The output of each list of kernels launched in turn over queries q."""
        T = len(batch.positions)
        values = {
            "q": self._upload(q),
            "k_cache": self.k_dev,
            "v_cache": self.v_dev,
            "positions": self._upload(batch.positions),
            "seq_of_token": self._upload(batch.seq_of_token),
            "block_tables": self._upload(batch.block_tables),
            "n_rows": T,
            "table_width": batch.block_tables.shape[1],
            "block_size": BLOCK_SIZE,
            **self.kv_types,
        }
        if self.sinks is not None:
            values["sinks"] = self._upload(self.sinks)
        outs = []
        for kernels in lists:
            values["out"] = self.driver.malloc(q.nbytes)  # NaN-filled: a row left unwritten shows
            if any(n == "scratch" for n, _k in kernels[0].args):
                values["scratch"] = self.driver.malloc(4 * attention_scratch_floats(kernels[0]))
            counts = attention_arrival_ints(kernels[0]) if any(n == "arrivals" for n, _k in kernels[0].args) else 0
            if counts and self.arrivals is None:
                self.arrivals = self._upload(np.zeros(counts, np.int32))
            values["arrivals"] = self.arrivals
            for spec in kernels:
                self._launch(spec, values)
            if counts:  # every count back at zero for the next launch (a graph replays the same arena)
                left = np.empty(counts, np.int32)
                self.driver.copy_to_host(left, self.arrivals)
                assert not left.any(), f"counts left at {np.unique(left).tolist()}"
            got = np.empty_like(q)
            self.driver.copy_to_host(got, values["out"])
            outs.append(got)
        return outs


def _check(case: Case, batch: StepBatch) -> None:
    want, split, fused = case.run(batch)
    bound = REL_TOL * max(1.0, float(np.abs(want).max()))
    for name, got in (("split", split), ("per-op", fused)):
        d = np.abs(got - want).max(axis=1)
        assert np.all(d <= bound), (
            f"{name}: rows {np.nonzero(~(d <= bound))[0].tolist()} off by up to {np.nanmax(d):.2e} > {bound:.2e}"
        )
    assert np.array_equal(split, fused), "the split kernels and the per-op kernel differ"


# (n_heads, n_kv_heads, head_dim, kv dtype, window, softcap)
SHAPES = [
    pytest.param(8, 2, 32, "f16", None, None, id="gqa4-hd32-f16"),
    pytest.param(4, 1, 64, "f32", None, 30.0, id="gqa4-hd64-f32-softcap"),
    pytest.param(8, 8, 8, "f16", None, None, id="mha-hd8-f16"),
    pytest.param(6, 3, 12, "f16", 150, None, id="gqa2-hd12-f16-window"),
    pytest.param(4, 2, 7, "f32", 300, 8.0, id="gqa2-hd7-f32-window-softcap"),
    pytest.param(2, 1, 6, "f16", None, None, id="gqa2-hd6-f16-half2"),
    # the split kernel's softmax reductions over 8 heads at a time: two batches of 8, two of 6
    pytest.param(32, 2, 16, "f16", None, None, id="gqa16-hd16-f16"),
    pytest.param(12, 1, 8, "f32", 200, None, id="gqa12-hd8-f32-window"),
]


@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim,kv_dtype,window,softcap", SHAPES)
def test_split_attention_matches_reference(n_heads, n_kv_heads, head_dim, kv_dtype, window, softcap, tmp_path_factory):
    """Decode-like rows: one per sequence, from 1 key (shorter than one slice) to 1000 keys
    (every slice of the 16 in use), plus a chunk of 3 rows of one sequence."""
    case = Case(
        shared_basetemp(tmp_path_factory) / "gpu-emu-attn",
        "gfx1100",
        n_heads,
        n_kv_heads,
        head_dim,
        kv_dtype,
        window,
        softcap,
    )
    assert case.fused.params["splits"] > 1 and len(case.fused.steps) == 1  # the split kernel merges: no reduce
    lens = [1, 5, ATTENTION_SPLIT_KEYS, ATTENTION_SPLIT_KEYS + 1, 200, 301, 1000]
    _check(case, case.batch(lens, [1, 1, 1, 1, 1, 3, 1]))


@pytest.mark.parametrize("target", ["gfx1100", "gfx90a"])
def test_split_and_reduce_kernels_without_the_last_block_merge(target, monkeypatch, tmp_path_factory):
    """ATTENTION_LAST_BLOCK_MERGE off: the split kernel leaves the partials of rows of several
    slices to the reduce kernel, a second launch, with the same bits; with sinks (merged last)."""
    import rfc.compiler.codegen.gpu_plan as gpu_plan

    monkeypatch.setattr(gpu_plan, "ATTENTION_LAST_BLOCK_MERGE", False)
    sinks = np.array([0.0, 12.0, -30.0, 2.5, -1.0, 40.0, 1.5, -4.0], np.float32)
    case = Case(shared_basetemp(tmp_path_factory) / "gpu-emu-attn", target, 8, 2, 32, "f16", None, None, sinks=sinks)
    assert [s.name.rsplit("_", 1)[1] for s in case.fused.steps] == ["split", "reduce"]
    assert not any(n == "arrivals" for s in case.fused.steps for n, _k in s.args)
    _check(case, case.batch([1, 5, ATTENTION_SPLIT_KEYS + 1, 301, 1000], [1, 1, 1, 3, 1]))


@pytest.mark.parametrize("target", ["gfx1100", "gfx90a"])
def test_split_kernel_with_per_head_softmax_reductions(target, monkeypatch, tmp_path_factory):
    """ATTENTION_BATCHED_SOFTMAX off: the split kernel reduces each query head's chunk max and
    sum behind its own barriers, as the per-op kernel always does; the same bits."""
    import rfc.compiler.codegen.gpu_plan as gpu_plan

    monkeypatch.setattr(gpu_plan, "ATTENTION_BATCHED_SOFTMAX", False)
    case = Case(shared_basetemp(tmp_path_factory) / "gpu-emu-attn", target, 16, 2, 16, "f16", None, None)
    (split,) = case.fused.steps
    assert not split.params["batched_softmax"]
    _check(case, case.batch([1, 5, ATTENTION_SPLIT_KEYS + 1, 301, 1000], [1, 1, 1, 3, 1]))


def test_wave_64_and_a_step_too_big_to_split(tmp_path_factory):
    """gfx90a (wave 64); a step of more rows than ATTENTION_SPLIT_ROWS takes one slice per
    row (the split kernel writes out itself, the reduce kernel does nothing)."""
    case = Case(shared_basetemp(tmp_path_factory) / "gpu-emu-attn", "gfx90a", 8, 2, 32, "f16", None, None)
    _check(case, case.batch([700, 40], [ATTENTION_SPLIT_ROWS - 3, 4]))
    _check(case, case.batch([700, 30], [ATTENTION_SPLIT_ROWS - 3, 3]))  # exactly the bound: splits


def test_splits_follow_the_longest_row():
    """No more slices than the context (or the window) can fill; one slice: no split kernels."""

    def fused(context_length, window=None):
        op = Op(
            "attention",
            ("q",),
            ("out",),
            attrs={
                "layer": 0,
                "n_heads": 4,
                "n_kv_heads": 2,
                "head_dim": 32,
                "scale": 0.2,
                "window": window,
                "softcap": None,
            },
        )
        plan = SimpleNamespace(ops=[op], kv=SimpleNamespace(dtype="f16", row=64), context_length=context_length)
        specs, (name,) = plan_kernels(parse_target("sm_90"), plan, SimpleNamespace(by_name=lambda: {}))
        return next(s for s in specs if s.name == name)

    assert fused(512).params["splits"] == 512 // ATTENTION_SPLIT_KEYS
    assert fused(1 << 17).params["splits"] == ATTENTION_SPLITS
    assert fused(1 << 17, window=100).params["splits"] == 2
    assert fused(1 << 17, window=32).steps == ()
    split = fused(1 << 17).steps[0]
    assert [g for g in split.grid] == [("n_rows", 1), (2, 1), (ATTENTION_SPLITS, 1)]
    # the scratch is bounded by the split rows, whatever the context
    assert attention_scratch_floats(split) == ATTENTION_SPLIT_ROWS * 4 * ATTENTION_SPLITS * (32 + 2)


@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim,kv_dtype,window,softcap", SHAPES)
def test_tiled_prefill_matches_reference(n_heads, n_kv_heads, head_dim, kv_dtype, window, softcap, tmp_path_factory):
    """Steps of more than ATTENTION_SPLIT_ROWS rows run the tiled path in both the per-op and
    the split kernel: fresh prompts of 300, 64, 17 and 1 tokens, a chunk of 65 rows after a
    cached prefix of 100 keys (chunked prefill: tiles start off the tile grid), a decode row,
    all in one step, so tiles end at every sequence boundary; then a lone 65-token prompt."""
    case = Case(
        shared_basetemp(tmp_path_factory) / "gpu-emu-attn",
        "gfx1100",
        n_heads,
        n_kv_heads,
        head_dim,
        kv_dtype,
        window,
        softcap,
    )
    lens, rows = [300, 200, 17, 165, 1, 64], [300, 1, 17, 65, 1, 64]
    assert sum(rows) > ATTENTION_SPLIT_ROWS
    _check(case, case.batch(lens, rows))
    _check(case, case.batch([65], [65]))


@pytest.mark.parametrize("target", ["gfx1100", "gfx90a"])
def test_attention_sinks_match_reference(target, tmp_path_factory):
    """gpt-oss's sinks (a logit per query head in each softmax, no value) on every path: decode
    rows over 1 to 16 slices (merged by the split kernel's last block, and one slice written at once), a
    tiled prefill step, with and without a window. Sinks far above the scores (the values' share
    near 0), far below (no effect) and in between; without them the output differs."""
    sinks = np.array([0.0, 12.0, -30.0, 2.5, -1.0, 40.0, 1.5, -4.0], np.float32)
    for window in (None, 150):
        case = Case(
            shared_basetemp(tmp_path_factory) / "gpu-emu-attn", target, 8, 2, 32, "f16", window, None, sinks=sinks
        )
        assert case.fused.params["has_sinks"] and [n for n, _k in case.fused.args].count("sinks") == 1
        _check(case, case.batch([1, 5, ATTENTION_SPLIT_KEYS + 1, 301, 1000], [1, 1, 1, 3, 1]))
        _check(case, case.batch([300, 17, 165, 1], [300, 17, 65, 1]))
    plain = Case(shared_basetemp(tmp_path_factory) / "gpu-emu-attn", target, 8, 2, 32, "f16", 150, None)
    batch = case.batch([40, 301], [1, 1])
    case.rng, plain.rng = np.random.default_rng(5), np.random.default_rng(5)
    with_sinks, without = case.run(batch)[0], plain.run(batch)[0]
    assert np.abs(with_sinks - without).max() > 0.1


def test_tiled_prefill_on_wave_64_with_one_slice(tmp_path_factory):
    """gfx90a (wave 64: a softmax lane group is half a wave), and a window too short to split:
    the program launches the per-op kernel itself, whose big steps are tiled."""
    case = Case(shared_basetemp(tmp_path_factory) / "gpu-emu-attn", "gfx90a", 4, 1, 16, "f32", 40, None)
    assert case.fused.steps == ()
    case.fused = dataclasses.replace(case.fused, steps=(case.fused,))  # as the program launches it
    _check(case, case.batch([130, 7, 70], [129, 7, 6]))


# 512 x 8: Gemma 4 31B's global layers
@pytest.mark.parametrize("head_dim,group", [(128, 4), (128, 1), (256, 8), (64, 4), (7, 2), (512, 8)])
def test_prefill_tile_fits_shared_memory(head_dim, group):
    """The tiled path's arrays fit the budget alongside the row path's, its output elements per
    thread stay within the register bound, and a key chunk is one lane group of a 32-lane wave."""
    op = Op(
        "attention",
        ("q",),
        ("out",),
        attrs={
            "layer": 0,
            "n_heads": 4 * group,
            "n_kv_heads": 4,
            "head_dim": head_dim,
            "scale": 0.1,
            "window": None,
            "softcap": None,
        },
    )
    plan = SimpleNamespace(ops=[op], kv=SimpleNamespace(dtype="f16", row=4 * head_dim), context_length=4096)
    specs, (name,) = plan_kernels(parse_target("sm_90"), plan, SimpleNamespace(by_name=lambda: {}))
    p = next(s for s in specs if s.name == name).params
    assert p["tile_queries"] == p["tile_rows"] * group <= ATTENTION_TILE_QUERIES
    assert p["tile_keys"] <= 32 and p["tile_acc"] <= ATTENTION_ACC_TILE
    assert 4 * p["smem_floats"] <= ATTENTION_TILE_SHARED
    assert p["tile_kstride"] % 2 == 1


# -- the tensor-core prefill kernel (compiler/codegen/gpu_attention.py), sm_90 --------------------------------------
# It rounds Q (scaled) and P to half, as llama.cpp's flash attention does. Q's rounding is the reference's input: the
# reference runs over half(q * scale) / scale. P's is bounded: O = sum_j p_j v_j / L with L the float sum of the
# unrounded p (each <= 1, the largest 1, so L >= 1); rounding p_j to half moves it by at most u = 2^-11 of itself
# where p_j is normal (>= 2^-14) and by at most 2^-25 where it is subnormal, so |dO| <= (u + n_keys 2^-25) max |v|,
# on top of the float kernels' REL_TOL (summation order). Measured: 7e-4 at most (max |v| 4.6, bound 2.5e-3).
HALF_U = 2.0**-11
HALF_SUBNORMAL = 2.0**-25

# (n_heads, n_kv_heads, head_dim, window, softcap, sinks)
MMA_SHAPES = [
    pytest.param(8, 2, 32, None, None, False, id="gqa4-hd32"),
    pytest.param(4, 4, 32, None, None, False, id="mha-hd32"),
    pytest.param(6, 2, 64, 150, None, False, id="gqa3-hd64-window"),
    pytest.param(8, 1, 32, None, 8.0, True, id="gqa8-hd32-softcap-sinks"),
]


@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim,window,softcap,with_sinks", MMA_SHAPES)
def test_tensor_core_prefill_matches_reference(
    n_heads, n_kv_heads, head_dim, window, softcap, with_sinks, tmp_path_factory
):
    """The prefill list's attention on sm_90 (emulated WMMA): prompts of 300 (several tiles and ten key chunks),
    64, 17 and 1 tokens, a chunk of 65 rows after a cached prefix of 100 keys, a decode row, in one step; then a
    step of 64 rows (the prefill list's least). Within the bound above of the reference over half-rounded queries."""
    sinks = np.array([0.0, 12.0, -30.0, 2.5, -1.0, 40.0, 1.5, -4.0][:n_heads], np.float32) if with_sinks else None
    case = Case(
        shared_basetemp(tmp_path_factory) / "gpu-emu-attn",
        "sm_90",
        n_heads,
        n_kv_heads,
        head_dim,
        "f16",
        window,
        softcap,
        sinks=sinks,
    )
    mma = case.fused.prefill
    assert mma is not None and mma.name == case.fused.name + "_mma" and mma.args == case.fused.args
    max_v = float(np.abs(case.ref.v_cache.astype(np.float32)).max())
    scale = np.float32(case.op.attrs["scale"])
    for lens, rows in (([300, 200, 17, 165, 1, 64], [300, 1, 17, 65, 1, 64]), ([64], [64])):
        batch = case.batch(lens, rows)
        q = (2 * case.rng.standard_normal((len(batch.positions), case.width))).astype(np.float32)
        want = case.reference(batch, (q * scale).astype(np.float16).astype(np.float32) / scale)
        (got,) = case.launch(batch, q, [(mma,)])
        bound = REL_TOL * max(1.0, float(np.abs(want).max())) + (HALF_U + max(lens) * HALF_SUBNORMAL) * max_v
        d = np.abs(got - want).max(axis=1)
        print(f"{mma.name}: max |mma - ref| {np.nanmax(d):.2e} (bound {bound:.2e})")
        assert np.all(d <= bound), f"rows {np.nonzero(~(d <= bound))[0][:10].tolist()} off by up to {np.nanmax(d):.2e}"
        # unrounded queries are further off than the float kernels: the rounding is really the kernel's
        exact = case.reference(batch, q)
        assert np.abs(got - exact).max() > REL_TOL * max(1.0, float(np.abs(exact).max()))


def test_tensor_core_prefill_reads_quantized_caches(tmp_path_factory):
    """k_type / v_type are the runtime's choice: a q8_0 K and a q4_0 V, rotated in blocks of 64 as kv_write stores
    them (runtime/model/kv_quant.py). The kernel dequantizes them to half, turns Q with K (in float, then rounds)
    and the output back with V. Reference: the same half-rounded dequantized rows as an f16 cache, the same
    rotations, queries whose rotation rounds to the kernel's halves. P's rounding moves output element j, before
    the rotation back, by at most u sum_k p_k |v_kj| / L (the attention output over |V|, A_j), and the rotation sums
    a block's 64 such errors with weights of 1/8: |dO_i| <= u / 8 sum_(j in i's block) A_j, plus the subnormals'
    share and the float noise as for an f16 cache."""
    from rfc.artifacts.kv_cache_type import CacheType
    from rfc.runtime.model.kv_quant import dequantize_rows, quantize_rows, rotate

    case = Case(shared_basetemp(tmp_path_factory) / "gpu-emu-attn", "sm_90", 8, 2, 64, "f16", None, None)
    assert case.fused.params["quantizable"] and case.fused.prefill.params["k_rot"] == 64
    types = KvCacheTypes(CacheType.Q8_0, CacheType.Q4_0)
    k_rot, v_rot = types.rotations(64)
    assert (k_rot, v_rot) == (64, 64)
    width = case.width // 4  # 2 kv heads of 64
    for name, t, rot in (("k", types.k, k_rot), ("v", types.v, v_rot)):
        plain = getattr(case.ref, f"{name}_cache")[0].astype(np.float32)
        raw = quantize_rows(rotate(plain, rot), t)
        setattr(case, f"{name}_dev", case._upload(raw))
        setattr(case.ref, f"{name}_cache", dequantize_rows(raw, t, width).astype(np.float16)[None])
    case.ref._k_rot, case.ref._v_rot = k_rot, v_rot
    case.kv_types = {"k_type": types.k.code, "v_type": types.v.code}
    mma = case.fused.prefill
    max_v = float(np.abs(case.ref.v_cache.astype(np.float32)).max())
    scale = np.float32(case.op.attrs["scale"])
    lens, rows = [300, 17, 165, 1], [300, 17, 65, 1]
    batch = case.batch(lens, rows)
    q = (2 * case.rng.standard_normal((len(batch.positions), case.width))).astype(np.float32)
    q_h = rotate(rotate(q * scale, k_rot).astype(np.float16).astype(np.float32), k_rot) / scale
    want = case.reference(batch, q_h)
    (got,) = case.launch(batch, q, [(mma,)])
    v_hat, case.ref.v_cache, case.ref._v_rot = case.ref.v_cache, np.abs(case.ref.v_cache), 0
    a = case.reference(batch, q_h)  # A: the attention output over |V|, unrotated
    case.ref.v_cache, case.ref._v_rot = v_hat, v_rot
    blocks = a.reshape(len(a), -1, v_rot).sum(axis=-1, keepdims=True) / v_rot**0.5
    bound = np.broadcast_to(HALF_U * blocks, (*blocks.shape[:2], v_rot)).reshape(a.shape)
    bound = bound + REL_TOL * max(1.0, float(np.abs(want).max())) + v_rot**0.5 * max(lens) * HALF_SUBNORMAL * max_v
    d = np.abs(got - want)
    print(
        f"{mma.name} q8_0 K, q4_0 V: max |mma - ref| {np.nanmax(d):.2e} (bounds {bound.min():.2e} to {bound.max():.2e})"
    )
    bad = ~(d <= bound)
    assert not bad.any(), f"rows {np.nonzero(bad.any(axis=1))[0][:10].tolist()} off by up to {np.nanmax(d):.2e}"


def test_tensor_core_prefill_is_planned_where_it_applies():
    """sm_70 and newer, an f16 cache, head_dim a multiple of 32 up to 128; elsewhere (AMD, f32 caches, head_dim 256)
    the prefill list keeps the float kernel; the module switch turns it off."""
    from rfc.compiler.codegen import gpu_attention

    def prefill(target, head_dim=64, kv_dtype="f16", group=4):
        op = Op(
            "attention",
            ("q",),
            ("out",),
            attrs={
                "layer": 0,
                "n_heads": 2 * group,
                "n_kv_heads": 2,
                "head_dim": head_dim,
                "scale": 0.1,
                "window": None,
                "softcap": None,
            },
        )
        plan = SimpleNamespace(ops=[op], kv=SimpleNamespace(dtype=kv_dtype, row=2 * head_dim), context_length=4096)
        specs, (name,) = plan_kernels(parse_target(target), plan, SimpleNamespace(by_name=lambda: {}))
        return next(s for s in specs if s.name == name).prefill

    for target in ("sm_70", "sm_80", "sm_90"):
        for head_dim in (32, 64, 96, 128):
            spec = prefill(target, head_dim)
            assert spec is not None and spec.template == gpu_attention.MMA_ATTENTION_TEMPLATE
            assert 4 * spec.params["smem_floats"] <= ATTENTION_TILE_SHARED
    assert prefill("sm_90", group=8).params["mma_rows"] == gpu_attention.MMA_QUERIES // 8
    assert prefill("sm_61") is None and prefill("gfx90a") is None and prefill("gfx1100") is None
    assert prefill("sm_90", kv_dtype="f32") is None
    assert prefill("sm_90", head_dim=256) is None and prefill("sm_90", head_dim=80) is None
    saved, gpu_attention.PREFILL_MMA = gpu_attention.PREFILL_MMA, False
    try:
        assert prefill("sm_90") is None
    finally:
        gpu_attention.PREFILL_MMA = saved
