"""Speculative decoding in the engine: greedy text token for token that of a run without drafts
(reference and cpu devices, the demo model, fixtures, SmolLM2), sampled text with the same
distribution (a chi-square test of token histograms) and, with a seed, the same tokens; stop
strings, logprobs, grammars, the prefix cache, per-request opt-out, a draft model."""

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rfc.artifacts import BundleError
from rfc.runtime.sampling.constraints import Grammars
from rfc.runtime.engine.engine import Engine, GenerationRequest, RequestError
from rfc.runtime.engine.assemble import LoadOptions, check_draft_vocabulary, load_model
from rfc.runtime.engine.prompting import chat_template, encode_prompt
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.runtime.engine.speculative import SpecConfig, SpecRequest, SpecType
from tests.conftest import DEMO_MODEL, FIXTURES, skip_reason, smollm2
from tests.unit.test_engine_device_sampling import GreedyDevice
from tests.unit.test_spec import chi_square_bound

pytestmark = pytest.mark.shared

GREEDY = SamplingParams(temperature=0)
CPU = pytest.param(
    "cpu",
    marks=[
        pytest.mark.toolchain,
        pytest.mark.skipif(shutil.which("cc") is None, reason="the cpu device needs a C compiler ('cc' not found)"),
    ],
)
# drafts nearly free: every sequence drafts, also in a batch (on the reference device a token
# costs what it costs, and a fitted cost model would mostly keep drafts out of its batches)
NGRAM = SchedulerConfig(max_batch=8, spec=SpecConfig(type=SpecType.NGRAM, cost_ratio=0.01))
PLAIN = SchedulerConfig(max_batch=8)
STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, Lily "
    "went to the park with her mom. Once upon a time, there was a little"
)


def _run(model, requests, config):
    engine = Engine(model, config)
    states = [engine.submit(r) for r in requests]
    while engine.step():
        pass
    assert all(s.finished for s in states)
    return engine, states


def _prompts(model) -> list[list[int]]:
    """A prompt that repeats itself (drafts get accepted), one that repeats a random run of
    tokens, and two random ones."""
    rng = np.random.default_rng(11)
    bos = model.tokenizer_info.get("bos_id")
    story = ([bos] if bos is not None else []) + model.tokenizer.encode(STORY).ids
    run = rng.integers(3, model.vocab_size, 12).tolist()
    return [story, [1, *run, *run, *run[:4]], [1, *rng.integers(3, model.vocab_size, 20).tolist()], [1, 300, 20]]


def _same(got, want) -> None:
    for g, w in zip(got, want):
        assert g.tokens == w.tokens and g.text == w.text and g.finish_reason == w.finish_reason


@pytest.mark.parametrize("device", ["ref", CPU])
@pytest.mark.parametrize("name", ["stories260K", "tiny-llama-Q4_K_M", "tiny-qwen3-Q8_0"])
def test_greedy_text_is_that_of_a_run_without_drafts(name, device, bundle_cache):
    """Four requests at once (drafts share steps with plain decodes), logprobs included. On
    the cpu device tiny-llama-Q4_K_M's multi-token rows differ from one-token rows in the last
    bits (~1e-5): the tie margin keeps its text the same too."""
    bundle = bundle_cache(DEMO_MODEL if name == "stories260K" else FIXTURES / f"{name}.gguf")
    model = load_model(bundle, LoadOptions(device=device))
    requests = [
        GenerationRequest(p, GREEDY, max_tokens=80, logprobs=2 if i == 1 else None, ignore_eos=i == 0)
        for i, p in enumerate(_prompts(model))
    ]
    _, want = _run(model, requests, PLAIN)
    engine, got = _run(model, requests, NGRAM)
    _same(got, want)
    assert [g.events.qsize() for g in got] == [w.events.qsize() for w in want]
    counts = engine.counts()
    # the drafts were used: the demo model repeats its prompt; the random fixtures less
    assert counts["spec_accepted"] >= (20 if name == "stories260K" else 3) and counts["spec_drafted"] > 20, counts
    assert engine.blocks.num_used() == 0


SMOLLM2 = smollm2()


