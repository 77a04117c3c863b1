"""Embeddings (runtime/engine/embedding.py): the final hidden state the executor returns, pooled on
the engine thread; the cpu kernels agree with the numpy reference device, and feeding the
input in chunks changes nothing."""

import numpy as np
import pytest

from rfc.runtime.engine.embedding import Pooling, model_pooling, pooled_embedding
from rfc.runtime.engine.engine import Engine
from rfc.runtime.model.loader import LoadOptions, load_model
from rfc.runtime.text.prompting import encode_prompt

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


def test_the_models_own_pooling_type_wins(demo_bundle):
    manifest = {"model": {"architecture": "llama", "gguf_metadata": {"llama.pooling_type": 1}}}
    assert model_pooling(manifest) is Pooling.MEAN
    assert model_pooling({"model": {"architecture": "llama", "gguf_metadata": {}}}) is Pooling.LAST
    assert model_pooling(manifest, Pooling.CLS) is Pooling.CLS
