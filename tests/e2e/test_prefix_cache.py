"""Prefix caching end to end: a prompt whose prefix another request computed gives the same
logits and tokens as the same prompt computed from scratch, on the reference device (the
oracle) and on the compiled cpu device, and prefills only its new tokens."""

import shutil
from pathlib import Path

import numpy as np
import requests
import pytest

from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.engine.scheduler import SchedulerConfig
from tests.conftest import DEMO_MODEL, FIXTURES

pytestmark = pytest.mark.shared

GREEDY = SamplingParams(temperature=0)
MODELS = [
    DEMO_MODEL,
    FIXTURES / "tiny-llama-Q4_0.gguf",
    FIXTURES / "tiny-gemma4e-Q8_0.gguf",
]  # layers reading another layer's cached blocks (Gemma 4 E2B/E4B)
DEVICES = [
    "ref",
    pytest.param(
        "cpu",
        marks=[
            pytest.mark.toolchain,
            pytest.mark.skipif(shutil.which("cc") is None, reason="the cpu device needs a C compiler ('cc' not found)"),
        ],
    ),
]


class Recorder:
    """Wraps the executor: the logits row of every step, and the tokens fed per step."""

    def __init__(self, model):
        self.rows: list[np.ndarray] = []
        self.fed: list[int] = []
        forward = model.executor.forward

        def recording(batch):
            logits = forward(batch)
            self.rows.extend(np.array(logits))
            self.fed.append(batch.num_tokens)
            return logits

        model.executor.forward = recording


def generate(engine: Engine, prompt: list[int], max_tokens: int = 8):
    state = engine.submit(GenerationRequest(prompt, GREEDY, max_tokens=max_tokens))
    while engine.step():
        pass
    assert state.finished and state.finish_reason in ("length", "eos"), state.error
    return state


def prompts(vocab: int) -> tuple[list[int], list[int], list[int]]:
    rng = np.random.default_rng(7)
    system = rng.integers(3, vocab, size=83).tolist()  # not a whole number of blocks
    return [1, *system], [1, *system, 5, 9, 11], [1, *system, 17, 4]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_path", MODELS, ids=lambda p: Path(p).stem)
def test_cached_prefix_gives_the_logits_of_a_full_prefill(model_path, device, bundle_cache):
    if not Path(model_path).exists():
        pytest.skip(f"{model_path} is missing")
    bundle = bundle_cache(model_path)
    config = SchedulerConfig(max_batch=4, max_batch_tokens=512)

    fresh = load_model(bundle, LoadOptions(device=device, prefix_caching=False))
    _, first, second = prompts(fresh.vocab_size)
    fresh_rec = Recorder(fresh)
    expected = generate(Engine(fresh, config), second)

    cached = load_model(bundle, LoadOptions(device=device))
    engine = Engine(cached, config)
    generate(engine, first)
    rec = Recorder(cached)
    got = generate(engine, second)

    hits = engine.blocks.cache.hit_tokens
    # the shared 84-token prefix to the token: its five full 16-token blocks by reference, the
    # 4 tokens of the first prompt's last block copied into a block of the second's own
    assert hits == 84
    assert got.seq.num_cached == hits
    assert rec.fed[0] == len(second) - hits  # only the new tokens were prefilled
    assert got.tokens == expected.tokens
    if device == "cpu":  # batch invariant by construction: bit for bit
        np.testing.assert_array_equal(np.stack(rec.rows), np.stack(fresh_rec.rows))
    else:  # numpy's matmul may sum a prefill of another length in another order
        np.testing.assert_allclose(np.stack(rec.rows), np.stack(fresh_rec.rows), rtol=0, atol=2e-4)
    assert engine.blocks.num_used() == 0 and engine.blocks.num_cached_idle() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_multi_turn_reuses_the_previous_turn_including_its_answer(device, bundle_cache):
    model = load_model(bundle_cache(DEMO_MODEL), LoadOptions(device=device))
    engine = Engine(model)
    turn1 = generate(engine, prompts(model.vocab_size)[1], max_tokens=40)
    history = [*turn1.request.prompt_ids, *turn1.tokens]
    rec = Recorder(model)
    turn2 = generate(engine, [*history, 7, 8, 9], max_tokens=4)
    # Every token of the first turn's prompt and answer whose KV was computed (all but the
    # last answer token): its full blocks by reference, the rest copied.
    assert turn2.seq.num_cached == len(history) - 1
    assert rec.fed[0] == len(turn2.request.prompt_ids) - turn2.seq.num_cached


def test_eviction_under_pressure_keeps_generation_correct(bundle_cache):
    """A pool barely larger than one context: cached blocks are evicted for new prompts and
    the results still equal an uncached run's."""
    bundle = bundle_cache(DEMO_MODEL)
    outputs = {}
    for caching in (False, True):
        model = load_model(bundle, LoadOptions(device="ref", prefix_caching=caching, kv_blocks=-(-512 // 16) + 2))
        engine = Engine(model, SchedulerConfig(max_batch=2, max_batch_tokens=256))
        rng = np.random.default_rng(3)
        heads = [rng.integers(3, model.vocab_size, size=n).tolist() for n in (300, 250, 200)]
        outs = []
        for i in range(8):
            head = heads[i % 3]
            outs.append(generate(engine, [1, *head, 3 + i], max_tokens=6).tokens)
        outputs[caching] = outs
        assert engine.blocks.num_used() == 0
        if caching:
            assert engine.blocks.cache.hit_tokens > 0 and engine.blocks.cache.evictions > 0
    assert outputs[True] == outputs[False]


def test_metrics_count_prefix_hits_over_http(server):
    """Two requests through `rfc serve` sharing a long prompt: /metrics moves the hit counter
    by at least the shared full blocks."""
    from tests.e2e.test_server_ops import _scrape

    model = "{model=stories260K}"
    _, before = _scrape(server.url)
    prompt = "Once upon a time there was a little girl who liked to play in the park. " * 6
    for suffix in (" She", " He"):
        r = requests.post(
            server.url + "/generate", json={"prompt": prompt + suffix, "max_tokens": 3, "temperature": 0}, timeout=60
        )
        assert r.status_code == 200
    types, after = _scrape(server.url)
    assert types["rocmforge_prefix_cache_hit_tokens"] == "counter"
    assert types["rocmforge_kv_cache_pages_cached"] == "gauge"
    hits = (
        after["rocmforge_prefix_cache_hit_tokens_total" + model]
        - before["rocmforge_prefix_cache_hit_tokens_total" + model]
    )
    misses = (
        after["rocmforge_prefix_cache_miss_tokens_total" + model]
        - before["rocmforge_prefix_cache_miss_tokens_total" + model]
    )
    assert hits >= 64 and misses > 0