@pytest.mark.skipif(not SMOLLM2.is_file(), reason=skip_reason(SMOLLM2))
@pytest.mark.parametrize("device", [CPU])
def test_smollm2_greedy_text_is_that_of_a_run_without_drafts(device, bundle_cache):
    model = load_model(bundle_cache(SMOLLM2), LoadOptions(device=device))
    tools = Path(__file__).resolve().parents[2] / "tools" / "spec_prompts"
    task = (
        "Correct the spelling mistakes in the following text. Reply with the corrected text in full and nothing else."
    )
    message = f"{task}\n\n{(tools / 'garden_typos.txt').read_text().strip()}"
    prompt = encode_prompt(
        model, chat_template(model).render([{"role": "user", "content": message}], add_generation_prompt=True)
    )
    requests = [GenerationRequest(prompt, GREEDY, max_tokens=96)]
    _, want = _run(model, requests, PLAIN)
    engine, got = _run(model, requests, NGRAM)
    _same(got, want)
    assert engine.counts()["spec_accepted"] > 48


@pytest.fixture(scope="module")
def demo(bundle_cache):
    return load_model(bundle_cache(DEMO_MODEL), LoadOptions(device="ref"))


def _histogram(model, spec: bool, runs: int, length: int, seed: int) -> tuple[np.ndarray, dict]:
    """Tokens 1..length of `runs` sampled continuations of a self-repeating prompt, counted."""
    prompt = _prompts(model)[0]
    params = [SamplingParams(temperature=1.0, seed=seed + i) for i in range(runs)]
    config = SchedulerConfig(
        max_batch=16,
        max_batch_tokens=512,
        max_queue=runs,
        spec=SpecConfig(type=SpecType.NGRAM if spec else SpecType.NONE, cost_ratio=0.01),
    )
    engine, states = _run(
        model, [GenerationRequest(prompt, p, max_tokens=length, ignore_eos=True) for p in params], config
    )
    counts = np.zeros(model.vocab_size, dtype=np.int64)
    for state in states:
        np.add.at(counts, state.tokens, 1)
    return counts, engine.counts()


def test_sampled_tokens_have_the_distribution_of_a_run_without_drafts(demo):
    """Temperature 1: the histogram of sampled tokens with drafts against one without (other
    seeds), a two-sample chi-square over the tokens seen at least 10 times, bounded at p = 1e-4."""
    with_drafts, counts = _histogram(demo, True, 160, 24, seed=1000)
    without, _ = _histogram(demo, False, 160, 24, seed=5000)
    assert counts["spec_accepted"] > 300, counts  # drafts were accepted often enough to matter
    kept = (with_drafts + without) >= 10
    a, b = with_drafts[kept], without[kept]
    stat = float((((a - b) ** 2) / (a + b)).sum())  # equal totals: sum (a-b)^2 / (a+b)
    assert stat < chi_square_bound(int(kept.sum()) - 1), f"chi-square {stat:.1f} over {int(kept.sum())} tokens"


def test_a_seeded_request_samples_the_same_tokens_with_and_without_drafts(demo):
    """Each emitted token takes one draw of the request's random stream, drafts or not."""
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=7)
    prompt = _prompts(demo)[0]
    requests = [
        GenerationRequest(prompt, params, max_tokens=60),
        GenerationRequest(prompt, GREEDY, max_tokens=60, logprobs=3),
    ]
    _, want = _run(demo, requests, PLAIN)
    engine, got = _run(demo, requests, NGRAM)
    _same(got, want)
    assert engine.counts()["spec_accepted"] > 0


class RecordingGrammar:
    """A grammar stand-in that bans one token and records what it accepted."""

    def __init__(self, banned: int):
        self.banned = banned
        self.accepted: list[int] = []

    def matcher(self):
        return self

    def mask(self, logits):
        out = logits.copy()
        out[self.banned] = -np.inf
        return out

    def allows(self, token):
        return token != self.banned

    def accept(self, token):
        assert token != self.banned
        self.accepted.append(token)


