"""The planar GPU weight layouts (artifacts/formats.py PLANAR_FORMATS) under the emulated
GPU kernels (gpu_emulator.py), against the numpy reference decoding the same bundle.

Per layout: a fixture whose matmul weights the planner stores planar; each distinct matmul
of it (format x shape) run alone on both devices over the same int8-rounded activations, at
the single-op tolerance of test_gpu_kernels (2e-4 relative: a decoder that misplaces one
element of a 32-element sub-block is off by far more); then the whole model teacher-forced
through the bound step program, within tests/bounds.py's bounds of the reference and of
llama.cpp's logits. A bundle with cpu and sm_90 targets stores the GPU layouts as variant
entries; its step program names them, and the emulated GPU reading them still matches.
sm_90 is the target (nvcc builds the cubin the device checks; the emulator runs the source).
"""

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.formats import PLANAR_FORMATS
from rfc.artifacts.program import unpack_program
from rfc.artifacts.targets import target_entry
from rfc.runtime.engine.batch import ScheduledChunk
from rfc.runtime.core.step import StepBatch
from rfc.runtime.devices.gpu import device_weight_bytes
from rfc.runtime.devices.reference import ReferenceDevice
from tests.bounds import device_bounds, llama_cpp_bounds
from tests.kernels.gpu_emulator import emulated_device, emulated_step_device, needs_emulator
from tests.kernels.gpu_support import (  # noqa: F401
    BesideReference,
    gpu_build_cache,
    gpu_bundle,
    gpu_rounding,
    model_path,
    round_activations,
    toolchain_marks,
)
from tests.conftest import shared_basetemp

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

TARGET = "sm_90"
NUM_BLOCKS, BLOCK_SIZE = 48, 16
REL_TOL = 2e-4
# a fixture per planar layout whose matmuls the planner stores in it (and the others it has)
FIXTURE_OF = {
    "Q4_0p": "llama-Q4_0",
    "Q4_1p": "llama-Q4_1",
    "Q5_0p": "llama-Q5_0",
    "Q5_1p": "llama-Q5_1",
    "Q8_0p": "llama-Q8_0",
    "Q2_Kp": "llama-Q2_K",
    "Q3_Kp": "llama-Q3_K_M",
    "Q6_Kp": "llama-Q6_K",
    "Q4_Kp": "llama-Q4_K_M",
    "Q5_Kp": "llama-Q5_K_M",
}
assert set(FIXTURE_OF) == set(PLANAR_FORMATS), "every planar layout has a fixture"
MODELS = sorted(set(FIXTURE_OF.values()) | {"mixtral-Q8_0"})  # mixtral: the MoE matmul over [experts, N, K]


def _param(model: str):
    return pytest.param(model, marks=toolchain_marks(TARGET), id=model)


def _batch(tokens: int) -> StepBatch:
    return StepBatch(
        tokens=np.zeros(tokens, np.int32),
        positions=np.arange(tokens, dtype=np.int32),
        slots=np.arange(tokens, dtype=np.int32),
        seq_of_token=np.zeros(tokens, np.int32),
        seq_start=np.array([0, tokens], np.int32),
        block_tables=np.zeros((1, 3), np.int32),
        context_lens=np.array([tokens], np.int32),
        logit_rows=np.arange(tokens, dtype=np.int32),
        block_size=BLOCK_SIZE,
    )


