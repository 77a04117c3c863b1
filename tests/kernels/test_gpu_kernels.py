"""The GPU kernels against their reference (rfc.runtime.devices.reference), without a GPU.

Each target's generated source is run by the host emulator (gpu_emulator.py: one fiber per
GPU thread, real barriers and shuffles), each op's kernel bound as a one-launch program of the
compiler's argument slots by the runtime's binder (tests/kernels/kit/gpu.py), so argument
packing at the code object's offsets, grids, the paged f16 KV cache and every kernel are
exercised.
Tolerance: max |gpu - ref| <= 2e-4 * max(1, max |ref|) for single ops (float32 summation
order; the reference accumulates matmuls in float64; int8 matmuls get inputs already rounded
as they round them); whole models within tests/bounds.py's bounds of the reference for the
GPU's activation rounding (quantized weights: int8 per 32, float32 scale, the oracle's
"q8_32"; float weights: none) and its llama.cpp bounds.
The default run leaves out (`exhaustive`) the whole-model cases whose every feature another
case runs on the same kind of target: they say which beside them.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from rfc.artifacts.bundle import open_bundle
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.core.step import StepBatch
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_cache import BlockManager
from tests.bounds import FLOAT_MAX, device_bounds
from tests.faults import scale_outputs
from tests.kernels.gpu_emulator import emulated_device, needs_emulator
from tests.kernels.gpu_support import (  # noqa: F401
    BesideReference,
    assert_teacher_forced_within_bounds,
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

NUM_BLOCKS, BLOCK_SIZE = 48, 16
REL_TOL = 2e-4
# an encoder's hidden states on the emulator: within 3.5e-5 of the reference on every path (bert's one-token
# step on sm_90; the others within 8e-6); with the kernels masking causally 0.034 to 0.089
ENCODER_TOL = 2e-4


def _close(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
    d = float(np.abs(got - want).max())
    bound = REL_TOL * max(1.0, float(np.abs(want).max()))
    return d <= bound, f"max |gpu - ref| {d:.2e} > {bound:.2e}"


class Pair(BesideReference):
    """The emulated GPU device (the kit's op by op) and the reference device over one bundle, same batches."""

    def __init__(self, bundle_dir, target: str, build_dir):
        bundle = open_bundle(bundle_dir)
        self.gpu = emulated_device(bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, build_dir)
        super().__init__(bundle, self.gpu, NUM_BLOCKS, BLOCK_SIZE)
        self.formats = {t.format for t in bundle.layout.tensors}


def _gpu_param(model: str, target: str, exhaustive: bool = False):
    marks = toolchain_marks(target) + ([pytest.mark.exhaustive] if exhaustive else [])
    return pytest.param(model, target, marks=marks, id=f"{model}-{target}")


@pytest.mark.parametrize(
    "model,target",
    [
        _gpu_param("llama-F32", "gfx1100"),
        _gpu_param("llama-Q4_K_M", "gfx1100"),
        _gpu_param("llama-Q2_K", "gfx1100"),
        _gpu_param("llama-Q5_1", "gfx1100"),
        _gpu_param("llama-BF16", "gfx1100"),
        _gpu_param("llama-tied-F16", "gfx1100"),
        _gpu_param("qwen2-Q4_K_M", "gfx1100"),
        _gpu_param("llama-Q8_0", "gfx90a"),  # wave 64
        _gpu_param("qwen3-Q8_0", "gfx1100"),
        _gpu_param("gemma2-F16", "gfx1100"),
        _gpu_param("gemma3-Q8_0", "gfx1100"),
        _gpu_param("phi3-Q8_0", "gfx1100"),
        _gpu_param("mixtral-Q4_K_M", "gfx1100"),
        _gpu_param("llama3rope-Q8_0", "gfx1100"),
        _gpu_param("qwen3yarn-F16", "gfx1100"),  # YaRN: the ramp-mixed frequencies, its magnitude
        # a layer without RoPE (exhaustive: llama4's NoPE layer on gfx90a is the default run's)
        _gpu_param("smollm3-Q8_0", "gfx1100", exhaustive=True),
        _gpu_param("olmo2-Q8_0", "gfx90a"),  # post-norms, Q/K normed over whole rows
        _gpu_param("mistral3-Q8_0", "gfx1100"),  # YaRN with its betas and log multiplier
        _gpu_param("mistral3temp-Q8_0", "gfx90a"),  # the rope op's temperature tuning of q (positions 16-39 scaled)
        _gpu_param("granite-Q8_0", "gfx1100"),  # the scale op: residual and logit multipliers
        _gpu_param("gemma2-Q8_0", "gfx90a"),
        # exhaustive: mixtral is mixtral-Q4_K_M's on gfx1100, wave-64 experts the MoE fixtures' below
        _gpu_param("mixtral-Q8_0", "gfx90a", exhaustive=True),
        _gpu_param("qwen3moe-Q4_K_M", "gfx90a"),  # 8 experts, 4 used, expert width apart from the FFN's
        _gpu_param("gpt-oss-Q8_0", "gfx90a"),  # sinks, window 24 on even layers, biased experts, swiglu_oai
        _gpu_param(
            "glm4moe-Q8_0", "gfx90a"
        ),  # sigmoid router, selection bias, shared expert, partial RoPE, a dense layer
        _gpu_param("granitemoe-Q8_0", "gfx90a"),  # granite's multipliers around routed and shared experts
        # latent attention (head_matmul, concat_heads), grouped sigmoid router, YaRN
        _gpu_param("deepseek2-Q8_0", "gfx90a"),
        # V normed without a weight, rope_freqs on the global layer, layer_output_scale
        _gpu_param("gemma4-Q8_0", "gfx90a"),
        _gpu_param(
            "gemma4e-Q8_0", "gfx90a"
        ),  # per-layer embeddings (sliced embed rows), layers reading another's KV cache
        # GELU experts beside the dense MLP, fused gate/up, per-expert output scales
        _gpu_param("gemma4moe-Q8_0", "gfx90a"),
        # top-1 experts weighted on their input, shared expert, NoPE layer, weightless Q/K norms
        _gpu_param("llama4-Q8_0", "gfx90a"),
    ],
)
def test_teacher_forced_logits_match_reference(model, target, gpu_bundle, tmp_path_factory):
    """40 tokens: past gemma's sliding window of 32, several tiles of tokens per expert."""
    pair = Pair(gpu_bundle(model, target), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    assert_teacher_forced_within_bounds(pair, model)


@pytest.mark.parametrize(
    "model,target",
    [
        _gpu_param("qwen3-F16", "gfx1100"),
        # exhaustive: gemma2's decode is gemma2-F16's on sm_90, a sliding window's on gfx1100 gemma3-F16's
        _gpu_param("gemma2-Q8_0", "gfx1100", exhaustive=True),
        _gpu_param("gemma3-F16", "gfx1100"),
        _gpu_param("phi3-F16", "gfx1100"),
        _gpu_param("mixtral-Q8_0", "gfx1100", exhaustive=True),  # experts decoded: gpt-oss-F16's below
        _gpu_param("llama3rope-Q8_0", "gfx1100"),
        _gpu_param("gemma2-F16", "sm_90"),
        _gpu_param("gpt-oss-F16", "gfx1100"),
    ],
)
def test_greedy_decoding_matches_reference(model, target, gpu_bundle, tmp_path_factory):
    """Per architecture: a prompt, then greedy decode steps one token at a time (the decode
    kernels), crossing gemma's sliding window of 32; every step's token is the reference's."""
    pair = Pair(gpu_bundle(model, target), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    tokens = [1, *range(40, 70)]
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(tokens))])
    rounding = gpu_rounding(model, pair.formats, tokens)
    for step in range(8):
        _assert_same_greedy_token(
            gpu[-1], ref[-1], None if rounding is None else rounding[-1], f"step {step} after {tokens}"
        )
        tokens.append(int(ref[-1].argmax()))
        gpu, ref = pair.step([ScheduledChunk(0, len(tokens) - 1, (tokens[-1],))])
        rounding = gpu_rounding(model, pair.formats, tokens)
        ok, msg = device_bounds(model, gpu, ref, rounding=None if rounding is None else rounding[-1:])
        assert ok, f"step {step}: {msg}"


