"""Quantized KV caches (--cache-type-k/-v q8_0|q4_0) on the reference and cpu devices: logits
within llama.cpp's own deviation when it quantizes its cache (tests/bounds.py kv_cache_bounds),
the cpu step program's attention reading the quantized rows as the reference does (float noise
apart: kv_write rounds bit for bit alike), and speculative decoding and the prefix cache on a
quantized cache giving the tokens of a plain run."""

import shutil

import numpy as np
import pytest

from rfc.artifacts.kv_cache_type import CacheType, KvCacheTypes
from rfc.runtime.engine.batch import build_batch
from rfc.runtime.engine.engine import GenerationRequest
from rfc.runtime.engine.scheduler import ScheduledChunk
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.bounds import KV_CPU_SHARE, kv_cache_bounds
from tests.conftest import FIXTURES
from tests.unit.test_engine_spec import GREEDY, NGRAM, PLAIN, _prompts, _run, _same

pytestmark = [
    pytest.mark.shared,
    pytest.mark.toolchain,
    pytest.mark.skipif(shutil.which("cc") is None, reason="the cpu device needs a C compiler ('cc' not found)"),
]

Q8, Q4, F16 = CacheType.Q8_0, CacheType.Q4_0, CacheType.F16
PREFILL = 40  # then one token a step: the prefill and the decode paths of the attention both read the cache


def _logits(bundle, device: str, types: KvCacheTypes, tokens: list[int]) -> np.ndarray:
    model = load_model(bundle, LoadOptions(device=device, cache_types=types))
    blocks = model.kv_pool.manager()
    blocks.allocate(0, len(tokens))
    out = [
        model.executor.forward(build_batch([ScheduledChunk(0, 0, tuple(tokens[:PREFILL]), all_logits=True)], blocks))
    ]
    for i in range(PREFILL, len(tokens)):
        out.append(model.executor.forward(build_batch([ScheduledChunk(0, i, (tokens[i],), all_logits=True)], blocks)))
    return np.concatenate(out)


@pytest.mark.parametrize(
    "name,k,v",
    [
        ("tiny-llama-F32", Q8, Q8),
        ("tiny-qwen3-F16", Q8, Q8),
        ("tiny-llama-F32", Q4, Q4),
        ("tiny-qwen3-F16", F16, Q4),
        ("tiny-qwen3-F16", Q4, Q8),
    ],
)
def test_quantized_cache_within_llama_cpp_deviation(name, k, v, bundle_cache):
    """head_dim 32 (tiny-llama) and 64 (tiny-qwen3); mixed K/V types on the cpu against the
    reference. The cpu's K and V differ from the reference's by float noise, which now and then
    flips a value's rounding to the next quantization step: the two agree to a small fraction
    of what quantizing does to the logits (KV_CPU_SHARE of it), not to float noise."""
    golden = np.load(FIXTURES / f"{name}.logits.npz")
    tokens = golden["tokens"].tolist()
    bundle = bundle_cache(FIXTURES / f"{name}.gguf")
    types = KvCacheTypes(k, v)
    ref = _logits(bundle, "ref", types, tokens)
    cpu = _logits(bundle, "cpu", types, tokens)
    if k is v:
        ok, summary = kv_cache_bounds(name, k.value, ref, golden["logits"])
        assert ok, summary
    quantizing = np.abs(ref - _logits(bundle, "ref", KvCacheTypes(), tokens)).mean()
    d = np.abs(cpu - ref).mean()
    assert d <= KV_CPU_SHARE * quantizing, (
        f"cpu vs reference: mean {d:.2e}, quantizing moves the logits by {quantizing:.2e}"
    )


def test_speculation_and_the_prefix_cache_on_a_q8_0_cache(bundle_cache):
    """Greedy with n-gram drafts is the plain run's text (rejected drafts' rows are rewritten
    before anyone reads them), and a prompt served from cached quantized blocks continues as
    from scratch."""
    bundle = bundle_cache(FIXTURES / "tiny-qwen3-F16.gguf")
    model = load_model(bundle, LoadOptions(device="cpu", cache_types=KvCacheTypes(Q8, Q8)))
    requests = [GenerationRequest(p, GREEDY, max_tokens=48, ignore_eos=True) for p in _prompts(model)[:2]]
    _, want = _run(model, requests, PLAIN)
    engine, got = _run(model, requests, NGRAM)
    _same(got, want)
    assert engine.counts()["spec_accepted"] > 0
    longer = list(requests[0].prompt_ids) + got[0].tokens[:40]
    _, (again,) = _run(model, [GenerationRequest(longer, GREEDY, max_tokens=16)], PLAIN)
    fresh = load_model(bundle, LoadOptions(device="cpu", cache_types=KvCacheTypes(Q8, Q8), prefix_caching=False))
    _, (scratch,) = _run(fresh, [GenerationRequest(longer, GREEDY, max_tokens=16)], PLAIN)
    assert again.tokens == scratch.tokens


def test_the_pool_reports_its_types_and_real_bytes(bundle_cache):
    """/health's per-model `kv` block, the pool bytes the budget and /health count, /metrics'
    bytes-per-token gauge: all the bytes the device really holds."""
    from rfc.runtime.server.metrics import PREFIX, ServerMetrics
    from rfc.runtime.server.service_routes import _kv_check

    model = load_model(
        bundle_cache(FIXTURES / "tiny-llama-F32.gguf"),
        LoadOptions(device="ref", kv_blocks=4, cache_types=KvCacheTypes(Q8, Q4)),
    )
    kv = model.bundle.plan.kv
    per_token = kv.n_layers * kv.n_kv_heads * kv.head_dim // 32 * (34 + 18)
    assert _kv_check(model) == {
        "cache_type_k": "q8_0",
        "cache_type_v": "q4_0",
        "bytes_per_token": per_token,
        "pool_bytes": 4 * 16 * per_token,
    }
    assert model.device.k_cache.nbytes + model.device.v_cache.nbytes == 4 * 16 * per_token
    gauges = {f.name: f.samples for f in ServerMetrics(lambda: {"m": {"kv_bytes_per_token": per_token}}).collect()}
    assert [(s.labels, s.value) for s in gauges[PREFIX + "kv_cache_bytes_per_token"]] == [({"model": "m"}, per_token)]
