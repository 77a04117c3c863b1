"""runtime/sampling/selection.py and the sampler's windowed paths against brute force over a large
vocabulary: the windows and bounds must never change a result, only its cost."""

import math

import numpy as np
import pytest

from rfc.runtime.sampling.sampler import Sampler, SamplingParams
from rfc.runtime.sampling.selection import draw, top_k_ids, top_p_head

VOCAB = 50_000


def logits(kind: str, seed: int, vocab: int = VOCAB) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "peaked":  # a few strong tokens over a wide tail, as language models give
        x = rng.standard_normal(vocab).astype(np.float32) * 2.5
        x[rng.integers(0, vocab, 8)] += 14
    elif kind == "spiky":  # a head far above the rest: the windows leave most tokens out
        x = rng.standard_normal(vocab).astype(np.float32) * 2.5
        x[rng.integers(0, vocab, 50)] += rng.uniform(10, 30, 50).astype(np.float32)
    elif kind == "flat":
        x = rng.standard_normal(vocab).astype(np.float32) * 0.3
    else:  # "banned": most tokens -inf
        x = np.full(vocab, -np.inf, dtype=np.float32)
        live = rng.integers(0, vocab, 300)
        x[live] = rng.standard_normal(300).astype(np.float32)
    return x


def brute_nucleus(vals: np.ndarray, top_p: float, min_p: float) -> set[int]:
    peak = vals.max()
    w = np.exp(vals.astype(np.float64) - peak).astype(np.float32)
    order = np.lexsort((np.arange(w.size), -w))
    keep = order
    if min_p > 0:
        keep = keep[w[keep] >= min_p]
    if top_p < 1:
        cum = np.cumsum(w[keep], dtype=np.float64)
        cut = min(int(np.searchsorted(cum, top_p * w.sum(dtype=np.float64), side="left")) + 1, keep.size)
        keep = keep[:cut]
    return set(keep.tolist())


@pytest.mark.parametrize("kind", ["peaked", "flat", "banned"])
@pytest.mark.parametrize("k", [1, 40, 1000])
def test_top_k_ids_are_the_k_largest(kind, k):
    x = logits(kind, k)
    got = np.sort(x[top_k_ids(x, k)])
    assert got.size == k
    np.testing.assert_array_equal(got, np.sort(x)[-k:])


@pytest.mark.parametrize("kind", ["peaked", "spiky", "flat", "banned", "ties"])
@pytest.mark.parametrize("seed", range(3))
def test_top_p_head_matches_a_full_sort(kind, seed):
    if kind == "ties":  # few distinct weights: the cut falls inside a run of equal ones
        w = np.random.default_rng(seed).integers(1, 4, VOCAB).astype(np.float32)
    else:
        x = logits(kind, seed)
        w = np.exp(x - x.max()).astype(np.float32)
    for p in (0.1, 0.5, 0.9, 0.999):
        target = p * float(w.sum(dtype=np.float64))
        head, mass = top_p_head(w, target)
        order = np.lexsort((np.arange(w.size), -w))
        cum = np.cumsum(w[order], dtype=np.float64)
        cut = int(np.searchsorted(cum, target, side="left")) + 1
        assert sorted(head.tolist()) == sorted(order[:cut].tolist())
        assert mass == pytest.approx(cum[cut - 1], rel=1e-9)


@pytest.mark.parametrize("kind", ["peaked", "spiky", "flat", "banned"])
@pytest.mark.parametrize(
    "top_p, min_p", [(0.5, 0.0), (0.95, 0.0), (0.999, 0.0), (1.0, 0.05), (0.95, 0.05), (0.9, 1e-12)]
)
def test_nucleus_matches_brute_force(kind, top_p, min_p):
    for seed in range(3):
        x = logits(kind, seed)
        sampler = Sampler(SamplingParams(top_p=top_p, min_p=min_p), [], VOCAB)
        got = sampler._nucleus(x, float(x.max()))
        assert set(got.tolist()) == brute_nucleus(x, top_p, min_p)


def test_windowed_draw_follows_the_whole_distribution():
    # A radius of 2 puts 91% of the mass in the tail: the rejection step must find it, in
    # proportion to each tail token's weight.
    vocab = 20_000
    x = np.full(vocab, -3.0, dtype=np.float32)
    x[10_000:] = -5.0
    x[:100] = 0.0
    rng = np.random.default_rng(5)
    counts = np.bincount([draw(x, 0.0, 2.0, rng.random, rng.integers) for _ in range(6000)], minlength=vocab)
    mass = np.array([100.0, 9900 * math.exp(-3), 10_000 * math.exp(-5)])
    expected = mass / mass.sum() * 6000
    seen = np.array([counts[:100].sum(), counts[100:10_000].sum(), counts[10_000:].sum()])
    chi2 = float(((seen - expected) ** 2 / expected).sum())
    assert chi2 < 13.8, (seen, expected)  # p = 0.001 with 2 degrees of freedom


def test_sampling_at_a_large_vocab_draws_by_probability():
    vocab = 128_256
    x = np.full(vocab, -30.0, dtype=np.float32)
    x[[3, 70_000]] = [0.0, math.log(3.0)]
    sampler = Sampler(SamplingParams(temperature=1.0, seed=3), [], vocab)
    counts = np.bincount([sampler.sample(x) for _ in range(2000)], minlength=vocab)
    assert counts[3] + counts[70_000] == 2000
    assert abs(counts[70_000] / 2000 - 0.75) < 0.04


def test_logprobs_at_a_large_vocab_equal_the_float64_log_softmax():
    x = logits("peaked", 9, 128_256)
    x64 = x.astype(np.float64)
    expected = x64 - (x64.max() + np.log(np.exp(x64 - x64.max()).sum()))
    sampler = Sampler(SamplingParams(), [], x.size)
    lp, top = sampler.logprobs(x, 17, 5)
    assert lp == pytest.approx(expected[17], rel=1e-6, abs=1e-6)
    order = np.lexsort((np.arange(x.size), -x))[:5]
    assert [t for t, _ in top] == order.tolist()
    assert [v for _, v in top] == pytest.approx(expected[order], rel=1e-6, abs=1e-6)
