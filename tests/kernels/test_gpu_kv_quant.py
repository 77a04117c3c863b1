"""Quantized KV caches on GPU targets (--cache-type-k/-v q8_0|q4_0), emulated, against the
reference device with the same cache types.

One kv_write and one attention kernel serve every cache type (k_type / v_type are runtime
arguments: kernels/rfc_gpu_kv.h), so each shape is built once and run with every pair of
types. kv_write writes every slot of a one-layer cache on the GPU and the reference's
op_kv_write the same rows: the cache bytes must be identical (the same Hadamard rotation, in
double, and the same float32 rounding as runtime/model/kv_quant.py). The attention kernels then
read those bytes: decode rows through the split + reduce kernels and the per-op kernel (1 to 16
slices), and a prefill step through the tiled path, within test_gpu_attention's float bound of
ReferenceDevice.op_attention (Q turned with K, the output turned back with V in float there,
float64 in the reference) and the split and per-op kernels bit for bit alike.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.kv_cache_type import CacheType, KvCacheTypes
from rfc.artifacts.plan import KVSpec, Op
from rfc.compiler.codegen.gpu import render_source
from rfc.compiler.codegen.gpu_plan import ATTENTION_SPLIT_KEYS, ATTENTION_SPLIT_ROWS, plan_kernels
from rfc.compiler.targets import parse_target
from rfc.runtime.devices.reference import ReferenceDevice
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_budget import token_bytes
from rfc.runtime.engine.kv_cache import BlockManager
from tests.bounds import KV_CPU_SHARE
from tests.conftest import shared_basetemp
from tests.kernels.gpu_emulator import EmulatedDriver, build_source_emulator, emulated_step_device, needs_emulator
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, toolchain_marks  # noqa: F401
from tests.kernels.test_gpu_attention import BLOCK_SIZE, NUM_BLOCKS, Case, _check

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

F16, Q8, Q4 = CacheType.F16, CacheType.Q8_0, CacheType.Q4_0
SLOTS = NUM_BLOCKS * BLOCK_SIZE


class QuantCase(Case):
    """A layer's kv_write and attention kernels over a one-layer cache of chosen types."""

    def __init__(
        self, build_dir, target: str, n_heads: int, n_kv_heads: int, head_dim: int, kv_dtype: str, window=None
    ):
        width = n_kv_heads * head_dim
        attrs = {
            "layer": 0,
            "n_heads": n_heads,
            "n_kv_heads": n_kv_heads,
            "head_dim": head_dim,
            "scale": head_dim**-0.5,
            "window": window,
            "softcap": None,
        }
        self.op = Op("attention", ("q",), ("out",), (), attrs=attrs)
        write = Op("kv_write", ("k", "v"), (), attrs={"layer": 0})
        self.kv = KVSpec(1, n_kv_heads, head_dim, kv_dtype)
        plan = SimpleNamespace(
            ops=[write, self.op],
            kv=self.kv,
            context_length=4096,
            buffer=lambda name: SimpleNamespace(shape=("T", width)),
        )
        specs, (write_kernel, kernel) = plan_kernels(parse_target(target), plan, SimpleNamespace(by_name=lambda: {}))
        self.specs = {s.name: s for s in specs}
        self.fused, self.write = self.specs[kernel], self.specs[write_kernel]
        self.sinks = None
        self.driver = EmulatedDriver(
            build_source_emulator(render_source(parse_target(target), specs), self.specs, build_dir)
        )
        self.width, self.head_dim, self.n_kv_heads = n_heads * head_dim, head_dim, n_kv_heads
        self.rng = np.random.default_rng(head_dim * 100 + n_heads)

    def fill(self, types: KvCacheTypes) -> None:
        """Every slot written by the GPU's kv_write and by the reference's op_kv_write, from
        the same rows; the two caches' bytes must be the same."""
        ref = self.ref = ReferenceDevice.__new__(ReferenceDevice)  # only its kv_write and attention run
        ref.cache_types, ref._kv_width = types, self.kv.n_kv_heads * self.kv.head_dim
        ref._k_rot, ref._v_rot = types.rotations(self.head_dim)
        ref.k_cache, ref.v_cache = (ReferenceDevice._cache(self.kv, SLOTS, t) for t in (types.k, types.v))
        k = (2 * self.rng.standard_normal((SLOTS, ref._kv_width))).astype(np.float32)
        v = self.rng.standard_normal((SLOTS, ref._kv_width)).astype(np.float32)
        k[:, 5] *= 16  # an outlier dimension, as real keys have: the rotation spreads it over the block
        slots = self.rng.permutation(SLOTS).astype(np.int32)
        ref.op_kv_write([], [k, v], [], {"layer": 0}, SimpleNamespace(slots=slots))
        self.kv_types = {"k_type": types.k.code, "v_type": types.v.code}
        self.k_dev, self.v_dev = self.driver.malloc(ref.k_cache.nbytes), self.driver.malloc(ref.v_cache.nbytes)
        self._launch(
            self.write,
            {
                "k_cache": self.k_dev,
                "v_cache": self.v_dev,
                "k": self._upload(k),
                "v": self._upload(v),
                "slots": self._upload(slots),
                "n_rows": SLOTS,
                **self.kv_types,
            },
        )
        for name, want, ptr in (("K", ref.k_cache, self.k_dev), ("V", ref.v_cache, self.v_dev)):
            got = np.empty_like(want)
            self.driver.copy_to_host(got, ptr)
            rows = np.nonzero(
                (got.reshape(SLOTS, -1).view(np.uint8) != want.reshape(SLOTS, -1).view(np.uint8)).any(axis=1)
            )[0]
            assert not len(rows), (
                f"{types.describe()}: the GPU's {name} cache differs from the reference's in {len(rows)} rows"
            )


