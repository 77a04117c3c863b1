"""The GPU kernels against their reference (rfc.runtime.devices.reference), without a GPU.

Each target's generated source is run by the host emulator (gpu_emulator.py: one fiber per
GPU thread, real barriers and shuffles) under the real GpuDevice, so argument packing at
the code object's offsets, grids, the paged f16 KV cache and every kernel are exercised.
Tolerance: max |gpu - ref| <= 2e-4 * max(1, max |ref|) (float32 summation order; the
reference accumulates matmuls in float64), plus the llama.cpp bounds of the CPU path.
"""

import platform
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from rfc.artifacts.bundle import open_bundle
from rfc.runtime.batch import SeqChunk, StepBatch, build_batch
from rfc.runtime.devices.reference import ReferenceDevice
from rfc.runtime.executor import Executor
from rfc.runtime.kv_cache import BlockManager
from tests.kernels.gpu_emulator import emulated_device
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, model_path, toolchain_marks  # noqa: F401

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(shutil.which("g++") is None or platform.machine() != "x86_64",
                       reason="the GPU emulator needs g++ on x86-64"),
]

NUM_BLOCKS, BLOCK_SIZE = 48, 16
REL_TOL = 2e-4


def _close(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
    d = float(np.abs(got - want).max())
    bound = REL_TOL * max(1.0, float(np.abs(want).max()))
    return d <= bound, f"max |gpu - ref| {d:.2e} > {bound:.2e}"


def _llama_cpp_bounds(name: str, logits: np.ndarray, expected: np.ndarray) -> tuple[bool, str]:
    d = np.abs(logits - expected)
    top1 = float((logits.argmax(-1) == expected.argmax(-1)).mean())
    summary = f"{name}: max {d.max():.4f} mean {d.mean():.4f} top1 {top1:.3f}"
    fmt = name.rsplit("-", 1)[-1]
    if fmt in ("F32", "F16"):
        return bool(d.max() <= 0.05), summary
    if fmt == "BF16":
        return bool(d.max() <= 0.15), summary
    return bool(d.mean() <= 0.15 and top1 >= 0.93), summary


class Pair:
    """The emulated GPU device and the reference device over one bundle, same batches."""

    def __init__(self, bundle_dir, target: str, build_dir):
        self.bundle = open_bundle(bundle_dir)
        kv = self.bundle.plan.kv
        self.gpu = emulated_device(self.bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, build_dir)
        self.ref = ReferenceDevice(self.bundle, kv, NUM_BLOCKS, BLOCK_SIZE)
        self.blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
        self.run_gpu = Executor(self.bundle.plan, self.gpu)
        self.run_ref = Executor(self.bundle.plan, self.ref)

    def step(self, chunks: list[SeqChunk]) -> tuple[np.ndarray, np.ndarray]:
        for c in chunks:
            self.blocks.allocate(c.seq_id, c.start + len(c.tokens))
        batch = build_batch(chunks, self.blocks)
        return self.run_gpu.forward(batch), self.run_ref.forward(batch)


def _gpu_param(model: str, target: str):
    return pytest.param(model, target, marks=toolchain_marks(target), id=f"{model}-{target}")


@pytest.mark.parametrize("model,target", [
    _gpu_param("llama-F32", "gfx1100"),
    _gpu_param("llama-Q4_K_M", "gfx1100"),
    _gpu_param("llama-Q2_K", "gfx1100"),
    _gpu_param("llama-Q5_1", "gfx1100"),
    _gpu_param("llama-BF16", "gfx1100"),
    _gpu_param("llama-tied-F16", "gfx1100"),
    _gpu_param("qwen2-Q4_K_M", "gfx1100"),
    _gpu_param("llama-Q8_0", "gfx90a"),  # wave 64
])
def test_teacher_forced_logits_match_reference(model, target, gpu_bundle, tmp_path_factory):
    from tests.conftest import FIXTURES

    pair = Pair(gpu_bundle(model, target), target, tmp_path_factory.getbasetemp() / "gpu-emu")
    expected = np.load(FIXTURES / f"tiny-{model}.logits.npz")
    tokens = tuple(int(t) for t in expected["tokens"][:20])
    gpu, ref = pair.step([SeqChunk(0, 0, tokens, all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg
    ok, msg = _llama_cpp_bounds(model, gpu, expected["logits"][: len(tokens)])
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_batched_prefill_and_decode_over_paged_cache(target, gpu_bundle, tmp_path_factory):
    pair = Pair(gpu_bundle("qwen2-Q8_0", target), target, tmp_path_factory.getbasetemp() / "gpu-emu")
    pair.blocks.allocate(99, 3 * BLOCK_SIZE)  # so the sequences' blocks are not 0, 1, 2, ...
    a, b = (5, 17, 33, 2, 9, 41, 7, 300, 12, 8, 19), (100, 3, 77, 250, 31)
    gpu, ref = pair.step([SeqChunk(1, 0, a, all_logits=True), SeqChunk(2, 0, b)])
    assert gpu.shape == (len(a) + 1, pair.bundle.plan.vocab_size)
    ok, msg = _close(gpu, ref)
    assert ok, msg
    pair.blocks.free(99)
    la, lb = len(a), len(b)
    for step in range(6):  # decode both sequences together, crossing a block boundary
        na, nb = int(ref[-2].argmax()) if step else int(ref[la - 1].argmax()), int(ref[-1].argmax())
        gpu, ref = pair.step([SeqChunk(1, la, (na,)), SeqChunk(2, lb, (nb,))])
        ok, msg = _close(gpu, ref)
        assert ok, f"decode step {step}: {msg}"
        la, lb = la + 1, lb + 1


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_attention_over_long_contexts(target, gpu_bundle, tmp_path_factory):
    """Several chunks of keys (online softmax), shuffled block tables, two sequences."""
    pair = Pair(gpu_bundle("llama-F32", target), target, tmp_path_factory.getbasetemp() / "gpu-emu")
    plan, gpu, ref = pair.bundle.plan, pair.gpu, pair.ref
    op = next(o for o in plan.ops if o.kind == "attention" and o.attrs["layer"] == 1)
    rng = np.random.default_rng(0)
    ref.k_cache[...] = rng.standard_normal(ref.k_cache.shape).astype(ref.k_cache.dtype)
    ref.v_cache[...] = rng.standard_normal(ref.v_cache.shape).astype(ref.v_cache.dtype)
    gpu._driver.copy_to_device(gpu._k_cache, ref.k_cache)
    gpu._driver.copy_to_device(gpu._v_cache, ref.v_cache)
    lens = (601, 37)  # 601 keys: three chunks of 256
    tables = np.full((2, 40), -1, dtype=np.int32)
    perm = rng.permutation(NUM_BLOCKS).astype(np.int32)
    tables[0, :38], tables[1, :3] = perm[:38], perm[38:41]
    positions = np.array([598, 599, 600, 36], dtype=np.int32)
    seq_of_token = np.array([0, 0, 0, 1], dtype=np.int32)
    batch = StepBatch(
        tokens=np.zeros(4, dtype=np.int32), positions=positions,
        slots=np.array([tables[s, p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for s, p in zip(seq_of_token, positions)], dtype=np.int32),
        seq_of_token=seq_of_token, seq_start=np.array([0, 3, 4], dtype=np.int32), block_tables=tables,
        context_lens=np.array(lens, dtype=np.int32), logit_rows=np.arange(4, dtype=np.int32), block_size=BLOCK_SIZE,
    )
    width = op.attrs["n_heads"] * op.attrs["head_dim"]
    q = rng.standard_normal((4, width)).astype(np.float32)
    want = np.zeros_like(q)
    ref.launch(op, [want], [q], [], batch)
    q_dev, out_dev = gpu.alloc(q.shape, "f32"), gpu.alloc(q.shape, "f32")
    gpu._driver.copy_to_device(q_dev.ptr, q)
    gpu.launch(op, [out_dev], [q_dev], [], gpu.upload_batch(batch))
    ok, msg = _close(gpu.download(out_dev, 4), want)
    assert ok, msg


def _with_rope_freqs(src, dst):
    """A copy of a GGUF with rope_freqs.weight (llama 3 style frequency factors) added."""
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    n_rot = int(reader.fields[f"{arch}.rope.dimension_count"].contents())
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    factors = np.linspace(1.0, 8.0, n_rot // 2, dtype=np.float32)
    writer.add_tensor("rope_freqs.weight", factors, raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_rope_with_frequency_factors(target, gpu_build_cache, tmp_path):
    from rfc.compiler.pipeline import CompileOptions, compile_model

    model = _with_rope_freqs(model_path("llama-F32"), tmp_path / "freqs.gguf")
    out = tmp_path / "bundle"
    compile_model(CompileOptions(model=model, out_dir=out, targets=(target,), cache_dir=gpu_build_cache))
    pair = Pair(out, target, tmp_path / "emu")
    rope = next(o for o in pair.bundle.plan.ops if o.kind == "rope")
    assert rope.weights == ("rope_freqs.weight",)
    gpu, ref = pair.step([SeqChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_stories260k_greedy_tokens_match_reference(target, gpu_bundle, tmp_path_factory):
    pair = Pair(gpu_bundle("stories260K", target), target, tmp_path_factory.getbasetemp() / "gpu-emu")
    tokens = [1, 403, 407, 261]
    gpu, ref = pair.step([SeqChunk(0, 0, tuple(tokens))])
    for _ in range(24):
        assert int(gpu[-1].argmax()) == int(ref[-1].argmax()), f"greedy paths split after {tokens}"
        tokens.append(int(ref[-1].argmax()))
        gpu, ref = pair.step([SeqChunk(0, len(tokens) - 1, (tokens[-1],))])
        ok, msg = _close(gpu, ref)
        assert ok, msg


def test_emulator_defines_what_the_kernels_use():
    """The emulator header defines every name rfc_gpu.h defines per dialect."""
    import rfc.kernels

    header = (Path(rfc.kernels.__file__).parent / "rfc_gpu.h").read_text()
    emu = Path(__file__).with_name("gpu_emu.h").read_text()
    hip_branch = header.split("#if defined(__HIP__)")[1].split("#elif defined(__CUDACC__)")[0]
    names = set(re.findall(r"#define (RFC_[A-Z_]+)", hip_branch)) - {"RFC_HIP"}
    assert names and all(f"#define {n}" in emu for n in names), sorted(n for n in names if f"#define {n}" not in emu)
