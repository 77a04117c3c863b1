"""The cpu device end to end: every fixture GGUF compiled for `cpu`, teacher-forced logits
against llama.cpp's at all 64 positions, with the acceptance bounds of the reference device
(tests/bounds.py: llama_cpp_bounds). Every fixture architecture compiles for the cpu target."""

import shutil

import numpy as np
import pytest

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.bounds import llama_cpp_bounds as logit_bounds_ok
from tests.conftest import FIXTURES
from tests.e2e.test_oracle_bounds import CPU_MODELS
from tests.e2e.test_reference_oracle import batched_last_logits, teacher_forced_logits

pytestmark = [
    pytest.mark.shared,
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)"
    ),
]


@pytest.mark.parametrize("name", CPU_MODELS)
def test_cpu_matches_llama_cpp_logits(name, bundle_cache):
    ref = np.load(FIXTURES / f"{name}.logits.npz")
    bundle = bundle_cache(FIXTURES / f"{name}.gguf")
    assert load_model(bundle, LoadOptions(device="auto")).device_choice.name == "cpu"
    logits = teacher_forced_logits(bundle, "cpu", ref["tokens"].tolist())
    ok, summary = logit_bounds_ok(name, logits, ref["logits"])
    assert ok, summary


@pytest.mark.parametrize(
    "name", ["tiny-llama-Q4_0", "tiny-qwen2-Q4_K_M", "tiny-llama-F16", "tiny-qwen2-F32", "tiny-mixtral-Q4_K_M"]
)
def test_decoding_token_by_token(name, bundle_cache):
    """Decode steps (one token: other kernels than a prefill's) meet the same bounds against
    llama.cpp. Float models also match one teacher-forced prefill to 2e-3; quantized ones need
    not: a last-bit difference in a sum can flip the int8 rounding of an activation, and
    such flips compound over the layers (both paths stay as close to llama.cpp)."""
    bundle = bundle_cache(FIXTURES / f"{name}.gguf")
    ref = np.load(FIXTURES / f"{name}.logits.npz")
    tokens = ref["tokens"].tolist()[:24]
    model = load_model(bundle, LoadOptions(device="cpu"))
    blocks = model.kv_pool.manager()
    steps = []
    for pos, tok in enumerate(tokens):
        blocks.allocate(0, pos + 1)
        steps.append(model.executor.forward(build_batch([ScheduledChunk(0, pos, (tok,))], blocks))[0])
    ok, summary = logit_bounds_ok(name, np.array(steps), ref["logits"][:24])
    assert ok, summary
    if name.endswith(("F16", "F32")):
        np.testing.assert_allclose(np.array(steps), teacher_forced_logits(bundle, "cpu", tokens), atol=2e-3, rtol=0)


def test_batching_does_not_change_logits(bundle_cache):
    """Sequences of different lengths, some prefilling and some decoding, in one step. A float
    model, so that only summation order differs (see test_decoding_token_by_token)."""
    bundle = bundle_cache(FIXTURES / "tiny-qwen2-F32.gguf")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 512, size=n).tolist() for n in (5, 17, 1, 33)]
    expected = [teacher_forced_logits(bundle, "cpu", p)[-1] for p in prompts]
    logits = batched_last_logits(bundle, "cpu", prompts)
    for got, want in zip(logits, expected):
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)