def _assert_same_greedy_token(gpu: np.ndarray, ref: np.ndarray, rounding: "np.ndarray | None", where: str):
    """The GPU's greedy token is the reference's, unless the reference's top two lie closer than
    what the GPU's activation rounding moves this row's logits (D = oracle(rounded) - oracle(exact),
    twice its max: both logits may move, in opposite directions) plus float noise: then either
    token is correct, and the GPU's must still be one the reference ranks within that reach."""
    g, r = int(gpu.argmax()), int(ref.argmax())
    if g == r:
        return
    reach = 2 * (float(np.abs(rounding).max()) if rounding is not None else 0.0) + 2 * FLOAT_MAX
    gap = float(ref[r] - ref[g])
    assert gap <= reach, f"greedy paths split {where}: gpu {g}, ref {r}, ref gap {gap:.3g} > {reach:.3g}"


@pytest.mark.parametrize(
    "model,target,kind",
    [
        pytest.param("gemma2-F16", "gfx1100", "softcap", marks=toolchain_marks("gfx1100")),
        pytest.param("granite-Q8_0", "gfx1100", "scale", marks=toolchain_marks("gfx1100")),
        pytest.param("mixtral-Q8_0", "gfx1100", "moe_combine", marks=toolchain_marks("gfx1100")),
    ],
)
def test_a_gpu_kernel_2_percent_off_fails(model, target, kind, gpu_bundle, tmp_path_factory):
    pair = Pair(gpu_bundle(model, target), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    first = next(op for op in pair.bundle.plan.ops if op.kind == kind)
    scale_outputs(pair.gpu, lambda op: op is first)
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(range(3, 40)), all_logits=True)])
    ok, msg = device_bounds(model, gpu, ref, rounding=None)
    assert not ok, f"{kind} 2% off passed: {msg}"


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_batched_prefill_and_decode_over_paged_cache(target, gpu_bundle, tmp_path_factory):
    """Float weights, so that the comparison is tight (the int8 matmuls' rounding is covered
    by the model tests' bounds)."""
    pair = Pair(gpu_bundle("qwen2-F32", target), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    pair.blocks.allocate(99, 3 * BLOCK_SIZE)  # so the sequences' blocks are not 0, 1, 2, ...
    a, b = (5, 17, 33, 2, 9, 41, 7, 300, 12, 8, 19), (100, 3, 77, 250, 31)
    gpu, ref = pair.step([ScheduledChunk(1, 0, a, all_logits=True), ScheduledChunk(2, 0, b)])
    assert gpu.shape == (len(a) + 1, pair.bundle.plan.vocab_size)
    ok, msg = _close(gpu, ref)
    assert ok, msg
    pair.blocks.free(99)
    la, lb = len(a), len(b)
    for step in range(6):  # decode both sequences together, crossing a block boundary
        na, nb = int(ref[-2].argmax()) if step else int(ref[la - 1].argmax()), int(ref[-1].argmax())
        gpu, ref = pair.step([ScheduledChunk(1, la, (na,)), ScheduledChunk(2, lb, (nb,))])
        ok, msg = _close(gpu, ref)
        assert ok, f"decode step {step}: {msg}"
        la, lb = la + 1, lb + 1


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_attention_over_long_contexts(target, gpu_bundle, tmp_path_factory):
    """Several chunks of keys (online softmax), shuffled block tables, two sequences."""
    pair = Pair(gpu_bundle("llama-F32", target), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
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
        tokens=np.zeros(4, dtype=np.int32),
        positions=positions,
        slots=np.array(
            [tables[s, p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for s, p in zip(seq_of_token, positions)],
            dtype=np.int32,
        ),
        seq_of_token=seq_of_token,
        seq_start=np.array([0, 3, 4], dtype=np.int32),
        block_tables=tables,
        context_lens=np.array(lens, dtype=np.int32),
        logit_rows=np.arange(4, dtype=np.int32),
        block_size=BLOCK_SIZE,
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
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile

    model = _with_rope_freqs(model_path("llama-F32"), tmp_path / "freqs.gguf")
    out = tmp_path / "bundle"
    emulator_compile(CompileOptions(model=model, out_dir=out, targets=(target,), cache_dir=gpu_build_cache))
    pair = Pair(out, target, tmp_path / "emu")
    rope = next(o for o in pair.bundle.plan.ops if o.kind == "rope")
    assert rope.weights == ("rope_freqs.weight",)
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_rope_pairs_loaded_in_batches_give_the_same_bits(target, tmp_path, monkeypatch):
    """A rope block's thread loads up to gpu_plan.ROPE_LOAD_BATCH of its pairs before it stores
    any (templates/gpu_rope.hip.j2). 16 + 16 heads of 64 are 1,024 pairs for 256 threads, 4 a
    thread: in batches of 3 (3, then 1) and in one of 4 the rope kernel (per op) and the fused
    rope + KV write (the step program, prompt and one-token steps) give the same bits, and
    those logits stay within the reference's bounds."""
    from rfc.compiler.codegen import gpu_plan
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.kernels.gpu_emulator import emulated_step_device
    from tests.kernels.gpu_support import make_gguf

    gguf = tmp_path / "heads.gguf"
    make_gguf(gguf, "--format", "Q8_0", "--dim", "1024", "--layers", "1", "--ffn", "256",
               "--heads", "16", "--kv-heads", "16", "--vocab", "512")  # fmt: skip
    prompt = (5, 17, 33, 2, 9, 41, 7, 300, 12, 8, 19)
    runs = []
    for batch in (3, 8):
        monkeypatch.setattr(gpu_plan, "ROPE_LOAD_BATCH", batch)
        out = tmp_path / f"bundle-{batch}"
        emulator_compile(CompileOptions(model=gguf, out_dir=out, targets=(target,), cache_dir=tmp_path / "cache"))
        source = (out / "kernels" / target / "rfc.hip").read_text()
        assert f"template <int THREADS, int BATCH = {batch}>" in source and "rfc_rope_adjacent_16x16x64_64(" in source
        pair = Pair(out, target, tmp_path / "emu")
        _assert_rope_op_matches_reference(pair)
        gpu, _ref = pair.step([ScheduledChunk(0, 0, prompt, all_logits=True)])
        step = emulated_step_device(pair.bundle, target, pair.bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, tmp_path / "emu")
        blocks, run = BlockManager(NUM_BLOCKS, BLOCK_SIZE), Executor(pair.bundle.plan, step)
        logits = [gpu]
        for start, tokens in ((0, prompt), (len(prompt), (77,)), (len(prompt) + 1, (3,))):
            blocks.allocate(0, start + len(tokens))
            logits.append(run.forward(build_batch([ScheduledChunk(0, start, tokens)], blocks)))
        runs.append(logits)
    for a, b in zip(*runs):
        assert np.array_equal(a, b), f"max |batches of 3 - one batch| {np.abs(a - b).max():.3e}"


def _assert_rope_op_matches_reference(pair: Pair) -> None:
    """The rope op alone on the GPU kernel and the reference, random q and k rows of 4 tokens at
    positions up to 4,000."""
    op = next(o for o in pair.bundle.plan.ops if o.kind == "rope")
    rng = np.random.default_rng(11)
    a = op.attrs
    q = rng.standard_normal((4, a["n_heads"] * a["head_dim"])).astype(np.float32)
    k = rng.standard_normal((4, a["n_kv_heads"] * a["head_dim"])).astype(np.float32)
    positions = np.array([0, 7, 600, 4000], dtype=np.int32)
    batch = StepBatch(
        tokens=np.zeros(4, dtype=np.int32),
        positions=positions,
        slots=np.arange(4, dtype=np.int32),
        seq_of_token=np.arange(4, dtype=np.int32),
        seq_start=np.arange(5, dtype=np.int32),
        block_tables=np.arange(4, dtype=np.int32).reshape(4, 1),
        context_lens=positions + 1,
        logit_rows=np.arange(4, dtype=np.int32),
        block_size=BLOCK_SIZE,
    )
    want_q, want_k = q.copy(), k.copy()  # rotated in place, as the kernel does
    pair.ref.launch(op, [want_q, want_k], [want_q, want_k], [], batch)
    q_dev, k_dev = _upload(pair.gpu, q), _upload(pair.gpu, k)
    pair.gpu.launch(op, [q_dev, k_dev], [q_dev, k_dev], [], pair.gpu.upload_batch(batch))
    for name, got, want in (("q", pair.gpu.download(q_dev, 4), want_q), ("k", pair.gpu.download(k_dev, 4), want_k)):
        ok, msg = _close(got, want)
        assert ok, f"rotated {name}: {msg}"


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_stories260k_greedy_tokens_match_reference(target, gpu_bundle, tmp_path_factory):
    pair = Pair(gpu_bundle("stories260K", target), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    tokens = [1, 403, 407, 261]
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(tokens))])
    for _ in range(24):
        assert int(gpu[-1].argmax()) == int(ref[-1].argmax()), f"greedy paths split after {tokens}"
        tokens.append(int(ref[-1].argmax()))
        gpu, ref = pair.step([ScheduledChunk(0, len(tokens) - 1, (tokens[-1],))])
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


def _upload(gpu, host: np.ndarray, dtype: str = "f32"):
    arr = gpu.alloc(host.shape, dtype)
    gpu._driver.copy_to_device(arr.ptr, np.ascontiguousarray(host, dtype=np.int32 if dtype == "i32" else np.float32))
    return arr


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_moe_kernels_route_and_group_tokens_per_expert(target, gpu_bundle, tmp_path_factory):
    """Router ties (lower index first), one expert taking most tokens (several tiles of 8),
    experts with none, both moe_matmul inputs (a token's row for every slot, a row per slot)."""
    pair = Pair(gpu_bundle("mixtral-Q8_0", target), target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    plan, gpu, ref = pair.bundle.plan, pair.gpu, pair.ref
    route = next(o for o in plan.ops if o.kind == "moe_route")
    gate, down = [o for o in plan.ops if o.kind == "moe_matmul"][0::2][:2]
    combine = next(o for o in plan.ops if o.kind == "moe_combine")
    n_expert, k = plan.buffer(route.inputs[0]).shape[1], route.attrs["n_used"]
    rng = np.random.default_rng(1)
    T = 37
    logits = rng.standard_normal((T, n_expert)).astype(np.float32)
    logits[:30, 2] += 6.0  # expert 2 takes 30 tokens: four tiles
    logits[30:, :] = 0.5  # all tied: experts 0 and 1
    logits[33, 3] = 0.5 + 1e-3
    batch = StepBatch(
        tokens=np.zeros(T, np.int32),
        positions=np.arange(T, dtype=np.int32),
        slots=np.arange(T, dtype=np.int32),
        seq_of_token=np.zeros(T, np.int32),
        seq_start=np.array([0, T], np.int32),
        block_tables=np.zeros((1, 3), np.int32),
        context_lens=np.array([T], np.int32),
        logit_rows=np.arange(T, dtype=np.int32),
        block_size=BLOCK_SIZE,
    )
    db = gpu.upload_batch(batch)
    want_ids, want_w = np.zeros((T, k), np.int32), np.zeros((T, k), np.float32)
    ref.launch(route, [want_ids, want_w], [logits], [], batch)
    ids_dev, w_dev = gpu.alloc((T, k), "i32"), gpu.alloc((T, k), "f32")
    gpu.launch(route, [ids_dev, w_dev], [_upload(gpu, logits)], [], db)
    got_ids = np.empty((T, k), np.int32)
    gpu._driver.copy_to_host(got_ids, ids_dev.ptr)
    assert (got_ids == want_ids).all(), np.nonzero(got_ids != want_ids)
    assert set(want_ids[:30, 0]) == {2} and (want_ids[30:33] == [0, 1]).all() and (want_ids[33] == [3, 0]).all()
    ok, msg = _close(gpu.download(w_dev, T), want_w)
    assert ok, msg

    for op, width_in in ((gate, plan.buffer(gate.inputs[0]).shape[1]), (down, plan.buffer(down.inputs[0]).shape[1])):
        x = rng.standard_normal((T, width_in)).astype(np.float32)
        n_out = plan.buffer(op.outputs[0]).shape[1]
        want = np.zeros((T, n_out), np.float32)
        ref.launch(op, [want], [round_activations(x), want_ids], [ref.weight(op.weights[0])], batch)
        out = gpu.alloc((T, n_out), "f32")
        gpu.launch(op, [out], [_upload(gpu, x), ids_dev], [gpu.weight(op.weights[0])], db)
        ok, msg = _close(gpu.download(out, T), want)
        assert ok, f"{op.weights[0]}: {msg}"

    y = rng.standard_normal((T, plan.buffer(combine.inputs[0]).shape[1])).astype(np.float32)
    want = np.zeros((T, plan.buffer(combine.outputs[0]).shape[1]), np.float32)
    ref.launch(combine, [want], [y, want_w], [], batch)
    out = gpu.alloc(want.shape, "f32")
    gpu.launch(combine, [out], [_upload(gpu, y), w_dev], [], db)
    ok, msg = _close(gpu.download(out, T), want)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_sliding_window_attention_over_long_contexts(target, gpu_build_cache, tmp_path):
    """A window of 300 over 601 keys: the kernel starts mid-sequence and crosses chunks of
    256; soft-capped scores; shuffled block tables."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.gguf_edit import rewrite_gguf

    model = rewrite_gguf(
        model_path("gemma2-F16"), tmp_path / "window.gguf", metadata={"gemma2.attention.sliding_window": 300}
    )
    emulator_compile(
        CompileOptions(model=model, out_dir=tmp_path / "bundle", targets=(target,), cache_dir=gpu_build_cache)
    )
    pair = Pair(tmp_path / "bundle", target, tmp_path / "emu")
    plan, gpu, ref = pair.bundle.plan, pair.gpu, pair.ref
    op = next(o for o in plan.ops if o.kind == "attention" and o.attrs.get("window") == 300)
    assert op.attrs.get("softcap") == 8.0
    rng = np.random.default_rng(0)
    ref.k_cache[...] = (3 * rng.standard_normal(ref.k_cache.shape)).astype(ref.k_cache.dtype)
    ref.v_cache[...] = rng.standard_normal(ref.v_cache.shape).astype(ref.v_cache.dtype)
    gpu._driver.copy_to_device(gpu._k_cache, ref.k_cache)
    gpu._driver.copy_to_device(gpu._v_cache, ref.v_cache)
    tables = np.full((2, 40), -1, dtype=np.int32)
    perm = rng.permutation(NUM_BLOCKS).astype(np.int32)
    tables[0, :38], tables[1, :3] = perm[:38], perm[38:41]
    positions = np.array([298, 299, 300, 598, 600, 36], dtype=np.int32)
    seq_of_token = np.array([0, 0, 0, 0, 0, 1], dtype=np.int32)
    batch = StepBatch(
        tokens=np.zeros(6, dtype=np.int32),
        positions=positions,
        slots=np.array(
            [tables[s, p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for s, p in zip(seq_of_token, positions)],
            dtype=np.int32,
        ),
        seq_of_token=seq_of_token,
        seq_start=np.array([0, 5, 6], dtype=np.int32),
        block_tables=tables,
        context_lens=np.array([601, 37], dtype=np.int32),
        logit_rows=np.arange(6, dtype=np.int32),
        block_size=BLOCK_SIZE,
    )
    width = op.attrs["n_heads"] * op.attrs["head_dim"]
    q = (3 * rng.standard_normal((6, width))).astype(np.float32)
    want = np.zeros_like(q)
    ref.launch(op, [want], [q], [], batch)
    out = gpu.alloc(q.shape, "f32")
    gpu.launch(op, [out], [_upload(gpu, q)], [], gpu.upload_batch(batch))
    ok, msg = _close(gpu.download(out, 6), want)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_long_context_rope_with_attn_factor(target, gpu_build_cache, tmp_path):
    """Phi-3 LongRoPE: frequency factors and rope.scaling.attn_factor scaling the rotated pairs."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.gguf_edit import rewrite_gguf

    factors = 1.0 + 3.0 * np.random.default_rng(3).random(16)
    model = rewrite_gguf(
        model_path("phi3-F16"),
        tmp_path / "long.gguf",
        metadata={"phi3.context_length": 8192, "phi3.rope.scaling.attn_factor": 1.19},
        add_tensors={"rope_factors_long.weight": factors, "rope_factors_short.weight": np.ones(16)},
    )
    emulator_compile(
        CompileOptions(model=model, out_dir=tmp_path / "bundle", targets=(target,), cache_dir=gpu_build_cache)
    )
    pair = Pair(tmp_path / "bundle", target, tmp_path / "emu")
    rope = next(o for o in pair.bundle.plan.ops if o.kind == "rope")
    assert rope.weights == ("rope_factors_long.weight",) and "attn_factor" in rope.attrs
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)])
    ok, msg = device_bounds("phi3-long", gpu, ref, rounding=None)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_optional_biases_and_weight_scales(target, gpu_build_cache, tmp_path):
    """A file with biases on every matmul kind and per-tensor weight scales (a negative one
    among them: the scale kernel's factor is compiled in), as tests/e2e/test_optional_tensors.py."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.e2e.test_optional_tensors import _extras
    from tests.gguf_edit import rewrite_gguf

    model = rewrite_gguf(model_path("llama-F32"), tmp_path / "extras.gguf", add_tensors=_extras())  # its NAME
    out = tmp_path / "bundle"
    emulator_compile(CompileOptions(model=model, out_dir=out, targets=(target,), cache_dir=gpu_build_cache))
    pair = Pair(out, target, tmp_path / "emu")
    assert -1.25 in [o.attrs["factor"] for o in pair.bundle.plan.ops if o.kind == "scale"]
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_expert_weight_scales(target, gpu_build_cache, tmp_path, monkeypatch):
    """qwen3moe's experts with `.scale` tensors on gate, up and down, in the layout llama.cpp's
    saver writes (tests/e2e/test_llama_archs.py), the scales made large and unequal (0.5 to 2.5
    per expert) so that each one moves the logits: moe_scale's kernel against the reference."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.e2e.test_llama_archs import archs

    seeded = archs.weights

    def weights(desc, name, shape, key):
        if name.endswith("_exps.scale"):
            return np.linspace(0.5, 2.5, shape[0], dtype=np.float32)[:: -1 if "up" in name else 1].copy()
        return seeded(desc, name, shape, key)

    monkeypatch.setattr(archs, "weights", weights)
    model = tmp_path / "scaled.gguf"
    archs.write_model(archs.load("qwen3moe-moe"), model, "qwen3moe-moe")
    out = tmp_path / "bundle"
    emulator_compile(CompileOptions(model=model, out_dir=out, targets=(target,), cache_dir=gpu_build_cache))
    pair = Pair(out, target, tmp_path / "emu")
    assert sum(o.kind == "moe_scale" for o in pair.bundle.plan.ops) == 4  # gate and up of both layers
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_llama4_two_experts_per_token(target, gpu_build_cache, tmp_path):
    """llama4 with expert_used_count 2 as llama.cpp's saver writes it (tests/e2e/test_llama_archs.py):
    each slot's gate output times its sigmoid weight (slot_scale's kernel) against the reference."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.e2e.test_llama_archs import _model

    out = tmp_path / "bundle"
    emulator_compile(
        CompileOptions(model=_model("llama4-moe", tmp_path), out_dir=out, targets=(target,), cache_dir=gpu_build_cache)
    )
    pair = Pair(out, target, tmp_path / "emu")
    assert sum(o.kind == "slot_scale" for o in pair.bundle.plan.ops) == 2  # the two layers with experts
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg


@pytest.mark.parametrize(
    "name,kind,target",
    [
        # the ungated FFNs' GELU and a fused attn_qkv whose bias is split with it, in Pythia's layout
        # (attention and FFN from two LayerNorms of the same x)
        pytest.param("gptneox-parallel", "gelu", "gfx1100", marks=toolchain_marks("gfx1100")),
        # OLMo 1.7's Q/K/V clamp and its LayerNorms without weight or bias
        pytest.param("olmo-dense", "clamp", "sm_90", marks=toolchain_marks("sm_90")),
        # gpt2's learned positions: a prompt at positions 0..12, then a decode step at 13
        pytest.param("gpt2-dense", "pos_embed", "gfx90a", marks=toolchain_marks("gfx90a")),
        # mpt's AWQ activation scales (a division per channel after the GELU), its ALiBi and clamp
        pytest.param("mpt-dense", "channel_div", "gfx1100", marks=toolchain_marks("gfx1100")),
        # maple's clamped SwiGLU experts (clamp 0.5, biting) and RoPE on its sliding-window layer alone
        pytest.param("maple-tight", "silu_clamp", "sm_90", marks=toolchain_marks("sm_90")),
        # spark2_5's sigmoid gate per attention head ([T, n_heads] over [T, n_heads x head_dim])
        pytest.param("spark2_5-swa", "sigmoid", "sm_90", marks=toolchain_marks("sm_90")),
        # muse-glimmer's post-norms at eps 1e-8 beside its other norms at 1e-5, its value-wise gate
        pytest.param("muse-glimmer-swa", "rmsnorm", "gfx1100", marks=toolchain_marks("gfx1100")),
        # laguna's softplus gates, one per head on layer 0 and one per value on layer 1 (of another head count)
        pytest.param("laguna-xs", "softplus", "gfx90a", marks=toolchain_marks("gfx90a")),
        # minicpm3's values narrower than its keys: zero-padded in the KV cache, cut per head after attention
        pytest.param("minicpm3-narrow", "slice_heads", "sm_90", marks=toolchain_marks("sm_90")),
        # mimo2's too, with layers of 1 and 2 KV heads (the KV rows the wider one's), sinks on the sliding layer
        pytest.param("mimo2-flash", "slice_heads", "gfx90a", marks=toolchain_marks("gfx90a")),
        # step35's capped SwiGLUs (dense FFN, experts, shared expert) and its per-head gates over narrower values
        pytest.param("step35-dense", "silu_cap", "gfx1100", marks=toolchain_marks("gfx1100")),
        # hy_v4's hyper-connections (4 streams mixed before and spread after each sublayer, mixed once more for
        # the logit rows), its gated latent attention with sinks and its clamped experts
        pytest.param("hy_v4-heads", "hc_gates", "sm_90", marks=toolchain_marks("sm_90")),
        # grovemoe's adjugate experts: a second router over the same logits, its ids halved (moe_route id_div),
        # two chunk experts over the first experts' sum
        pytest.param("grovemoe-groups", "moe_route", "gfx1100", marks=toolchain_marks("gfx1100")),
        # dots3note's latent attention in two geometries (a sliding layer of its own kv_lora, key and value sizes
        # reads the first values of the wider rows), normed rope keys, per-head gates
        pytest.param("dots3note-geoms", "concat_heads", "sm_90", marks=toolchain_marks("sm_90")),
        # M-RoPE's 4th section on text: a quarter of the pairs stopped by frequency factors of 1e30
        pytest.param("qwen2vl-wrapped", "rope", "sm_90", marks=toolchain_marks("sm_90")),
    ],
)
def test_saver_files_new_ops(name, kind, target, gpu_build_cache, tmp_path):
    """The ops the saver files of tests/e2e/test_llama_archs.py brought, in those files, the whole
    model against the reference."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.e2e.test_llama_archs import _model

    out = tmp_path / "bundle"
    emulator_compile(
        CompileOptions(model=_model(name, tmp_path), out_dir=out, targets=(target,), cache_dir=gpu_build_cache)
    )
    pair = Pair(out, target, tmp_path / "emu")
    assert any(o.kind == kind or o.attrs.get("activation") == kind for o in pair.bundle.plan.ops)
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg
    gpu, ref = pair.step([ScheduledChunk(0, 13, (7,), all_logits=True)])  # a decode step after the prompt
    ok, msg = _close(gpu, ref)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("gfx90a", marks=toolchain_marks("gfx90a"))])
