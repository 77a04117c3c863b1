"""The engine survives failures: a failing request ends alone, the others go on."""

import numpy as np
import pytest

from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.sampling.sampler import SamplingParams
from tests.conftest import DEMO_MODEL

pytestmark = pytest.mark.shared


def test_non_finite_logits_fail_one_request_only(bundle_cache):
    model = load_model(bundle_cache(DEMO_MODEL), LoadOptions(device="ref"))
    engine = Engine(model)
    forward = model.executor.forward
    victim = engine.submit(GenerationRequest([1, 400], SamplingParams(temperature=0), max_tokens=5))
    other = engine.submit(GenerationRequest([1, 300], SamplingParams(temperature=0), max_tokens=5))

    def poisoned(batch):
        logits = forward(batch)
        logits[0, :] = np.nan  # the victim's row: its chunk comes first
        return logits

    model.executor.forward = poisoned
    engine.step()
    model.executor.forward = forward
    while engine.step():
        pass
    assert victim.finished and victim.finish_reason == "failed" and victim.error
    assert other.finished and other.finish_reason == "length" and len(other.tokens) == 5
    assert engine.blocks.num_used() == 0
    assert victim.admitted_at is not None and victim.admitted_at >= victim.created_at


def test_observer_sees_a_finished_request_before_its_client_does(bundle_cache):
    """A client that has its last event may read /traces or /metrics at once: the observer
    (which feeds both) must have recorded the request by then."""
    from rfc.runtime.engine.engine import Observer

    seen = []

    class Recording(Observer):
        def on_finish(self, state):
            events = []
            while not state.events.empty():
                events.append(state.events.get_nowait())
            seen.append(any(e.finished for e in events))
            for e in events:
                state.events.put(e)

    model = load_model(bundle_cache(DEMO_MODEL), LoadOptions(device="ref"))
    engine = Engine(model, observer=Recording())
    state = engine.submit(GenerationRequest([1, 400], SamplingParams(temperature=0), max_tokens=3))
    while engine.step():
        pass
    assert state.finished and seen == [False]
