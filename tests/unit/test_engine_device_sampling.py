"""The engine's side of sampling on the device: over a device that advertises
`samples_on_device`, the engine hands each logit row its Sampler, or None for the rows the
host must sample (a grammar, logit_bias, top logprobs); device tokens are recorded in the
request's penalty window like the host's own, so greedy text is the same either way; a row
the device could not draw fails its request alone. The "device" here is the numpy reference
behind a stand-in that samples greedily as the kernel does (the kernel itself is tested
against runtime/sampling/sampler.py in tests/kernels/test_gpu_sample.py)."""

import numpy as np
import pytest

from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.core.device import SampledRows
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.sampling.sampler import SamplingParams
from tests.conftest import DEMO_MODEL

pytestmark = pytest.mark.shared


class GreedyDevice:
    """An executor whose device samples greedy rows itself (argmax of the penalized logits,
    ties to the lowest id: the kernel's rule) and records what it was handed."""

    samples_on_device = True
    host_sampling = None  # an executor's attribute (runtime/engine/executor.py); this one samples on its "device"
    copies_kv = False  # the prefix cache reuses whole blocks only

    def __init__(self, executor, fail_first: bool = False):
        self._executor = executor
        self.rows: list[list] = []
        self._fail_first = fail_first

    def forward(self, batch):
        return self._executor.forward(batch)

    def forward_sampled(self, batch, rows) -> SampledRows:
        self.rows.append(rows)
        logits = self._executor.forward(batch)
        tokens = np.full(len(rows), -1, dtype=np.int32)
        logprobs = np.zeros(len(rows), dtype=np.float32)
        for r, row in enumerate(rows):
            if row is not None:
                sampler, wants = row
                assert sampler.params.is_greedy
                tokens[r] = int(np.argmax(sampler.processed_logits(logits[r])))
                if wants:
                    logprobs[r] = sampler.logprobs(logits[r], int(tokens[r]), 0)[0]
        if self._fail_first:
            tokens[0], self._fail_first = -1, False
        return SampledRows(tokens, logprobs, {r: logits[r] for r, row in enumerate(rows) if row is None})


class AllowAll:
    """A grammar stand-in that allows every token."""

    def matcher(self):
        return self

    def mask(self, logits):
        return logits

    def allows(self, token):
        return True

    def accept(self, token):
        pass


def _run(engine, requests):
    states = [engine.submit(r) for r in requests]
    while engine.step():
        pass
    return states


def _requests():
    greedy = SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.2)
    return [
        GenerationRequest([1, 400, 30], greedy, max_tokens=8),
        GenerationRequest([1, 300], greedy, max_tokens=8, logprobs=0),
        GenerationRequest([1, 200], greedy, max_tokens=8, logprobs=2),
        GenerationRequest([1, 100], SamplingParams(temperature=0, logit_bias={5: 1.0}), max_tokens=8),
        GenerationRequest([1, 50], greedy, max_tokens=8, constraint=AllowAll()),
    ]


def test_device_rows_and_host_rows_give_the_host_text(bundle_cache):
    model = load_model(bundle_cache(DEMO_MODEL), LoadOptions(device="ref"))
    host = _run(Engine(model), _requests())
    device = GreedyDevice(model.executor)
    model.executor = device
    got = _run(Engine(model), _requests())
    assert [s.tokens for s in got] == [s.tokens for s in host]
    assert [s.text for s in got] == [s.text for s in host]
    first = device.rows[0]  # the prefill step: every request's row, in submission order
    assert [row is None for row in first] == [False, False, True, True, True]
    assert first[0][1] is False and first[1][1] is True  # only logprobs=0 asks for the chosen logprob
    events = []
    while not got[1].events.empty():
        events.append(got[1].events.get())
    assert events and all(e.logprob is not None and e.logprob <= 0 for e in events if e.token is not None)


def test_a_row_the_device_cannot_draw_fails_its_request_alone(bundle_cache):
    model = load_model(bundle_cache(DEMO_MODEL), LoadOptions(device="ref"))
    model.executor = GreedyDevice(model.executor, fail_first=True)
    victim, other = _run(Engine(model), _requests()[:2])
    assert victim.finish_reason == "failed" and "no token can be drawn" in victim.error
    assert other.finish_reason == "length" and len(other.tokens) == 8
