"""Decode queued ahead (runtime/engine/ahead.py, StepRunner.launch_sampled): the engine queues a
decode step before it reads the step before, each next token copied on the device from the ids
the step before samples. The real loader, GpuDevice and Engine over the emulated kernels of
stories260K's sm_90 bundle (and qwen35's, for a model with recurrent state), on two streams as a
card may run them: one that runs what was queued only when the host waits
(EmulatedDriver.deferred: a staging buffer rewritten before its copy ran shows), and one that
runs everything as it is queued (ids of a step overwritten by the step queued behind it before
the host read them show). The oracle is the same engine stepping one step at a time on the same
device: the same tokens, bit for bit."""

import pytest

from rfc.runtime.devices import DeviceError
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.runtime.sampling.sampler import Sampler, SamplingParams
from tests.conftest import shared_basetemp
from tests.kernels.gpu_emulator import load_emulated, needs_emulator
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, toolchain_marks  # noqa: F401

TARGET = "sm_90"
pytestmark = [*toolchain_marks(TARGET), needs_emulator]


def _load(bundle_dir, deferred: bool, tmp_path_factory, **options):
    """The bundle loaded by the real loader on the emulated device, its stream deferred or eager."""
    lm = load_emulated(bundle_dir, TARGET, shared_basetemp(tmp_path_factory) / "gpu-emu", deferred, **options)
    assert lm.executor.runs_ahead
    return lm


@pytest.fixture(scope="module", params=["deferred", "eager"])
def model(request, gpu_bundle, tmp_path_factory):  # noqa: F811
    """stories260K loaded on the emulated device, its stream deferred or eager."""
    lm = _load(gpu_bundle("stories260K", TARGET), request.param == "deferred", tmp_path_factory)
    yield lm
    lm.executor.device.close()


# the cases whose hazards the eager stream adds nothing to (its one, the ids overwritten before
# they are read, shows in every queued step of the cases that run on both)
DEFERRED_ONLY = pytest.mark.parametrize("model", ["deferred"], indirect=True)


class Feeds:
    """Counts the steps the engine queued with fed tokens."""

    def __init__(self, executor):
        self.steps, self.tokens = 0, 0
        self._launch = executor.launch_sampled

    def __call__(self, batch, rows, feed=()):
        pending = self._launch(batch, rows, feed)
        if feed:
            self.steps += 1
            self.tokens += len(feed)
        return pending


def _run(lm, requests, ahead: bool, monkeypatch, between=None) -> tuple[list, Engine, Feeds]:
    """Submits `requests`, steps the engine in this thread until it is idle; `between(engine,
    step, states)` may act after each step. Returns the states, the engine and its feeds."""
    engine = Engine(lm, SchedulerConfig(decode_ahead=ahead))
    feeds = Feeds(lm.executor)
    monkeypatch.setattr(lm.executor, "launch_sampled", feeds)
    states = [engine.submit(r) for r in requests]
    step = 0
    while engine.step() or engine._queued is not None:
        step += 1
        if between is not None:
            between(engine, step, states)
        assert step < 500
    monkeypatch.undo()
    assert engine._queued is None and engine.blocks.num_sequences() == 0  # every KV page given back
    return states, engine, feeds


def _request(prompt, n, **params) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    return GenerationRequest(list(prompt), SamplingParams(**params), max_tokens=n, ignore_eos=True)


