"""The numpy reference device against llama.cpp: teacher-forced logits and greedy text.

Bundles here are compiled without kernels (the reference device needs none), so every
architecture's fixture runs whether or not a compiled target supports it yet."""

import numpy as np
import pytest

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.bounds import llama_cpp_bounds
from tests.conftest import DEMO_MODEL, FIXTURES, TINY_MODELS, rfc

pytestmark = pytest.mark.shared

REFERENCE_ONLY = ()  # bundle_cache targets: no kernels


def teacher_forced_logits(bundle, device: str, tokens: list[int]) -> np.ndarray:
    model = load_model(bundle, LoadOptions(device=device))
    blocks = model.kv_pool.manager()
    blocks.allocate(0, len(tokens))
    batch = build_batch([ScheduledChunk(0, 0, tuple(tokens), all_logits=True)], blocks)
    return model.executor.forward(batch)


def batched_last_logits(bundle, device: str, prompts: list[list[int]]) -> np.ndarray:
    """Last-token logits of every prompt, run together: a prefill step of all but each
    prompt's last token, then one step feeding every last token (decodes and a 1-token
    prefill side by side)."""
    model = load_model(bundle, LoadOptions(device=device))
    blocks = model.kv_pool.manager()
    chunks = []
    for i, p in enumerate(prompts):
        blocks.allocate(i, len(p))
        if len(p) > 1:
            chunks.append(ScheduledChunk(i, 0, tuple(p[:-1]), needs_logits=False))
    model.executor.forward(build_batch(chunks, blocks))
    last = [ScheduledChunk(i, len(p) - 1, (p[-1],)) for i, p in enumerate(prompts)]
    return model.executor.forward(build_batch(last, blocks))


@pytest.mark.parametrize("name", TINY_MODELS)
def test_reference_matches_llama_cpp_logits(name, bundle_cache):
    ref = np.load(FIXTURES / f"{name}.logits.npz")
    logits = teacher_forced_logits(
        bundle_cache(FIXTURES / f"{name}.gguf", REFERENCE_ONLY), "ref", ref["tokens"].tolist()
    )
    ok, summary = llama_cpp_bounds(name, logits, ref["logits"])
    assert ok, summary


@pytest.mark.parametrize("name", ["tiny-qwen2-Q8_0", "tiny-gemma2-Q8_0", "tiny-mixtral-Q8_0", "tiny-deepseek2-Q8_0"])
def test_batching_does_not_change_logits(name, bundle_cache):
    """Sequences of different lengths, some prefilling and some decoding, in one pass (a
    sliding window of 32 and expert routing among them)."""
    bundle = bundle_cache(FIXTURES / f"{name}.gguf", REFERENCE_ONLY)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 512, size=n).tolist() for n in (5, 17, 1, 40)]

    def alone(tokens):
        return teacher_forced_logits(bundle, "ref", tokens)[-1]

    expected = [alone(p) for p in prompts]
    got = batched_last_logits(bundle, "ref", prompts)
    for i in range(len(prompts)):
        assert np.abs(got[i] - expected[i]).max() <= 1e-4, i


def _golden(name: str) -> str:
    """llama-completion's output without the blank line it prints after the text."""
    text = (FIXTURES / name).read_text(encoding="utf-8")
    assert text.endswith("\n\n")
    return text[:-2]


def test_greedy_from_bos_matches_llama_cpp(bundle_cache):
    bundle = bundle_cache(DEMO_MODEL)
    proc = rfc("run", bundle, "--temperature", "0", "-n", "199", "--device", "ref", check=True)
    # the golden file is llama.cpp's output: the empty prompt, then the completion
    assert proc.stdout == _golden("stories260K.greedy-from-bos.txt") + "\n"
    assert "tok/s" in proc.stderr


def test_greedy_dragon_matches_llama_cpp(bundle_cache):
    bundle = bundle_cache(DEMO_MODEL)
    prompt = "Once upon a time, there was a dragon"
    proc = rfc("run", bundle, "-p", prompt, "--temperature", "0", "-n", "100", "--device", "ref", check=True)
    # the golden file echoes the prompt with SentencePiece's leading space
    assert " " + prompt + proc.stdout == _golden("stories260K.greedy-dragon.txt") + "\n"


def test_same_seed_same_text(bundle_cache):
    bundle = bundle_cache(DEMO_MODEL)
    args = ("run", bundle, "-p", "Once upon a time", "--temperature", "1.0", "-n", "40", "--device", "ref")
    a = rfc(*args, "--seed", "7", check=True).stdout
    b = rfc(*args, "--seed", "7", check=True).stdout
    c = rfc(*args, "--seed", "8", check=True).stdout
    assert a == b and a != c