def greedy(bundle, device: str, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """n greedy tokens after a prefill of prompt, decoded one step at a time; with each
    step's gap between its two largest logits."""
    model = load_model(bundle, LoadOptions(device=device))
    blocks = model.kv_pool.manager()
    tokens, gaps = list(prompt), []
    blocks.allocate(0, len(tokens))
    logits = model.executor.forward(build_batch([ScheduledChunk(0, 0, tuple(tokens))], blocks))[0]
    for _ in range(n):
        top2 = np.sort(logits)[-2:]
        gaps.append(float(top2[1] - top2[0]))
        tokens.append(int(np.argmax(logits)))
        blocks.allocate(0, len(tokens))
        logits = model.executor.forward(build_batch([ScheduledChunk(0, len(tokens) - 1, (tokens[-1],))], blocks))[0]
    return tokens[len(prompt) :], gaps


# Greedy decoding on the cpu device picks the reference's tokens until a step where the
# reference's top two logits are within NEAR_TIE of each other (the devices differ by int8
# activation rounding, ~0.1 mean on these logits): a first difference must be at such a step.
# Per architecture (lfm2: short convolutions carrying their state from step to step; lfm2moe: with routed experts):
# per-head norms, windows of 32 crossed by 48 positions, soft-capping, GeGLU, per-layer rope bases (qwen3, gemma2,
# gemma3), experts (mixtral, qwen3moe), sinks and biased experts (gpt-oss), sigmoid routing with a selection bias,
# shared experts and partial RoPE (glm4moe), latent attention (deepseek2), granite's multipliers around routed and
# shared experts (granitemoe), attention temperature tuning (mistral3temp), top-1 experts weighted on their input, NoPE
# layers and weightless Q/K norms (llama4).
GREEDY_MODELS = [
    "tiny-llama-Q4_0",
    "tiny-mixtral-Q8_0",
    "tiny-mixtral-Q4_K_M",
    "tiny-qwen3-Q8_0",
    "tiny-gemma2-Q8_0",
    "tiny-gemma3-Q8_0",
    "tiny-qwen3-F16",
    "tiny-gemma2-F16",
    "tiny-gemma3-F16",
    "tiny-qwen3moe-Q8_0",
    "tiny-qwen3moe-Q4_K_M",
    "tiny-gpt-oss-F16",
    "tiny-gpt-oss-Q8_0",
    "tiny-glm4moe-Q8_0",
    "tiny-deepseek2-Q8_0",
    "tiny-granitemoe-Q8_0",
    "tiny-mistral3temp-Q8_0",
    "tiny-lfm2-Q8_0",
    "tiny-lfm2-Q4_K_M",
    "tiny-lfm2moe-Q8_0",
    "tiny-lfm2moe-Q4_K_M",
    "tiny-llama4-Q8_0",
    "tiny-llama4-Q4_K_M",
    "tiny-gemma4-Q8_0",
]
GREEDY_MODELS += ["tiny-granitehybrid-Q8_0", "tiny-nemotron_h-Q8_0"]  # Mamba2 layers carrying conv and scan state
GREEDY_MODELS += ["tiny-gemma3n-Q8_0"]  # Gemma 3n: 4 AltUp streams, Laurel, sparse FFN gates, KV shared from layer 20
GREEDY_MODELS += ["tiny-nemotron_h_moe-Q8_0"]  # ... and sigmoid-routed squared-ReLU experts
# Gemma 4 E2B/E4B: per-layer embeddings, 2 layers decoding over others' KV caches
GREEDY_MODELS += ["tiny-gemma4e-Q8_0"]
GREEDY_MODELS += ["tiny-gemma4moe-Q8_0"]  # Gemma 4 26B-A4B: GELU experts beside the dense MLP, per-expert output scales
GREEDY_MODELS += ["tiny-falcon-h1-Q8_0"]  # Falcon-H1: attention and a Mamba2 mixer in every layer, side by side
NEAR_TIE = 0.5


@pytest.mark.parametrize("name", GREEDY_MODELS)
def test_greedy_decoding_agrees_with_the_reference(name, bundle_cache):
    assert_greedy_decoding_agrees(name, bundle_cache)


def assert_greedy_decoding_agrees(name: str, bundle_cache) -> None:
    """40 greedy tokens after the fixture's first 8 on cpu are the reference's up to a near tie."""
    bundle = bundle_cache(FIXTURES / f"{name}.gguf")
    prompt = np.load(FIXTURES / f"{name}.logits.npz")["tokens"].tolist()[:8]
    want, gaps = greedy(bundle, "ref", prompt, 40)
    got, _ = greedy(bundle, "cpu", prompt, 40)
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    if first is not None:
        assert gaps[first] < NEAR_TIE, (
            f"greedy tokens differ at step {first}, where the reference's top two logits "
            f"are {gaps[first]:.2f} apart: {got[: first + 1]} vs {want[: first + 1]}"
        )


@pytest.mark.parametrize("name", ["tiny-gemma2-F16", "tiny-gemma3-F16", "tiny-deepseek2-Q8_0"])
def test_batching_with_sliding_windows(name, bundle_cache):
    """Prefilling and decoding sequences side by side, some past the window of 32 (deepseek2: rows of
    the latent KV cache, one KV head for every query head)."""
    bundle = bundle_cache(FIXTURES / f"{name}.gguf")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 512, size=n).tolist() for n in (5, 40, 1, 37)]
    expected = [teacher_forced_logits(bundle, "cpu", p)[-1] for p in prompts]
    for got, want in zip(batched_last_logits(bundle, "cpu", prompts), expected):
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)


def test_copy_kv_copies_whole_blocks_and_refuses_slots_that_change_rows(bundle_cache):
    """A block keeps each piece of its slots' rows together (templates/cpu_attention.c.j2), so
    the device copies the blocks of the slots it is given, whole, in every layer; slots that
    would move to another row of their block are an error that changes nothing."""
    from rfc.runtime.devices import DeviceError
    from rfc.runtime.engine.kv_cache import KvCopy, kv_copy_slots

    model = load_model(bundle_cache(FIXTURES / "tiny-llama-Q4_0.gguf"), LoadOptions(device="cpu"))
    device, bs = model.executor.device, model.kv_pool.block_size
    rng = np.random.default_rng(3)
    for cache in (device.k_cache, device.v_cache):
        cache[...] = rng.integers(0, 256, cache.shape, dtype=np.uint8)
    before = [device.k_cache.copy(), device.v_cache.copy()]
    device.copy_kv(*kv_copy_slots([KvCopy(1, 3, 5)], bs))  # the leading 5 rows of block 1 into block 3
    for cache, old in zip((device.k_cache, device.v_cache), before):
        np.testing.assert_array_equal(cache[:, 3 * bs : 4 * bs], old[:, bs : 2 * bs])
        keep = np.ones(cache.shape[1], bool)
        keep[3 * bs : 4 * bs] = False
        np.testing.assert_array_equal(cache[:, keep], old[:, keep])
    after = [device.k_cache.copy(), device.v_cache.copy()]
    with pytest.raises(DeviceError, match="same rows"):
        device.copy_kv(np.array([bs]), np.array([2 * bs + 1]))
    np.testing.assert_array_equal(device.k_cache, after[0])
    np.testing.assert_array_equal(device.v_cache, after[1])