def test_queued_decode_steps_give_the_tokens_of_steps_one_at_a_time(model, monkeypatch):
    """Four requests of 3 to 17 tokens (greedy; one seeded draw at temperature 0.9, whose
    draws count the token not yet read): each ends at its max_tokens, the step after drops it,
    and the others go on fed from the rows they hold then."""
    requests = [
        _request([1, 400, 29], 17),
        _request([1, 52, 12, 9], 3),
        _request([1, 7], 9, temperature=0.9, seed=11),
        _request([1, 300, 301, 302, 303], 12),
    ]
    want, _, none = _run(model, requests, False, monkeypatch)
    got, engine, feeds = _run(model, requests, True, monkeypatch)
    assert none.steps == 0
    assert [s.tokens for s in got] == [s.tokens for s in want]
    assert [len(s.tokens) for s in got] == [17, 3, 9, 12]
    assert all(s.finish_reason == "length" for s in got)
    # every step after the prompts' was queued ahead, a request's token fed in each step up to
    # its max_tokens: 16 steps, 16 + 2 + 8 + 11 tokens
    assert feeds.steps == 16 and feeds.tokens == 16 + 2 + 8 + 11
    calls = model.executor.device.runner._driver.calls
    assert ("d2d", 4 * 4) in calls  # four fed tokens, one run


@DEFERRED_ONLY
def test_a_stopped_or_cancelled_request_drops_its_queued_row(model, monkeypatch):
    """A stop string (the output stage's) and a cancel end requests while their next step is
    queued: that row is computed and dropped, the text and tokens stop where they did one step
    at a time, and the pages come back."""
    alone = _run(model, [_request([1, 400, 29], 20)], False, monkeypatch)[0][0]
    stop = model.tokenizer.decode(alone.tokens[5:7]).strip()
    assert stop
    requests = [GenerationRequest([1, 400, 29], SamplingParams(temperature=0.0), max_tokens=20, stop=[stop])]
    want = _run(model, requests, False, monkeypatch)[0][0]
    got, _engine, feeds = _run(model, requests, True, monkeypatch)
    assert got[0].finish_reason == want.finish_reason == "stop" and got[0].text == want.text
    assert got[0].tokens == want.tokens and feeds.steps > 0

    def cancel(engine, step, states):
        if step == 6:
            engine.cancel(states[0].request_id)

    got = _run(model, [_request([1, 400, 29], 20)], True, monkeypatch, cancel)[0][0]
    assert got.finish_reason == "cancelled" and got.tokens == alone.tokens[: len(got.tokens)]


def test_penalty_windows_follow_the_fed_token(model, monkeypatch):
    """A penalized request's queued row lists its window as the token not yet read leaves it
    (the oldest pushed out) and the device counts that token in: the same tokens as one step at
    a time: windows of one and two tokens (a penalty under 1 makes the last token a candidate,
    so a window that misses the fed token, or keeps the one it pushes out, changes the draws)
    and the whole context (test_gpu_sample.py holds the merge itself to the host's bits)."""
    requests = [
        _request([1, 400, 29], 14, repetition_penalty=0.7, penalty_last_n=1),
        _request([1, 52, 12, 9], 14, repetition_penalty=0.85, frequency_penalty=-0.5, penalty_last_n=-1),
        _request([1, 400, 29], 14, temperature=1.5, seed=4, repetition_penalty=0.8, penalty_last_n=1),
        _request(
            [1, 400, 29], 14, temperature=1.5, seed=4, repetition_penalty=0.8, frequency_penalty=-0.4, penalty_last_n=2
        ),
    ]
    want, _, _ = _run(model, requests, False, monkeypatch)
    got, _, feeds = _run(model, requests, True, monkeypatch)
    assert [s.tokens for s in got] == [s.tokens for s in want]
    assert feeds.steps == 13 and feeds.tokens == 4 * 13
    # the penalties changed the tokens: the same requests without them go elsewhere
    plain = _run(model, [_request(r.prompt_ids, r.max_tokens) for r in requests[:2]], True, monkeypatch)[0]
    assert [s.tokens for s in plain] != [s.tokens for s in got[:2]], [s.tokens for s in plain]


