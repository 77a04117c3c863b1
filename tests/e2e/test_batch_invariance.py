"""Batch invariance on the cpu target (docs/determinism.md): a request's tokens
and logprobs do not depend on which other requests share its steps, on the batch size, on
how its prompt was chunked, or on prefix-cache hits (whole blocks by reference, the partial
last block copied).

The acceptance, verbatim: 50 random requests (mixed lengths, sampling parameters with seeds)
run alone and inside batches of 1-16 with and without prefix hits give identical tokens and
logprobs. Equality is exact (floats compared bit for bit), never a tolerance."""

import queue
import random
import shutil

import pytest

from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.assemble import LoadOptions, load_model
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.artifacts.targets import missing_isa
from rfc.compiler.targets import parse_target
from rfc.runtime.devices.cpu import cpu_flags
from tests.conftest import DEMO_MODEL, FIXTURES, skip_reason, smollm2

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(shutil.which("cc") is None, reason="the cpu device needs a C compiler ('cc' not found)"),
]

N_REQUESTS = 50
SMOLLM2 = smollm2()
# The demo bundle (F32) in CI; SmolLM2-135M Q4_1 (576 wide: the grouped decode dots and the
# packed GEMM run) by hand, ~1 min on two cores.
# A Q4_K_M file on cpu-avx512: its Q4_K and Q6_K matmul weights repacked (Q4_Kx8, Q6_Kx8), one
# kernel for every token count there (on the AVX2 `cpu` target Q4_Kx8's 4-token tile sums unlike
# its single-token dot). With Q6_K in the GGUF layout (the output matrix) this fails.
NO_AVX512 = missing_isa(parse_target("cpu-avx512"), cpu_flags())
MODELS = [
    pytest.param(DEMO_MODEL, "cpu", id="stories260K"),
    pytest.param(
        SMOLLM2,
        "cpu",
        id="smollm2",
        marks=[pytest.mark.slow, pytest.mark.skipif(not SMOLLM2.is_file(), reason=skip_reason(SMOLLM2))],
    ),
    pytest.param(
        FIXTURES / "tiny-llama-Q4_K_M.gguf",
        "cpu-avx512",
        id="tiny-llama-Q4_K_M-cpu-avx512",
        marks=pytest.mark.skipif(bool(NO_AVX512), reason=f"this CPU lacks {', '.join(NO_AVX512)}"),
    ),
]


def random_requests(vocab: int, seed: int = 27) -> list[GenerationRequest]:
    """Mixed lengths (1 to ~150 tokens), a third of them after one of two shared 'system'
    prompts and a few exact repeats (prefix hits to the token), greedy and seeded sampling
    with top-k / top-p / min-p / penalties, top logprobs on every token."""
    rng = random.Random(seed)
    systems = [[1, *(rng.randrange(3, vocab) for _ in range(n))] for n in (37, 70)]
    requests = []
    for i in range(N_REQUESTS):
        if i % 3 == 0:
            prompt = [*rng.choice(systems), *(rng.randrange(3, vocab) for _ in range(rng.randint(0, 20)))]
        elif i % 7 == 1 and requests:
            prompt = list(rng.choice(requests).prompt_ids)  # an exact repeat
        else:
            prompt = [1, *(rng.randrange(3, vocab) for _ in range(rng.choice([0, 1, 5, 15, 16, 17, 40, 150])))]
        params = SamplingParams(
            temperature=rng.choice([0.0, 0.7, 1.0, 1.5]),
            top_k=rng.choice([0, 5, 40]),
            top_p=rng.choice([1.0, 0.9]),
            min_p=rng.choice([0.0, 0.05]),
            repetition_penalty=rng.choice([1.0, 1.1]),
            presence_penalty=rng.choice([0.0, 0.5]),
            seed=rng.randrange(2**31),
        )
        requests.append(GenerationRequest(prompt, params, max_tokens=rng.randint(1, 12), ignore_eos=True, logprobs=2))
    return requests


