"""The engine's output stage (runtime/engine/output.py): detokenization, stop strings and events run
behind the engine thread, so a stop string reaches the scheduler up to MAX_LAG steps after the
token that completed it. Whatever the lag, a request ends with the text and tokens of a run
without one (`rfc run`'s: each step delivers its output before it returns), no event follows
its final one, and its KV returns to the pool at once. The lag is forced here by a detokenizer that
sleeps, so the engine thread runs ahead of the output stage as far as it may."""

import json
from dataclasses import replace
import threading
import time

import numpy as np
import pytest

from rfc.runtime.engine.engine import FAILED, LENGTH, Engine, FinishReason, GenerationRequest
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.engine.output import MAX_LAG
from rfc.runtime.sampling.grammar_limits import GrammarError
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.engine.scheduler import SchedulerConfig, SequenceStatus
from tests.conftest import DEMO_MODEL

pytestmark = pytest.mark.shared

GREEDY = SamplingParams(temperature=0)
PROMPTS = [[1, 400], [1, 300, 20], [1, 200], [1, 100, 7]]


@pytest.fixture(scope="module")
def model(bundle_cache):
    return load_model(bundle_cache(DEMO_MODEL), LoadOptions(device="ref"))


def _drain_events(state) -> list:
    events = []
    while not state.events.empty():
        events.append(state.events.get_nowait())
    return events


def _stepped(model, requests: list[GenerationRequest]):
    """Without threads: each step delivers its output before it returns."""
    engine = Engine(model)
    states = [engine.submit(r) for r in requests]
    while engine.step():
        pass
    return engine, states


def _slow_detok(state, seconds: float) -> None:
    push = state.detok.push

    def slow(token):
        time.sleep(seconds)
        return push(token)

    state.detok.push = slow


def _threaded(model, requests: list[GenerationRequest], slow_s: float = 0.004, before_start=None):
    """With the engine and output threads; the output stage held back by a slow detokenizer."""
    engine = Engine(model, SchedulerConfig(max_batch=8))
    states = [engine.submit(r) for r in requests]
    for state in states:
        _slow_detok(state, slow_s)
    if before_start is not None:
        before_start(engine, states)
    engine.start()
    return engine, states