def test_a_grammar_sees_only_the_tokens_emitted(demo):
    """No rollback needed: the matcher masks each verify row after the drafts accepted before
    it and accepts only the tokens emitted, as it would one step at a time."""
    prompt = _prompts(demo)[0]
    banned = demo.tokenizer.encode(" girl").ids[-1]
    plain, spec = RecordingGrammar(banned), RecordingGrammar(banned)
    _, (want,) = _run(
        demo, [GenerationRequest(prompt, GREEDY, max_tokens=60, ignore_eos=True, constraint=plain)], PLAIN
    )
    engine, (got,) = _run(
        demo, [GenerationRequest(prompt, GREEDY, max_tokens=60, ignore_eos=True, constraint=spec)], NGRAM
    )
    assert got.tokens == want.tokens == spec.accepted == plain.accepted
    assert engine.counts()["spec_drafted"] > 0


def test_a_real_grammar_with_drafts(demo):
    grammars = Grammars(demo.bundle.file("tokenizer.json").read_text(encoding="utf-8"), demo.vocab_size, [2])
    grammar = grammars.gbnf('root ::= ("Lily went to the park. " | "Lily was happy. ")+', "grammar")
    prompt = _prompts(demo)[0]
    requests = [GenerationRequest(prompt, GREEDY, max_tokens=50, constraint=grammar)]
    _, (want,) = _run(demo, requests, PLAIN)
    engine, (got,) = _run(demo, requests, NGRAM)
    assert got.tokens == want.tokens and got.text == want.text
    assert engine.counts()["spec_accepted"] > 10


def test_a_stop_string_inside_accepted_drafts_cuts_the_text_there(demo):
    prompt = _prompts(demo)[0]
    _, (full,) = _run(demo, [GenerationRequest(prompt, GREEDY, max_tokens=60, ignore_eos=True)], PLAIN)
    stop = full.text[30:36]
    requests = [GenerationRequest(prompt, GREEDY, max_tokens=60, ignore_eos=True, stop=(stop,))]
    _, (want,) = _run(demo, requests, PLAIN)
    # with the engine and output threads: the output stage finds the stop behind the engine
    engine = Engine(demo, NGRAM)
    state = engine.submit(requests[0])
    engine.start()
    try:
        deadline = time.monotonic() + 60
        while not state.finished:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert state.finish_reason == "stop" and state.text == want.text and state.tokens == want.tokens
        time.sleep(0.05)
        assert engine.blocks.num_used() == 0
    finally:
        engine.stop()


def test_the_prefix_cache_holds_only_accepted_tokens(demo):
    """Blocks a speculating sequence offered to the cache hold the KV of its real tokens: a
    later prompt that extends its text, served from those blocks, continues as from scratch."""
    prompt = _prompts(demo)[0]
    engine = Engine(demo, NGRAM)
    first = engine.submit(GenerationRequest(prompt, GREEDY, max_tokens=70, ignore_eos=True))
    while engine.step():
        pass
    assert engine.counts()["spec_drafted"] > engine.counts()["spec_accepted"] > 0  # some were rejected
    longer = prompt + first.tokens[:60]
    again = engine.submit(GenerationRequest(longer, GREEDY, max_tokens=20))
    while engine.step():
        pass
    assert again.cached_tokens >= 64
    fresh = load_model(demo.bundle.root, LoadOptions(device="ref", prefix_caching=False))
    _, (want,) = _run(fresh, [GenerationRequest(longer, GREEDY, max_tokens=20)], PLAIN)
    assert again.tokens == want.tokens


def test_a_request_opts_out_or_asks_within_bounds(demo):
    prompt = _prompts(demo)[0]
    engine, (off, few) = _run(
        demo,
        [
            GenerationRequest(prompt, GREEDY, max_tokens=40, speculative=SpecRequest(SpecType.NONE)),
            GenerationRequest(prompt, GREEDY, max_tokens=40, speculative=SpecRequest(n_max=2)),
        ],
        NGRAM,
    )
    assert off.spec is None and few.spec.n_max == 2
    assert engine.counts()["spec_drafted"] <= 2 * engine.counts()["spec_verify_steps"]
    engine, (on,) = _run(
        demo, [GenerationRequest(prompt, GREEDY, max_tokens=40, speculative=SpecRequest(SpecType.NGRAM))], PLAIN
    )
    assert engine.counts()["spec_accepted"] > 0 and on.tokens == off.tokens == few.tokens
    for asked, field in [
        (SpecRequest(n_max=17), "speculative.n_max"),
        (SpecRequest(SpecType.DRAFT), "speculative.type"),
    ]:
        with pytest.raises(RequestError) as e:
            Engine(demo, NGRAM).submit(GenerationRequest(prompt, GREEDY, max_tokens=4, speculative=asked))
        assert e.value.field == field