# (n_heads, n_kv_heads, head_dim, plan KV dtype, window): rotations K 64 / V 64, K 128 / V 64, none (head_dim 32)
SHAPES = [
    pytest.param("gfx1100", 8, 2, 64, "f16", None, id="gqa4-hd64-gfx1100"),
    pytest.param("gfx90a", 4, 2, 128, "f16", 150, id="gqa2-hd128-window-gfx90a"),
    pytest.param("gfx1100", 4, 4, 32, "f32", None, id="mha-hd32-f32-gfx1100"),
]
TYPES = [KvCacheTypes(Q8, Q8), KvCacheTypes(Q4, Q4), KvCacheTypes(Q8, F16), KvCacheTypes(F16, Q4)]


@pytest.mark.parametrize("target,n_heads,n_kv_heads,head_dim,kv_dtype,window", SHAPES)
def test_quantized_cache_matches_reference(target, n_heads, n_kv_heads, head_dim, kv_dtype, window, tmp_path_factory):
    case = QuantCase(
        shared_basetemp(tmp_path_factory) / "gpu-emu-attn", target, n_heads, n_kv_heads, head_dim, kv_dtype, window
    )
    assert case.fused.params["quantizable"] and len(case.fused.steps) == 1  # the split kernel, merging
    for types in TYPES:
        case.fill(types)
        _check(case, case.batch([1, 5, ATTENTION_SPLIT_KEYS + 1, 301, 700], [1, 1, 1, 3, 1]))  # decode: 1 to 11 slices
        _check(case, case.batch([130, 17, 1], [ATTENTION_SPLIT_ROWS, 17, 1]))  # prefill: the tiled path