def test_switched_adapters(target, gpu_build_cache, tmp_path):
    """graniteswitch's adapters on the GPU: the router's single-head attention over its own KV layer, the slot it
    names (moe_route pick 'index': rounded, so two adapters in view at 1.5 take the second), the per-token LoRA
    deltas as one-expert matmuls; over the recorded tokens, which turn adapter 1 on at position 4 and adapter 2 at
    8, then a decode step; the whole model against the reference."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.e2e.test_llama_archs import _model, archs

    out = tmp_path / "bundle"
    name = "graniteswitch-dense"
    emulator_compile(
        CompileOptions(model=_model(name, tmp_path), out_dir=out, targets=(target,), cache_dir=gpu_build_cache)
    )
    tokens = tuple(np.load(archs.DATA / f"{name}.logits.npz")["tokens"].tolist())
    assert set(archs.SWITCH_TOKENS) <= set(tokens)
    pair = Pair(out, target, tmp_path / "emu")
    gpu, ref = pair.step([ScheduledChunk(0, 0, tokens, all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg
    gpu, ref = pair.step([ScheduledChunk(0, len(tokens), (7,), all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_alibi_on_each_attention_path(target, gpu_build_cache, tmp_path):
    """ALiBi (jais-steep: slopes 0.71 and 0.5, which dominate the scores) on each attention kernel,
    the whole model against the reference: the per-op kernel's one-token path (a decode step) and
    its tiled path (a 70-token prompt, over ATTENTION_SPLIT_ROWS), and the step program's prefill
    list, whose attention runs on half tensor cores on sm_90 (gpu_attention_mma.hip.j2)."""
    from rfc.compiler.codegen.gpu_plan import ATTENTION_SPLIT_ROWS
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.kernels.gpu_emulator import emulated_step_device
    from tests.kernels.gpu_support import BesideReference
    from tests.e2e.test_llama_archs import _model

    out = tmp_path / "bundle"
    emulator_compile(
        CompileOptions(model=_model("jais-steep", tmp_path), out_dir=out, targets=(target,), cache_dir=gpu_build_cache)
    )
    prompt = tuple(range(5, 5 + 3 * 70, 3))
    assert len(prompt) > ATTENTION_SPLIT_ROWS
    pair = Pair(out, target, tmp_path / "emu")
    assert any(o.kind == "attention" and o.attr("alibi") == 1.0 for o in pair.bundle.plan.ops)
    for chunk in (ScheduledChunk(0, 0, prompt, all_logits=True), ScheduledChunk(0, len(prompt), (7,), all_logits=True)):
        ok, msg = _close(*pair.step([chunk]))
        assert ok, msg
    bundle = open_bundle(out)
    device = emulated_step_device(bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, tmp_path / "emu-step")
    assert any(k.kernel.endswith("_mma") for k in device.runner.program.prefill_launches)
    gpu, ref = BesideReference(bundle, device, NUM_BLOCKS, BLOCK_SIZE).step(
        [ScheduledChunk(0, 0, prompt, all_logits=True)]
    )
    ok, msg = _close(gpu, ref)
    assert ok, msg


@pytest.mark.parametrize(
    ("name", "target"),
    [
        pytest.param("bert-rank", "sm_90", marks=toolchain_marks("sm_90")),  # bert with a reranker's classifier
        pytest.param("nomic-bert-moe-dense", "gfx90a", marks=toolchain_marks("gfx90a")),
        # EmbeddingGemma's block (Q/K norms, GeGLU) and its dense projections on the gfx11 path
        pytest.param("gemma-embedding-dense", "gfx1100", marks=toolchain_marks("gfx1100")),
        # its symmetric sliding window (4 positions either side over layer 0) on every sm_90 path
        pytest.param("gemma-embedding-swa", "sm_90", marks=toolchain_marks("sm_90")),
        # ModernBERT: pre-norm blocks, a fused QKV, GeGLU, a symmetric window on layer 1, on 64-lane waves
        pytest.param("modern-bert-dense", "gfx90a", marks=toolchain_marks("gfx90a")),
        # EuroBERT: grouped-query attention over the whole input (1 KV head of 2), NeoX RoPE over half of each
        # head, on every sm_90 path
        pytest.param("eurobert-dense", "sm_90", marks=toolchain_marks("sm_90")),
        # jina-bert-v2: ALiBi over the whole input (-slope |key - query|), Q/K LayerNorms, GEGLU, on every sm_90 path
        pytest.param("jina-bert-v2-dense", "sm_90", marks=toolchain_marks("sm_90")),
        # T5's encoder: unscaled scores plus a position-bias table, Q/K/V narrower than n_embd, on every sm_90 path;
        # 6 buckets (distances from 12 on clamped into the table) on 64-lane waves; the original T5's ReLU FFN on gfx11
        pytest.param("t5encoder-dense", "sm_90", marks=toolchain_marks("sm_90")),
        pytest.param("t5encoder-near", "gfx90a", marks=toolchain_marks("gfx90a")),
        pytest.param("t5encoder-relu", "gfx1100", marks=toolchain_marks("gfx1100")),
    ],
)
def test_encoder_attention_on_each_path(name, target, gpu_build_cache, tmp_path):
    """An encoder's attention (non-causal: every row attends its whole sequence, or with a window the
    keys less than it away either side) on each attention kernel, the final hidden states against the
    reference: the per-op kernel's one-token and several-row paths, its tiled path (70 rows, over
    ATTENTION_SPLIT_ROWS) and the step program's prefill list (its tensor-core kernel on sm_90); two
    sequences in one step keep to their own keys. A model that serves fewer tokens takes the steps
    that fit its context: the paths it runs."""
    from rfc.compiler.codegen.gpu_plan import ATTENTION_SPLIT_ROWS
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.kernels.gpu_emulator import emulated_step_device
    from tests.kernels.gpu_support import BesideReference
    from tests.e2e.test_llama_archs import _model

    out = tmp_path / "bundle"
    emulator_compile(
        CompileOptions(model=_model(name, tmp_path), out_dir=out, targets=(target,), cache_dir=gpu_build_cache)
    )
    pair = Pair(out, target, tmp_path / "emu")
    assert not pair.bundle.plan.causal
    long = tuple(range(5, 5 + 3 * 70, 3))[: pair.bundle.plan.context_length]
    assert len(long) > ATTENTION_SPLIT_ROWS > 6 or len(long) == pair.bundle.plan.context_length > 6
    steps = [
        [ScheduledChunk(0, 0, (9,), all_logits=True)],
        [ScheduledChunk(1, 0, long[:6], all_logits=True)],
        [ScheduledChunk(2, 0, long, all_logits=True)],
        [ScheduledChunk(3, 0, long[:9], all_logits=True), ScheduledChunk(4, 0, long[9:], all_logits=True)],
    ]
    for chunks in steps:
        gpu, ref = pair.step(chunks, hidden=True)
        assert np.abs(gpu - ref).max() < ENCODER_TOL, (len(chunks[0].tokens), np.abs(gpu - ref).max())
    bundle = open_bundle(out)
    device = emulated_step_device(bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, tmp_path / "emu-step")
    if target == "sm_90" and len(long) > ATTENTION_SPLIT_ROWS:
        assert any(k.kernel.endswith("_mma") for k in device.runner.program.prefill_launches)
    beside = BesideReference(bundle, device, NUM_BLOCKS, BLOCK_SIZE)
    gpu, ref = beside.step([ScheduledChunk(0, 0, long, all_logits=True)], hidden=True)
    assert np.abs(gpu - ref).max() < ENCODER_TOL, np.abs(gpu - ref).max()
    if bundle.plan.output_scores:  # the classifier's scores, a step of their own
        from rfc.runtime.engine.batch import build_batch

        beside.blocks.allocate(5, 20)
        batch = build_batch([ScheduledChunk(5, 0, long[:20], all_logits=True)], beside.blocks)
        gpu, ref = beside.run.forward_scores(batch), beside.run_ref.forward_scores(batch)
        assert gpu.shape == ref.shape == (20, 1) and np.abs(gpu - ref).max() < 1e-3, np.abs(gpu - ref).max()


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_a_decoder_rerankers_scores_on_the_gpu(target, gpu_build_cache, tmp_path):
    """qwen3-rank (Qwen3-Reranker's "yes"/"no" head before its LM head): the step program's scores
    step, every row, against the reference (what rank_scores reads at a pair's last row), for one
    token, several and a longer input."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from rfc.runtime.engine.batch import build_batch
    from tests.e2e.test_llama_archs import _model
    from tests.kernels.gpu_emulator import emulated_step_device
    from tests.kernels.gpu_support import BesideReference

    out = tmp_path / "bundle"
    emulator_compile(
        CompileOptions(model=_model("qwen3-rank", tmp_path), out_dir=out, targets=(target,), cache_dir=gpu_build_cache)
    )
    bundle = open_bundle(out)
    assert bundle.plan.causal and bundle.plan.scores_softmax
    device = emulated_step_device(bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, tmp_path / "emu-step")
    beside = BesideReference(bundle, device, NUM_BLOCKS, BLOCK_SIZE)
    tokens = tuple(range(5, 5 + 3 * 20, 3))
    for seq, n in enumerate((1, 9, 20)):
        beside.blocks.allocate(seq, n)
        batch = build_batch([ScheduledChunk(seq, 0, tokens[:n], all_logits=True)], beside.blocks)
        gpu, ref = beside.run.forward_scores(batch), beside.run_ref.forward_scores(batch)
        assert gpu.shape == ref.shape == (n, 2) and np.abs(gpu - ref).max() < 1e-3, np.abs(gpu - ref).max()


@pytest.mark.parametrize("target", [pytest.param("gfx1100", marks=toolchain_marks("gfx1100"))])
def test_apertus_xielu(target, gpu_build_cache, tmp_path):
    """apertus's FFN activation (xielu: its four constants compiled in, different per layer, one
    with an eps that clips part of the negative side) in the file tests/e2e/test_llama_archs.py
    checks against llama.cpp, the whole model against the reference."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.e2e.test_llama_archs import _model

    out = tmp_path / "bundle"
    emulator_compile(
        CompileOptions(
            model=_model("apertus-dense", tmp_path), out_dir=out, targets=(target,), cache_dir=gpu_build_cache
        )
    )
    pair = Pair(out, target, tmp_path / "emu")
    assert len({tuple(o.attrs.values()) for o in pair.bundle.plan.ops if o.kind == "xielu"}) == 2
    gpu, ref = pair.step([ScheduledChunk(0, 0, tuple(range(3, 40, 3)), all_logits=True)])
    ok, msg = _close(gpu, ref)
    assert ok, msg