def outcome(state) -> tuple:
    """(tokens, per token: its logprob and top logprobs), as the API reports them."""
    events = []
    while True:
        try:
            events.append(state.events.get_nowait())
        except queue.Empty:
            break
    assert state.finished and state.error is None, state.error
    return tuple(state.tokens), tuple((e.token, e.logprob, e.top_logprobs) for e in events if e.token is not None)


def run(engine: Engine, requests: list[GenerationRequest], groups: list[int]) -> list[tuple]:
    """Submits the requests in groups of the given sizes, each group run to completion."""
    states, start = [], 0
    for size in groups:
        group = [engine.submit(r) for r in requests[start : start + size]]
        while engine.step():
            pass
        states += group
        start += size
    return [outcome(s) for s in states]


@pytest.mark.parametrize("model_path,target", MODELS)
def test_fifty_requests_alone_and_in_batches_give_identical_tokens_and_logprobs(model_path, target, bundle_cache):
    bundle = bundle_cache(model_path, (target,))
    model = load_model(bundle, LoadOptions(device="cpu", prefix_caching=False))
    requests = random_requests(model.vocab_size)
    alone = Engine(model, SchedulerConfig(max_batch=1, max_batch_tokens=512))
    expected = run(alone, requests, [1] * N_REQUESTS)

    rng = random.Random(1)
    widest, hits = 0, []
    for caching, max_batch, budget in [(True, 16, 512), (True, 16, 48), (False, 7, 64), (True, 4, 16)]:
        model = load_model(bundle, LoadOptions(device="cpu", prefix_caching=caching))
        forward, sizes = model.executor.forward, []

        def counting(batch, forward=forward, sizes=sizes):
            sizes.append(batch.block_tables.shape[0])  # sequences in the step
            return forward(batch)

        model.executor.forward = counting
        engine = Engine(model, SchedulerConfig(max_batch=max_batch, max_batch_tokens=budget))
        groups = []
        while sum(groups) < N_REQUESTS:
            groups.append(min(rng.randint(1, 16), N_REQUESTS - sum(groups)))
        got = run(engine, requests, groups)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert g == e, f"request {i} (groups {groups}, max_batch {max_batch}, budget {budget}, cache {caching})"
        widest = max(widest, *sizes)
        if caching:
            hits.append(engine.blocks.cache.hit_tokens)
    assert widest >= 8  # requests really shared steps
    assert all(hits) and any(h % 16 for h in hits)  # prefix hits, to the token too


# Two kv heads: a sequence decoding alone is 2 attention items, fewer than twice a team of 2.
# gemma2: sliding window and soft-capped scores; gpt-oss: window and sinks.
LONG_MODELS = ["tiny-llama-Q8_0.gguf", "tiny-gemma2-Q8_0.gguf", "tiny-gpt-oss-Q8_0.gguf"]


@pytest.mark.parametrize("name", LONG_MODELS)
def test_a_long_sequences_attention_segments_spread_over_the_team_or_taken_in_turn_agree(name, bundle_cache):
    """Past 256 positions a query's attention is two segments or more, folded in order
    (templates/cpu_attention.c.j2). Decoding alone on 2 threads, the sequence's 2 work items
    become its segments x kv heads, their states folded by whichever thread stores the last;
    beside three others (8 items) one thread takes a block's segments in turn. Tokens and
    logprobs must be identical."""
    bundle = bundle_cache(FIXTURES / name, ("cpu",))
    model = load_model(bundle, LoadOptions(device="cpu", threads=2, prefix_caching=False))
    rng = random.Random(5)

    def request(n: int, seed: int) -> GenerationRequest:
        prompt = [1, *(rng.randrange(3, model.vocab_size) for _ in range(n))]
        return GenerationRequest(
            prompt, SamplingParams(temperature=0.8, seed=seed), max_tokens=48, ignore_eos=True, logprobs=2
        )

    long = request(430, 3)  # decodes at positions 431..478: segments 0 and 1
    others = [request(n, 10 + n) for n in (5, 40, 300)]
    (alone,) = run(Engine(model, SchedulerConfig(max_batch=1, max_batch_tokens=512)), [long], [1])
    together = run(Engine(model, SchedulerConfig(max_batch=4, max_batch_tokens=1024)), [long, *others], [4])
    assert len(alone[0]) == 48 and together[0] == alone