@pytest.mark.parametrize("model", [_param(m) for m in sorted(set(FIXTURE_OF.values()))])
def test_planar_matmuls_match_the_reference(model, gpu_bundle, tmp_path_factory):
    """Every distinct matmul of the fixture, alone, over 11 tokens (two token tiles of 8)."""
    bundle = open_bundle(gpu_bundle(model, TARGET))
    entries = bundle.layout.by_name()
    matmuls = [op for op in bundle.plan.ops if op.kind == "matmul"]
    planar = {entries[op.weights[0]].format for op in matmuls} & set(PLANAR_FORMATS)
    assert {f for f, m in FIXTURE_OF.items() if m == model} <= planar, planar
    assert entries["token_embd.weight"].format not in PLANAR_FORMATS, "the embed kernel gathers GGUF rows"
    gpu = emulated_device(
        bundle, TARGET, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, shared_basetemp(tmp_path_factory) / "gpu-emu"
    )
    ref = ReferenceDevice(bundle, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE)
    T, rng = 11, np.random.default_rng(5)
    batch = _batch(T)
    db = gpu.upload_batch(batch)
    seen = set()
    for op in matmuls:
        e = entries[op.weights[0]]
        if (e.format, e.shape) in seen:
            continue
        seen.add((e.format, e.shape))
        x = rng.standard_normal((T, e.shape[-1])).astype(np.float32)
        want = np.zeros((T, e.shape[0]), np.float32)
        ref.launch(op, [want], [round_activations(x)], [ref.weight(op.weights[0])], batch)
        x_dev, out = gpu.alloc(x.shape, "f32"), gpu.alloc(want.shape, "f32")
        gpu._driver.copy_to_device(x_dev.ptr, x)
        gpu.launch(op, [out], [x_dev], [gpu.weight(op.weights[0])], db)
        got = gpu.download(out, T)
        d, bound = float(np.abs(got - want).max()), REL_TOL * max(1.0, float(np.abs(want).max()))
        assert d <= bound, f"{op.weights[0]} ({e.format} {list(e.shape)}): max |gpu - ref| {d:.2e} > {bound:.2e}"


def _step_pair(bundle_dir, build_dir) -> BesideReference:
    """The emulated GPU step program and the reference over one bundle, same batches."""
    bundle = open_bundle(bundle_dir)
    device = emulated_step_device(bundle, TARGET, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, build_dir)
    return BesideReference(bundle, device, NUM_BLOCKS, BLOCK_SIZE)


def _teacher_forced(model: str, pair: BesideReference, formats) -> None:
    from tests.conftest import FIXTURES

    expected = np.load(FIXTURES / f"tiny-{model}.logits.npz")
    tokens = tuple(int(t) for t in expected["tokens"][:40])
    gpu, ref = pair.step([ScheduledChunk(0, 0, tokens, all_logits=True)])
    ok, msg = device_bounds(model, gpu, ref, rounding=gpu_rounding(model, formats, tokens))
    assert ok, msg
    ok, msg = llama_cpp_bounds(model, gpu, expected["logits"][: len(tokens)])
    assert ok, msg


@pytest.mark.parametrize("model", [_param(m) for m in MODELS])
def test_step_program_over_planar_weights_matches_reference(model, gpu_bundle, tmp_path_factory):
    """40 tokens teacher-forced through the bound step program (the engine's path)."""
    pair = _step_pair(gpu_bundle(model, TARGET), shared_basetemp(tmp_path_factory) / "gpu-emu")
    formats = {t.format for t in pair.bundle.layout.tensors}
    assert formats & set(PLANAR_FORMATS), formats
    _teacher_forced(model, pair, formats)


@pytest.mark.parametrize("model", [_param("llama-Q4_0")])
def test_bundle_with_cpu_and_gpu_targets_reads_variants(model, gpu_build_cache, tmp_path):
    """cpu + sm_90: the plan's weights in the cpu layout (Q4_0x8), the GPU layouts as variant
    entries written once each, which the sm_90 program maps and its kernels read."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile

    out = tmp_path / "bundle"
    emulator_compile(
        CompileOptions(model=model_path(model), out_dir=out, targets=("cpu", TARGET), cache_dir=gpu_build_cache)
    )
    bundle = open_bundle(out)
    entries = bundle.layout.by_name()
    entry = target_entry(bundle.manifest, TARGET)
    weights = unpack_program(bundle.file(entry.program).read_bytes()).weights
    q = "blk.0.attn_q.weight"
    assert entries[q].format == "Q4_0x8" and weights[q] == f"{q}#Q4_0p" and entries[weights[q]].format == "Q4_0p"
    assert all(name in entries and entries[name].format in PLANAR_FORMATS for name in weights.values())
    variants = [t for t in bundle.layout.tensors if "#" in t.name]
    assert sorted(t.name for t in variants) == sorted(weights.values()), "every variant is read, none twice"
    # the GPU uploads what it reads: not the cpu layouts of the same weights
    assert device_weight_bytes(bundle, entry) < 0.6 * len(bundle.weights)
    cpu_entry = target_entry(bundle.manifest, "cpu")
    assert not unpack_program(bundle.file(cpu_entry.program).read_bytes()).weights
    pair = _step_pair(out, tmp_path / "emu")
    _teacher_forced(model, pair, {entries[w].format for w in weights.values()})