@DEFERRED_ONLY
def test_a_request_that_cannot_follow_on_the_device_steps_one_at_a_time(model, monkeypatch):
    """logit_bias (the host samples its row) keeps its steps unqueued, and so does a prompt
    waiting: the newcomer is admitted at the next step, and queuing resumes after."""
    biased = [_request([1, 400, 29], 8, logit_bias={5: 2.0})]
    want = _run(model, biased, False, monkeypatch)[0]
    got, _, feeds = _run(model, biased, True, monkeypatch)
    assert feeds.steps == 0 and got[0].tokens == want[0].tokens

    # a window of 300 distinct tokens is over a row's 256 staged pairs: the device refuses to
    # queue it (StepRefused), the step runs after the read, and the engine keeps queuing
    long = [_request([1, *range(100, 400)], 6, frequency_penalty=0.2, penalty_last_n=-1)]
    want = _run(model, long, False, monkeypatch)[0]
    got, engine, feeds = _run(model, long, True, monkeypatch)
    assert feeds.steps == 0 and got[0].tokens == want[0].tokens and engine._running_ahead

    late = _request([1, 52, 12], 6)

    def arrive(engine, step, states):
        if step == 4:
            states.append(engine.submit(late))

    got, _, feeds = _run(model, [_request([1, 400, 29], 14)], True, monkeypatch, arrive)
    assert len(got) == 2 and [len(s.tokens) for s in got] == [14, 6]
    alone = _run(model, [late], False, monkeypatch)[0][0]
    assert got[1].tokens == alone.tokens
    assert feeds.steps > 8


def test_the_runner_refuses_what_it_cannot_queue(model):
    """Straight at the runner: a step queued behind an unread one must take its tokens from
    it, sample every row on the device, and read the steps in order."""
    runner = model.executor.device.runner
    blocks = model.kv_pool.manager()
    blocks.allocate(5, 8)
    sampler = Sampler(SamplingParams(temperature=0.0), [1], model.vocab_size)
    first = runner.launch_sampled(build_batch([ScheduledChunk(5, 0, (1,))], blocks), [(sampler, False)])
    batch = build_batch([ScheduledChunk(5, 1, (0,))], blocks)
    with pytest.raises(DeviceError, match="must take its tokens"):
        runner.launch_sampled(batch, [(sampler, False)])
    with pytest.raises(DeviceError, match="every row on the device"):
        runner.launch_sampled(batch, [None], ((0, 0),))
    with pytest.raises(DeviceError, match="fed from row 1"):
        runner.launch_sampled(batch, [(sampler, False)], ((0, 1),))
    second = runner.launch_sampled(batch, [(sampler, False)], ((0, 0),))
    with pytest.raises(DeviceError, match="order"):
        second.result()
    with pytest.raises(DeviceError, match="not read"):
        runner.run(batch, model.bundle.plan.output_logits)
    token = int(first.result().tokens[0])
    sampler.record(token)
    second.result()
    # the fed step ran on the token the first one sampled: the same as staging it
    again = runner.run_sampled(build_batch([ScheduledChunk(5, 1, (token,))], blocks), [(sampler, False)])
    assert int(second.result().tokens[0]) == int(again.tokens[0])
    blocks.free(5)