@pytest.mark.parametrize(
    "target,prompt",
    [
        pytest.param("gfx1100", 30, marks=toolchain_marks("gfx1100")),
        pytest.param("sm_90", 64, marks=toolchain_marks("sm_90")),
    ],
)
def test_the_step_program_serves_quantized_caches(target, prompt, gpu_bundle, tmp_path_factory):
    """The runtime's GpuDevice (bound step program, decode graphs, the k_type / v_type step
    scalars) on tiny-qwen3-F16 (head_dim 64: both rotations; float weights, so the GPU differs
    from the reference by float noise only): a prompt, then decode steps, with a q4_0 K and a
    q8_0 V cache (both block kinds, rows of two sizes). The logits stay within a small share of
    what quantizing the cache moves the reference's by (tests/bounds.py KV_CPU_SHARE: float
    noise flips a value to the next quantization step now and then, as on the cpu); the device
    holds the cache in the bytes the KV budget counts. On sm_90 the prompt of 64 tokens takes the prefill list,
    whose attention (tensor cores, compiler/codegen/gpu_attention.py) reads the quantized rows as halves."""
    bundle = open_bundle(gpu_bundle("qwen3-F16", target))
    plan, build_dir = bundle.plan, shared_basetemp(tmp_path_factory) / "gpu-emu"
    tokens = [1, *range(40, 45 + prompt)]

    def logits(device) -> np.ndarray:
        blocks, run = BlockManager(NUM_BLOCKS, BLOCK_SIZE), Executor(plan, device)
        blocks.allocate(0, len(tokens))
        out = [run.forward(build_batch([ScheduledChunk(0, 0, tuple(tokens[:prompt]), all_logits=True)], blocks))]
        out += [
            run.forward(build_batch([ScheduledChunk(0, i, (tokens[i],))], blocks)) for i in range(prompt, len(tokens))
        ]
        return np.concatenate(out)

    plain = logits(ReferenceDevice(bundle, plan.kv, NUM_BLOCKS, BLOCK_SIZE))
    for types in (KvCacheTypes(Q4, Q8),):
        gpu = emulated_step_device(bundle, target, plan.kv, NUM_BLOCKS, BLOCK_SIZE, build_dir, cache_types=types)
        cache = [gpu._driver.memory[p].nbytes for p in (gpu._memory.k_cache, gpu._memory.v_cache)]
        assert sum(cache) == NUM_BLOCKS * BLOCK_SIZE * token_bytes(str(gpu.name), plan.kv, types)
        ref = logits(ReferenceDevice(bundle, plan.kv, NUM_BLOCKS, BLOCK_SIZE, types))
        got = logits(gpu)
        if target.startswith("sm_"):  # the prompt's step took the prefill list: attention on tensor cores
            program = gpu.runner.program
            assert prompt >= program.prefill_min_tokens > 0
            assert ("capture", len(program.prefill_launches)) in gpu._driver.calls
            kernels = [launch.kernel for launch in program.prefill_launches]
            assert any(k.startswith("rfc_attention_") and k.endswith("_mma") for k in kernels), kernels
        quantizing, d = np.abs(ref - plain).mean(), np.abs(got - ref).mean()
        assert d <= KV_CPU_SHARE * quantizing, (
            f"{types.describe()}: gpu vs reference mean {d:.2e}, quantizing {quantizing:.2e}"
        )
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).mean() >= 0.9


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_one_token_steps_store_quantized_rows_as_the_kv_write_kernel(target, gpu_bundle, tmp_path_factory):
    """The one-token list's attention rotates k and stores a kv head's k and v rows itself
    (gpu_rope_attention.py), through the KV write kernel's per-head code: with a q4_0 K and a q8_0
    V cache (both rotations at head_dim 64) and with a q8_0 K beside an f16 V, its decode steps'
    logits are the per-op path's (rope, then the KV write's whole rows, then attention) bit for bit,
    step after step, so every row it stored reads back as that kernel's bytes."""
    from rfc.compiler.codegen.gpu_rope_attention import SUFFIX
    from tests.kernels.gpu_emulator import emulated_device

    bundle = open_bundle(gpu_bundle("qwen3-F16", target))
    plan, build_dir = bundle.plan, shared_basetemp(tmp_path_factory) / "gpu-emu"
    prompt, steps = (1, 40, 41, 42, 43), 5
    for types in (KvCacheTypes(Q4, Q8), KvCacheTypes(Q8, F16)):
        step = emulated_step_device(bundle, target, plan.kv, NUM_BLOCKS, BLOCK_SIZE, build_dir, cache_types=types)
        op = emulated_device(bundle, target, plan.kv, NUM_BLOCKS, BLOCK_SIZE, build_dir, cache_types=types)
        single = step.runner.program.single_launches
        assert sum(launch.kernel.endswith(SUFFIX) for launch in single) == plan.kv.n_layers
        blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
        run_step, run_op = Executor(plan, step), Executor(plan, op)
        blocks.allocate(0, len(prompt) + steps)
        batch = build_batch([ScheduledChunk(0, 0, prompt)], blocks)
        got, want = run_step.forward(batch), run_op.forward(batch)
        assert np.array_equal(got, want)
        for i in range(steps):
            batch = build_batch([ScheduledChunk(0, len(prompt) + i, (int(want[-1].argmax()),))], blocks)
            got, want = run_step.forward(batch), run_op.forward(batch)
            assert np.array_equal(got, want), (
                f"{types.describe()} step {i}: max |step - op| {np.abs(got - want).max():.3e}"
            )


def test_kernels_without_the_types_refuse_a_quantized_cache():
    """A bundle compiled before GPU kernels took k_type / v_type has F16-only kernels: a
    quantized cache is refused at load (GpuDevice), an f16 one still served."""
    from rfc.artifacts.program import ArgKind, ArgSlot, GridDim, Launch
    from rfc.runtime.devices.gpu import takes_kv_types

    kv = ArgSlot(ArgKind.KV, "k", value=0)
    n_rows = ArgSlot(ArgKind.SCALAR, "n_rows", size=4)
    k_type = ArgSlot(ArgKind.SCALAR, "k_type", size=4)
    old = Launch("rfc_kv_write_f16_64", 64, (GridDim("n_tokens", 1),), (kv, n_rows))
    new = Launch("rfc_kv_write_f16_64", 64, (GridDim("n_tokens", 1),), (kv, n_rows, k_type))
    other = Launch("rfc_add_64", 64, (GridDim("n_tokens", 1),), (n_rows,))
    assert takes_kv_types([new, other]) and takes_kv_types([other])
    assert not takes_kv_types([new, old, other])


@pytest.mark.parametrize("kind,target", [("hip", "gfx90a"), ("cuda", "sm_90")])
def test_gpu_devices_accept_the_cache_types(kind, target, monkeypatch):
    """create_device hands a GPU device the server's cache types (it refused quantized ones
    before GPU kernels took them), with no GPU: the driver and open_device stand in."""
    import rfc.runtime.devices as devices
    import rfc.runtime.devices.gpu as gpu
    from rfc.runtime.devices import DeviceChoice, DeviceKind, create_device

    opened = {}
    monkeypatch.setattr(devices, "gpu_driver_class", lambda family: lambda name: ("driver", family, name))
    monkeypatch.setattr(gpu, "open_device", lambda *args: opened.setdefault("args", args))
    types = KvCacheTypes(Q8, Q4)
    create_device(DeviceChoice(DeviceKind(kind), target), "bundle", KVSpec(2, 2, 64), 4, 16, 128, cache_types=types)
    assert opened["args"][-1] == types and opened["args"][2] == target