def test_device_sampled_rows_of_a_verify_step(demo):
    """On a device that samples: a verify chunk's rows go to the host when a row depends on
    the drafts before it (penalties, a random stream) or needs its logits (the tie check);
    greedy rows without either are the device's."""
    prompt = _prompts(demo)[0]
    (want,) = _run(demo, [GenerationRequest(prompt, GREEDY, max_tokens=40)], PLAIN)[1]
    for margin, on_device in [(1e-3, False), (0.0, True)]:
        device = GreedyDevice(demo.executor)
        demo.executor, original = device, demo.executor
        try:
            config = SchedulerConfig(spec=SpecConfig(type=SpecType.NGRAM, tie_margin=margin, cost_ratio=0.01))
            engine, (got,) = _run(demo, [GenerationRequest(prompt, GREEDY, max_tokens=40)], config)
        finally:
            demo.executor = original
        assert got.tokens == want.tokens and engine.counts()["spec_accepted"] > 0
        verify_rows = [r for step in device.rows if len(step) > 1 for r in step]  # one request: more rows, drafts
        assert verify_rows and all((r is not None) == on_device for r in verify_rows)


def test_a_draft_model_with_the_same_vocabulary(bundle_cache):
    """The demo model as its own draft: its greedy drafts are the target's own tokens."""
    bundle = bundle_cache(DEMO_MODEL)
    model = load_model(bundle, LoadOptions(device="ref", draft_model=bundle))
    requests = [GenerationRequest(p, GREEDY, max_tokens=40) for p in _prompts(model)]
    _, want = _run(model, requests, PLAIN)
    engine, got = _run(
        model, requests, SchedulerConfig(max_batch=8, spec=SpecConfig(type=SpecType.DRAFT, n_max=4, cost_ratio=0.01))
    )
    _same(got, want)
    counts = engine.counts()
    assert counts["spec_drafted"] > 0 and counts["spec_accepted"] == counts["spec_drafted"]
    assert engine._spec.draft.blocks.num_used() == 0 or engine._spec.draft.blocks.num_sequences() <= len(requests)


def test_a_draft_model_drafts_nothing_past_its_own_context(bundle_cache):
    """A draft model whose context is shorter than the target's stops drafting for a
    sequence that would pass it (its device has no room for those positions); the target
    goes on alone, with the same text."""
    bundle = bundle_cache(DEMO_MODEL)
    model = load_model(bundle, LoadOptions(device="ref"))
    model.draft = load_model(bundle, LoadOptions(device="ref", ctx_size=80))
    prompt = _prompts(model)[0]
    assert len(prompt) < 80 < len(prompt) + 40
    requests = [GenerationRequest(prompt, GREEDY, max_tokens=40, ignore_eos=True)]
    _, want = _run(model, requests, PLAIN)
    engine, got = _run(model, requests, SchedulerConfig(spec=SpecConfig(type=SpecType.DRAFT, n_max=4, cost_ratio=0.01)))
    _same(got, want)
    draft = engine._spec.draft
    assert 0 < engine.counts()["spec_drafted"] and draft.blocks.num_used() == 0
    assert draft.propose({7: (list(range(3, 90)), 2)}) == {}


def test_a_draft_model_of_another_vocabulary_is_refused(demo):
    other = SimpleNamespace(
        vocab_size=demo.vocab_size,
        manifest={"model": {"name": "other"}},
        bundle=demo.bundle,
        tokenizer=SimpleNamespace(get_vocab=lambda with_added_tokens: {"a": 0}),
    )
    with pytest.raises(BundleError, match="another vocabulary"):
        check_draft_vocabulary(demo.vocab_size, demo.tokenizer, other)
    with pytest.raises(BundleError, match="the same vocabulary"):
        check_draft_vocabulary(demo.vocab_size + 1, demo.tokenizer, demo)
    check_draft_vocabulary(demo.vocab_size, demo.tokenizer, demo)