@DEFERRED_ONLY
def test_gpu_checks_decode_rate_queues_its_steps_ahead(model, monkeypatch):
    """tools/gpu_check.py's decode rate (the table's rfc column) runs decode as the engine does
    on a device that queues ahead: every timed step but the first fed on the device."""
    import importlib.util
    import sys
    from pathlib import Path

    tools = Path(__file__).parents[2] / "tools"
    monkeypatch.syspath_prepend(str(tools))  # its sibling gpu_experiment
    spec = importlib.util.spec_from_file_location("gpu_check", tools / "gpu_check.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    feeds = Feeds(model.executor)
    monkeypatch.setattr(model.executor, "launch_sampled", feeds)
    try:
        assert tool.decode_batch(model, 3, 6) > 0
    finally:
        sys.modules.pop("gpu_experiment", None)
    assert (feeds.steps, feeds.tokens) == (5, 15)


@DEFERRED_ONLY
def test_rfc_bench_decodes_with_tokens_chosen_on_the_device(model, monkeypatch):
    """`rfc bench`'s decode (runtime/engine/bench.py) on a device that samples: every timed step
    runs forward_sampled (only ids come back, as the engine serves), and the tokens it feeds are
    those the host's argmax of the logits feeds on the same device."""
    import numpy as np

    from rfc.runtime.engine import bench
    from rfc.runtime.engine.executor import Executor

    ex = model.executor
    real_forward, real_sampled = ex.forward, ex.forward_sampled

    def run(on_device: bool) -> tuple[list, int]:
        fed, sampled = [], [0]

        def forward(batch):
            fed.append(batch.tokens.tolist())
            return real_forward(batch)

        def forward_sampled(batch, rows):
            fed.append(batch.tokens.tolist())
            sampled[0] += 1
            return real_sampled(batch, rows)

        with monkeypatch.context() as m:
            m.setattr(ex, "forward", forward)
            m.setattr(ex, "forward_sampled", forward_sampled)
            if not on_device:
                m.setattr(Executor, "samples_on_device", property(lambda self: False))
            assert bench.decode_tps(model, model.kv_pool.manager(), 3, 6, np.random.default_rng(5)) > 0
        return fed, sampled[0]

    device_fed, device_steps = run(True)
    host_fed, host_steps = run(False)
    assert (device_steps, host_steps) == (6, 0)
    assert len(device_fed) == len(host_fed) == 7  # the prompts' step, then 6 decode steps
    assert device_fed == host_fed
    assert len(set(map(tuple, device_fed[1:]))) > 1  # the fed tokens move


def test_a_model_with_recurrent_state_queues_its_decode_steps(gpu_bundle, tmp_path_factory, monkeypatch):  # noqa: F811
    """qwen35 (Gated DeltaNet layers beside attention: a state slot per sequence) queues its
    decode steps as an attention-only model does: the tokens of steps run one at a time. Two
    slots: a request cancelled while its next step is queued has that row computed (its slot
    advanced one token past what it delivered) and dropped; the request that arrives meanwhile
    takes the freed slot and gives the tokens it gives alone, and so does the one that ran beside
    them throughout."""
    lm = _load(gpu_bundle("qwen35-Q8_0", TARGET), True, tmp_path_factory, kv_max_sequences=2)
    assert lm.bundle.plan.state.tensors
    try:
        requests = [
            _request([1, 400, 29], 9),
            _request([1, 52, 12, 9], 4),
            _request([1, 7], 7, temperature=0.9, seed=3),
        ]
        want, _, none = _run(lm, requests, False, monkeypatch)
        got, _, feeds = _run(lm, requests, True, monkeypatch)
        assert none.steps == 0 and feeds.steps > 0
        assert [s.tokens for s in got] == [s.tokens for s in want]

        first, beside, late = _request([1, 400, 29], 12), _request([1, 300, 301], 12), _request([1, 52, 12], 6)
        slots = {}

        def cancel_and_arrive(engine, step, states):
            for s in states:
                if s.seq.seq_id in engine.blocks._state_of:
                    slots.setdefault(s.request_id, engine.blocks.state_slot(s.seq.seq_id))
            if step == 4:
                assert engine._queued is not None  # the first request's next step is queued
                engine.cancel(states[0].request_id)
                states.append(engine.submit(late))

        got, _, feeds = _run(lm, [first, beside], True, monkeypatch, cancel_and_arrive)
        assert got[0].finish_reason == "cancelled" and feeds.steps > 4
        assert slots[got[2].request_id] == slots[got[0].request_id]  # the late request took the cancelled one's slot
        alone = [_run(lm, [r], False, monkeypatch)[0][0] for r in (beside, late)]
        assert [got[1].tokens, got[2].tokens] == [a.tokens for a in alone]
        assert got[0].tokens == _run(lm, [first], False, monkeypatch)[0][0].tokens[: len(got[0].tokens)]
    finally:
        lm.executor.device.close()
