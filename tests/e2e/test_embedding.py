"""Embeddings (runtime/engine/embedding.py): the final hidden state the executor returns, pooled on
the engine thread; the cpu kernels agree with the numpy reference device, and feeding the
input in chunks changes nothing. On SmolLM2 through `rfc serve`: a long embedding runs in pieces
between generation steps (runtime/engine/jobs.py), so a completion sent meanwhile keeps its pace."""

import random
import shutil
import threading
import time

import numpy as np
import pytest
import requests

from rfc.runtime.engine.embedding import Pooling, model_pooling, pooled_embedding
from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.jobs import JobExpired
from rfc.runtime.server.errors import ApiError
from rfc.runtime.server.jobs import Deadline, run_job
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.engine.prompting import encode_prompt
from tests.conftest import skip_reason, smollm2
from tests.e2e.conftest import ServerProcess, sse_json

TEXT = "Once upon a time, there was a little dragon who liked to fly over the hills."


@pytest.fixture(scope="module")
def engines(demo_bundle):
    started = []
    for device in ("ref", "auto"):
        engine = Engine(load_model(demo_bundle, LoadOptions(device=device)))
        engine.start()
        started.append(engine)
    yield started
    for engine in started:
        engine.stop()


def _embed(engine: Engine, ids: list[int], pooling: Pooling, chunk: int = 512) -> np.ndarray:
    return engine.run_on_engine_thread(lambda: pooled_embedding(engine, ids, pooling, chunk)).result(timeout=60)


@pytest.mark.parametrize("pooling", list(Pooling))
def test_kernels_agree_with_the_reference(engines, pooling):
    ref, dev = engines
    ids = encode_prompt(ref.model, TEXT)
    a, b = _embed(ref, ids, pooling), _embed(dev, ids, pooling)
    assert a.shape == (64,) and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    np.testing.assert_allclose(a, b, atol=2e-4)
    np.testing.assert_allclose(_embed(dev, ids, pooling, chunk=5), b, atol=2e-5)  # chunked like a long prefill


def test_pooling_picks_positions(engines):
    ref, _ = engines
    ids = encode_prompt(ref.model, TEXT)
    # causal attention: the first position's state does not depend on what follows it
    np.testing.assert_allclose(_embed(ref, ids, Pooling.CLS), _embed(ref, ids[:1], Pooling.LAST), atol=1e-6)
    assert not np.allclose(_embed(ref, ids, Pooling.MEAN), _embed(ref, ids, Pooling.LAST), atol=1e-3)
    assert ref.blocks.num_used() == 0  # the jobs' KV pages went back


def test_generation_steps_run_between_the_pieces_of_an_embedding(engines):
    """A job's pieces and generation steps take turns (runtime/engine/jobs.py): a request
    decoding while a 60-piece embedding runs gains tokens during it."""
    engine, _ = engines
    ids = (encode_prompt(engine.model, TEXT) * 20)[:300]
    state = engine.submit(GenerationRequest(prompt_ids=ids[:8], max_tokens=400, ignore_eos=True))
    while not state.tokens:
        time.sleep(0.01)
    seen: list[int] = []

    def job():
        result = yield from pooled_embedding(engine, ids, Pooling.MEAN, 5)
        seen.append(len(state.tokens))
        return result

    def first():
        seen.append(len(state.tokens))
        return job()

    vector = engine.run_on_engine_thread(first).result(timeout=60)
    engine.cancel(state.request_id)
    assert seen[1] - seen[0] >= 50, seen  # a token (at least) per piece; all at once, none
    np.testing.assert_allclose(vector, _embed(engine, ids, Pooling.MEAN), atol=1e-6)