def _wait(states, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(s.finished for s in states):
        assert time.monotonic() < deadline, "requests did not finish"
        time.sleep(0.005)


def _check_stream(state, events) -> None:
    """One final event, last; the streamed text is the request's text; a token event per token."""
    assert events and events[-1].finished and sum(e.finished for e in events) == 1
    assert "".join(e.text for e in events) == state.text
    tokens = [e.token for e in events if e.token is not None and not (e.finished and e.finish_reason == "eos")]
    assert tokens == state.tokens


def test_finish_reason_is_the_native_string():
    assert FinishReason.LENGTH == "length" and LENGTH is FinishReason.LENGTH
    assert json.dumps({"r": FinishReason.CANCELLED}) == '{"r": "cancelled"}'
    assert f"{FinishReason.EOS}" == "eos" and {"stop": 1}[FinishReason.STOP] == 1


def test_a_stop_string_found_late_ends_the_request_where_it_matched(model):
    plain = _stepped(model, [GenerationRequest(p, GREEDY, max_tokens=40) for p in PROMPTS])[1]
    # a stop string from the middle of each text, so that tokens follow it
    stops = [s.text[len(s.text) // 2 : len(s.text) // 2 + 3] for s in plain]
    requests = [GenerationRequest(p, GREEDY, max_tokens=40, stop=(stop,)) for p, stop in zip(PROMPTS, stops)]
    _, want = _stepped(model, requests)
    assert all(s.finish_reason == "stop" and len(s.tokens) < 40 for s in want)

    engine, got = _threaded(model, requests)
    try:
        _wait(got)
        for g, w in zip(got, want):
            assert g.finish_reason == "stop" and g.text == w.text and g.tokens == w.tokens
            assert g.stopper.matched == w.stopper.matched
            _check_stream(g, _drain_events(g))
        assert engine.blocks.num_used() == 0 and engine.is_idle()
    finally:
        engine.stop()


def test_the_engine_runs_at_most_a_few_steps_past_a_stop(model):
    """The scheduler may sample past a stop string it has not heard of yet, never further
    than the output stage's lag allows; those tokens never reach the client."""
    plain = _stepped(model, [GenerationRequest(PROMPTS[0], GREEDY, max_tokens=60, ignore_eos=True)])[1][0]
    stop = plain.text[len(plain.text) // 2 : len(plain.text) // 2 + 3]
    request = GenerationRequest(PROMPTS[0], GREEDY, max_tokens=60, stop=(stop,), ignore_eos=True)
    engine, (state,) = _threaded(model, [request], slow_s=0.02)
    try:
        _wait([state])
        time.sleep(0.1)  # a step still running when the stop was found
        assert state.finish_reason == "stop" and len(state.tokens) < 30
        assert state.seq.status is SequenceStatus.FINISHED and engine.blocks.num_used() == 0
        # one token per step (one request): those sampled after the stop were dropped, and
        # there were at most as many as the steps the output stage lets the engine run ahead
        assert len(state.tokens) < engine.steps <= len(state.tokens) + MAX_LAG
    finally:
        engine.stop()


def test_cancel_with_output_pending_returns_a_final_state(model):
    engine, states = _threaded(model, [GenerationRequest(p, GREEDY, max_tokens=200, ignore_eos=True) for p in PROMPTS])
    try:
        victim = states[0]
        deadline = time.monotonic() + 30
        while len(victim.tokens) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        got = engine.cancel(victim.request_id)
        assert got is victim and victim.finished and victim.finish_reason == "cancelled"
        text = victim.text
        assert victim.seq.status is SequenceStatus.FINISHED and not engine.blocks.has(victim.request_id)
        _wait(states)
        assert victim.text == text  # nothing after the final event
        events = _drain_events(victim)
        assert events[-1].finished and events[-1].token is None and events[-1].finish_reason == "cancelled"
        assert sum(e.finished for e in events) == 1 and "".join(e.text for e in events) == text
        for other in states[1:]:
            assert other.finish_reason == "length" and len(other.tokens) == 200
            _check_stream(other, _drain_events(other))
        assert engine.cancel(states[1].request_id).finish_reason == "length"  # ended: unchanged
    finally:
        engine.stop()


def test_the_drain_ends_every_stream_and_leaves_the_engine_idle(model):
    engine, states = _threaded(model, [GenerationRequest(p, GREEDY, max_tokens=200, ignore_eos=True) for p in PROMPTS])
    try:
        deadline = time.monotonic() + 30
        while not any(s.tokens for s in states):
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert not engine.is_idle()
        assert engine.abort_all("the server is shutting down") == len(states)
        for state in states:
            assert (
                state.finished and state.finish_reason == "cancelled" and state.error == "the server is shutting down"
            )
            events = _drain_events(state)
            assert events[-1].finished and sum(e.finished for e in events) == 1
        assert engine.is_idle() and engine.blocks.num_used() == 0
        assert engine.abort_all("again") == 0
    finally:
        engine.stop()


class RecordingGrammar:
    """A grammar stand-in that allows every token and records what it accepted."""

    def __init__(self):
        self.accepted: list[int] = []
        self.thread: set[str] = set()

    def matcher(self):
        return self

    def mask(self, logits):
        self.thread.add(threading.current_thread().name)
        return logits

    def allows(self, token):
        return True

    def accept(self, token):
        self.accepted.append(token)


def test_a_grammar_advances_on_the_engine_thread_with_every_sampled_token(model):
    grammar = RecordingGrammar()
    request = GenerationRequest(PROMPTS[1], GREEDY, max_tokens=30, ignore_eos=True, constraint=grammar)
    want = _stepped(model, [GenerationRequest(PROMPTS[1], GREEDY, max_tokens=30, ignore_eos=True)])[1][0]
    engine, (state,) = _threaded(model, [request])
    try:
        _wait([state])
        assert grammar.accepted == state.tokens == want.tokens
        assert grammar.thread == {"rfc-engine"} and state.matcher is None
    finally:
        engine.stop()


class RefusingGrammar(RecordingGrammar):
    """A mask that lets everything through and a parser that refuses `refused` (as llguidance's
    mask can allow a token its parser refuses), or every token."""

    def __init__(self, refused: int | None):
        super().__init__()
        self.refused = refused

    def allows(self, token):
        return self.refused is not None and token != self.refused

    def refuse(self, logits, token):
        if self.refused is None:
            raise GrammarError("guided_regex", "'guided_regex' asks for text this model's vocabulary cannot write")
        out = logits.copy()
        out[token] = -np.inf
        return out


class BannedGrammar(RecordingGrammar):
    def __init__(self, banned: int):
        super().__init__()
        self.banned = banned

    def mask(self, logits):
        out = logits.copy()
        out[self.banned] = -np.inf
        return out


def test_a_token_the_grammar_refuses_after_its_mask_is_drawn_again(model):
    """The engine checks each drawn token with the grammar: one the mask let through and the
    parser refuses is masked and another drawn, as if the mask had left it out; none left
    fails the request with the grammar's field, which the servers answer with a 400."""
    free = _stepped(model, [GenerationRequest(PROMPTS[1], GREEDY, max_tokens=12, ignore_eos=True)])[1][0]
    first = free.tokens[0]
    want = _stepped(
        model, [GenerationRequest(PROMPTS[1], GREEDY, max_tokens=12, ignore_eos=True, constraint=BannedGrammar(first))]
    )[1][0]
    grammar = RefusingGrammar(first)
    _, (got,) = _stepped(
        model, [GenerationRequest(PROMPTS[1], GREEDY, max_tokens=12, ignore_eos=True, constraint=grammar)]
    )
    assert got.tokens == want.tokens == grammar.accepted and first not in got.tokens
    assert got.tokens != free.tokens and got.sampler.drawn == 12  # a refused draw is not counted
    _, (failed,) = _stepped(
        model, [GenerationRequest(PROMPTS[1], GREEDY, max_tokens=12, constraint=RefusingGrammar(None))]
    )
    assert failed.finish_reason == FAILED and failed.tokens == []
    assert failed.error_field == "guided_regex" and failed.error.startswith("'guided_regex' asks")


def test_logprobs_and_events_are_those_of_a_stepped_run(model):
    requests = [GenerationRequest(p, GREEDY, max_tokens=12, logprobs=2) for p in PROMPTS]
    _, want = _stepped(model, requests)
    want_events = [_drain_events(s) for s in want]
    engine, got = _threaded(model, requests)
    try:
        _wait(got)
        for g, events in zip(got, want_events):
            assert _drain_events(g) == [replace(e, request_id=g.request_id) for e in events]
            assert all(e.logprob is not None and len(e.top_logprobs) == 2 for e in events)
    finally:
        engine.stop()


def test_a_failing_output_stage_fails_its_request_alone(model):
    requests = [GenerationRequest(p, GREEDY, max_tokens=10, ignore_eos=True) for p in PROMPTS[:2]]

    def break_first(engine, states):
        def broken(token):
            raise RuntimeError("detokenizer bug")

        states[0].detok.push = broken

    engine, states = _threaded(model, requests, before_start=break_first)
    try:
        _wait(states)
        assert states[0].finish_reason == "failed" and "detokenizer bug" in states[0].error
        assert states[1].finish_reason == "length" and len(states[1].tokens) == 10
        assert engine.blocks.num_used() == 0 and engine.is_running
    finally:
        engine.stop()