@pytest.mark.parametrize("name", LONG_MODELS)
def test_a_verify_step_past_256_positions_gives_each_tokens_decode_logits(name, bundle_cache):
    """A step of 8, 12 or 16 tokens of one sequence past 256 positions (a speculative verify
    step, the new tokens after a prefix-cache hit) is fewer attention items than twice the team:
    its positions are split into segments rather than its queries into halves, which converted
    the cache once per half (templates/cpu_attention.c.j2). Every row's logits must be the bits
    of that token decoded on its own, whichever way the step is split."""
    import numpy as np

    from rfc.runtime.engine.batch import ScheduledChunk, build_batch

    bundle = bundle_cache(FIXTURES / name, ("cpu",))
    model = load_model(bundle, LoadOptions(device="cpu", threads=2, prefix_caching=False))
    blocks = model.kv_pool.manager()
    rng = random.Random(11)
    prompt = tuple(rng.randrange(3, model.vocab_size) for _ in range(430))
    tail = tuple(rng.randrange(3, model.vocab_size) for _ in range(16))
    forward = model.executor.forward

    def step(seq: int, start: int, tokens: tuple, all_logits: bool = False):
        blocks.allocate(seq, start + len(tokens))
        return forward(build_batch([ScheduledChunk(seq, start, tokens, all_logits=all_logits)], blocks))

    step(0, 0, prompt)
    one = np.stack([step(0, 430 + i, tail[i : i + 1])[-1] for i in range(16)])
    for n in (8, 12, 16):
        seq = n
        step(seq, 0, prompt)
        got = step(seq, 430, tail[:n], all_logits=True)
        np.testing.assert_array_equal(got, one[:n], err_msg=f"{name}: a {n}-token step")
        blocks.free(seq)
    # and right, not only alike: the reference device's float64 logits of the same 16 tokens
    # (a segment left out of the fold moves them by far more than the int8 activations do)
    ref = load_model(bundle, LoadOptions(device="ref", prefix_caching=False))
    ref_blocks = ref.kv_pool.manager()
    ref_blocks.allocate(0, 446)
    want = ref.executor.forward(build_batch([ScheduledChunk(0, 0, prompt + tail, all_logits=True)], ref_blocks))[430:]
    d = np.abs(one - want)
    assert d.max() < 1.2 and d.mean() < 0.2, f"{name}: cpu against the reference, max {d.max():.3f} mean {d.mean():.4f}"


def test_the_fingerprint_names_bundle_and_kernel_variant(bundle_cache):
    """Stable across loads (restarts) of the same bundle on the same machine; another kernel
    variant (here the reference device against the cpu target) gives another."""
    from rfc.runtime.engine.fingerprint import system_fingerprint

    bundle = bundle_cache(DEMO_MODEL)
    cpu = [system_fingerprint(load_model(bundle, LoadOptions(device="cpu", threads=t))) for t in (1, 2)]
    ref = system_fingerprint(load_model(bundle, LoadOptions(device="ref")))
    bundle_id = load_model(bundle, LoadOptions(device="ref")).manifest["bundle_id"]
    assert cpu[0] == cpu[1] and cpu[0] != ref  # threads change nothing (invariant); the variant does
    assert cpu[0].startswith(f"fp_{bundle_id[:12]}_cpu") and ref == f"fp_{bundle_id[:12]}_ref"


def test_every_openai_reply_carries_the_fingerprint(server):
    """completions and chat completions, whole and streamed (every chunk), and the header of
    every generation reply."""
    import json

    import requests

    seen = set()
    for path, body in [
        ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 3}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
    ]:
        r = requests.post(server.url + path, json={**body, "model": "stories260K"}, timeout=60)
        assert r.status_code == 200, r.text
        seen |= {r.json()["system_fingerprint"], r.headers["X-System-Fingerprint"]}
        with requests.post(server.url + path, json={**body, "stream": True}, stream=True, timeout=60) as s:
            chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith(b"data: {")]
        assert chunks and all(c["system_fingerprint"] in seen for c in chunks)
    (fingerprint,) = seen
    assert fingerprint.startswith("fp_")