def test_an_embedding_past_its_deadline_stops_and_frees_its_kv(engines):
    engine, _ = engines
    ids = (encode_prompt(engine.model, TEXT) * 20)[:300]
    job = engine.start_job(lambda: pooled_embedding(engine, ids, Pooling.MEAN, 1), deadline=time.monotonic() + 0.2)
    with pytest.raises(JobExpired, match="deadline"):
        job.result(timeout=60)
    assert 0 < job.pieces < len(ids) and engine.blocks.num_used() == 0


def test_a_request_past_its_deadline_is_a_503_that_says_so(engines):
    """It used to be 'the engine stopped or is too busy', whatever had happened."""
    engine, _ = engines
    ids = (encode_prompt(engine.model, TEXT) * 20)[:300]
    deadline = Deadline(0.2, "the embedding of 2 inputs")
    with pytest.raises(ApiError) as refused:
        run_job(engine, lambda: pooled_embedding(engine, ids, Pooling.MEAN, 1), deadline, lambda: "0 of 2 embedded")
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"]
    assert (
        "the embedding of 2 inputs did not finish within the request's deadline of 0.2 s (0 of 2 embedded)"
        in refused.value.message
    )
    deadline_for = time.monotonic() + 30
    while engine.counts()["jobs"] and time.monotonic() < deadline_for:  # it stops at its next piece
        time.sleep(0.01)
    assert engine.counts()["jobs"] == 0 and engine.blocks.num_used() == 0


def test_the_models_own_pooling_type_wins(demo_bundle):
    manifest = {"model": {"architecture": "llama", "gguf_metadata": {"llama.pooling_type": 1}}}
    assert model_pooling(manifest) is Pooling.MEAN
    assert model_pooling({"model": {"architecture": "llama", "gguf_metadata": {}}}) is Pooling.LAST
    assert model_pooling(manifest, Pooling.CLS) is Pooling.CLS


SMOL = smollm2()


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.toolchain
@pytest.mark.skipif(not SMOL.is_file(), reason=skip_reason(SMOL))
@pytest.mark.skipif(
    shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)"
)
def test_a_long_embedding_does_not_stall_a_streamed_completion(bundle_cache, tmp_path):
    """8 inputs of 8,000 token ids (an input once held the engine for the whole of its
    forward pass: 24 to 100 s of SmolLM2 on 2 cores): a streamed 8-token completion sent while
    it runs gets each token within 15 s of the one before, all within 75 s."""
    server = ServerProcess(
        bundle_cache(SMOL), "--shutdown-timeout", "1", env={"GOMP_SPINCOUNT": "20000"}, log_dir=tmp_path
    ).wait_ready(timeout=180)
    try:
        rng = random.Random(7)
        inputs = [[rng.randrange(100, 49000) for _ in range(8000)] for _ in range(8)]
        embedding: dict = {}

        def embed() -> None:
            try:
                embedding["status"] = requests.post(
                    server.url + "/v1/embeddings", json={"input": inputs}, timeout=600
                ).status_code
            except requests.RequestException as e:  # the server stops under it at the end of the test
                embedding["error"] = e

        thread = threading.Thread(target=embed, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while _gauge(requests.get(server.url + "/metrics", timeout=10).text, "rocmforge_engine_jobs") < 1:
            assert time.monotonic() < deadline and thread.is_alive(), f"the embedding never started: {embedding}"
            time.sleep(0.2)
        sent = time.monotonic()
        body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "ignore_eos": True, "stream": True}
        arrivals = []
        with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=120) as r:
            assert r.status_code == 200, r.text
            for event in sse_json(r):
                if event.get("choices"):
                    arrivals.append(time.monotonic())
        gaps = np.diff([sent, *arrivals])
        assert len(arrivals) >= 8, arrivals  # (a token's text may wait for the next one's: UTF-8)
        assert gaps.max() < 15 and arrivals[-1] - sent < 75, f"gaps between tokens {gaps.round(2)} s"
        assert thread.is_alive(), "the embedding finished before the completion: it proved nothing"
    finally:
        server.stop()


def _gauge(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{"))
