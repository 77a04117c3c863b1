import math
from collections import Counter

import numpy as np
import pytest

from rfc.runtime.sampling.sampler import Sampler, SamplingError, SamplingParams

VOCAB = 1000


def make(prompt=(), vocab=VOCAB, **kwargs) -> Sampler:
    return Sampler(SamplingParams(**kwargs), list(prompt), vocab)


def logits_from_probs(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def draw(sampler: Sampler, logits: np.ndarray, n: int) -> Counter:
    return Counter(sampler.sample(logits) for _ in range(n))


def random_logits(seed: int, vocab: int = VOCAB) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(vocab) * 3).astype(np.float32)


# --- greedy and temperature -------------------------------------------------------------


def test_greedy_takes_argmax_and_breaks_ties_by_lowest_id():
    logits = np.array([0.0, 2.0, 1.0, 2.0], dtype=np.float32)
    sampler = make(vocab=4, temperature=0.0, seed=123)
    assert [sampler.sample(logits) for _ in range(5)] == [1] * 5


def test_tiny_temperature_is_greedy():
    logits = random_logits(1)
    assert make(temperature=1e-40, seed=1).sample(logits) == int(np.argmax(logits))


def test_greedy_is_the_same_for_every_seed():
    logits = random_logits(0)
    assert {make(temperature=0.0, seed=s).sample(logits) for s in range(10)} == {int(np.argmax(logits))}


def test_temperature_one_follows_the_softmax():
    probs = [0.5, 0.3, 0.15, 0.05]
    counts = draw(make(vocab=4, seed=1), logits_from_probs(probs), 4000)
    for token, p in enumerate(probs):
        assert abs(counts[token] / 4000 - p) < 0.03


def test_low_temperature_concentrates_and_high_temperature_flattens():
    logits = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    cold = draw(make(vocab=3, temperature=0.1, seed=2), logits, 1000)
    assert cold[2] > 990
    hot = draw(make(vocab=3, temperature=100.0, seed=3), logits, 3000)
    assert all(abs(hot[t] / 3000 - 1 / 3) < 0.04 for t in range(3))
    warm = draw(make(vocab=3, temperature=0.5, seed=4), logits, 3000)
    expected = np.exp(np.array([0.0, 2.0, 4.0]))
    expected /= expected.sum()
    assert all(abs(warm[t] / 3000 - expected[t]) < 0.03 for t in range(3))


# --- top_k, top_p, min_p ----------------------------------------------------------------


def test_top_k_never_leaves_the_k_best():
    logits = random_logits(5)
    best = set(np.argsort(-logits)[:5].tolist())
    counts = draw(make(top_k=5, temperature=50.0, seed=5), logits, 500)
    assert set(counts) == best  # a high temperature reaches all five, and nothing else


@pytest.mark.parametrize("top_k", [0, -1, VOCAB, VOCAB + 5])
def test_top_k_zero_negative_or_whole_vocab_is_disabled(top_k):
    logits = np.zeros(VOCAB, dtype=np.float32)
    assert len(draw(make(top_k=top_k, seed=6), logits, 3000)) > 900


def test_top_p_keeps_the_smallest_head_reaching_p():
    logits = logits_from_probs([0.05, 0.5, 0.15, 0.3])
    assert set(draw(make(vocab=4, top_p=0.75, seed=7), logits, 1000)) == {1, 3}
    assert set(draw(make(vocab=4, top_p=0.85, seed=7), logits, 1000)) == {1, 2, 3}
    assert set(draw(make(vocab=4, top_p=0.1, seed=7), logits, 100)) == {1}
    assert set(draw(make(vocab=4, top_p=1.0, seed=7), logits, 2000)) == {0, 1, 2, 3}


def test_top_p_renormalizes_after_top_k():
    # After top_k=2: {1: 0.625, 3: 0.375}; top_p=0.6 then keeps token 1 only.
    logits = logits_from_probs([0.05, 0.5, 0.15, 0.3])
    assert set(draw(make(vocab=4, top_k=2, top_p=0.6, seed=8), logits, 500)) == {1}


def test_top_p_over_a_flat_distribution_looks_past_the_first_candidates():
    # 4500 likely tokens hold 96% of the mass: top_p=0.95 needs ~4450 of them and none of
    # the 500 unlikely ones, far more than the first look at the head.
    vocab = 5000
    logits = np.zeros(vocab, dtype=np.float32)
    logits[:4500] = 1.0
    counts = draw(make(vocab=vocab, top_p=0.95, seed=9), logits, 1000)
    assert max(counts) < 4500
    assert len(counts) > 500


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    logits = logits_from_probs([0.5, 0.2, 0.09, 0.11, 0.12])
    counts = draw(make(vocab=5, min_p=0.2, seed=10), logits, 2000)
    assert set(counts) == {0, 1, 3, 4}  # 0.09 < 0.2 * 0.5
    assert set(draw(make(vocab=5, min_p=1.0, seed=10), logits, 100)) == {0}


def test_min_p_and_top_p_together_keep_the_shorter_head():
    logits = logits_from_probs([0.4, 0.3, 0.2, 0.1])
    assert set(draw(make(vocab=4, top_p=0.65, min_p=0.1, seed=11), logits, 1000)) == {0, 1}
    assert set(draw(make(vocab=4, top_p=0.95, min_p=0.6, seed=11), logits, 1000)) == {0, 1}


def test_filters_run_before_temperature():
    # A high temperature flattens only what the filters kept.
    logits = logits_from_probs([0.6, 0.3, 0.05, 0.05])
    counts = draw(make(vocab=4, top_p=0.8, temperature=1000.0, seed=12), logits, 2000)
    assert set(counts) == {0, 1} and abs(counts[0] / 2000 - 0.5) < 0.05


# --- penalties and bias -----------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    sampler = make(prompt=[1, 2, 2], vocab=4, repetition_penalty=2.0)
    logits = np.array([1.0, 3.0, -2.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(sampler.processed_logits(logits), [1.0, 1.5, -4.0, 3.0])


def test_presence_and_frequency_penalties_subtract_by_count():
    sampler = make(prompt=[1, 2, 2, 2], vocab=4, presence_penalty=0.5, frequency_penalty=0.25)
    logits = np.zeros(4, dtype=np.float32)
    np.testing.assert_allclose(sampler.processed_logits(logits), [0.0, -0.75, -1.25, 0.0])


def test_penalties_combine_in_order():
    sampler = make(
        prompt=[0], vocab=2, repetition_penalty=2.0, presence_penalty=1.0, frequency_penalty=1.0, logit_bias={0: 2.0}
    )
    # bias 4 + 2 = 6, repetition 6 / 2 = 3, presence and frequency 3 - 1 - 1 = 1
    np.testing.assert_array_equal(sampler.processed_logits(np.array([4.0, 0.0], np.float32)), [1.0, 0.0])


def test_penalties_count_generated_tokens_within_the_window():
    sampler = make(prompt=[0, 1, 2], vocab=4, temperature=0.0, frequency_penalty=1.0, penalty_last_n=2)
    logits = np.array([0.0, 0.0, 0.0, 5.0], dtype=np.float32)
    np.testing.assert_array_equal(sampler.processed_logits(logits), [0.0, -1.0, -1.0, 5.0])
    assert sampler.sample(logits) == 3  # the window is now [2, 3]
    np.testing.assert_array_equal(sampler.processed_logits(logits), [0.0, 0.0, -1.0, 4.0])


def test_penalty_window_whole_context_and_disabled():
    logits = np.zeros(4, dtype=np.float32)
    whole = make(prompt=[0] * 100 + [1], vocab=4, frequency_penalty=0.5, penalty_last_n=-1)
    np.testing.assert_array_equal(whole.processed_logits(logits), [-50.0, -0.5, 0.0, 0.0])
    off = make(prompt=[0, 1], vocab=4, frequency_penalty=0.5, penalty_last_n=0)
    np.testing.assert_array_equal(off.processed_logits(logits), logits)


def test_repeated_greedy_tokens_are_penalized_away():
    sampler = make(vocab=3, temperature=0.0, presence_penalty=10.0)
    logits = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    assert [sampler.sample(logits) for _ in range(3)] == [0, 1, 2]


def test_logit_bias_bans_and_forces():
    logits = random_logits(13)
    best = int(np.argmax(logits))
    banned = draw(make(temperature=0.7, top_k=3, logit_bias={best: -100.0}, seed=13), logits, 300)
    assert best not in banned
    forced = draw(make(logit_bias={17: 100.0}, seed=14), logits, 300)
    assert set(forced) == {17}


def test_processed_logits_leave_the_input_untouched():
    logits = random_logits(15)
    before = logits.copy()
    make(prompt=[1, 2], logit_bias={3: 5.0}, repetition_penalty=1.3).processed_logits(logits)
    np.testing.assert_array_equal(logits, before)


# --- seeds ------------------------------------------------------------------------------


def _run(seed, steps=50):
    params = dict(
        temperature=0.9,
        top_k=50,
        top_p=0.9,
        min_p=0.02,
        repetition_penalty=1.1,
        presence_penalty=0.2,
        frequency_penalty=0.1,
        seed=seed,
    )
    sampler = make(prompt=[1, 2, 3], **params)
    return [sampler.sample(random_logits(step)) for step in range(steps)]


def test_same_seed_same_tokens():
    assert _run(42) == _run(42)
    assert _run(-7) == _run(-7)  # any integer a client sends is a valid seed


def test_different_seeds_differ():
    assert _run(1) != _run(2)


def test_no_seed_still_samples():
    tokens = _run(None)
    assert len(tokens) == 50 and all(0 <= t < VOCAB for t in tokens)


def test_large_vocab_full_distribution_draws_by_probability():
    vocab = 150_000
    logits = np.full(vocab, -20.0, dtype=np.float32)
    logits[[7, 77_777, 149_999]] = [1.0, 1.0, 1.0 + math.log(2.0)]
    counts = draw(make(vocab=vocab, seed=16), logits, 300)
    others = sum(n for t, n in counts.items() if t not in (7, 77_777, 149_999))
    assert others < 5  # together they hold e^-21 * 150k / 4 ~ 3e-5 of the mass
    assert abs(counts[149_999] / 300 - 0.5) < 0.09
    assert abs(counts[7] / 300 - 0.25) < 0.08 and abs(counts[77_777] / 300 - 0.25) < 0.08


def test_minus_infinity_logits_are_never_drawn():
    logits = np.full(3000, -np.inf, dtype=np.float32)
    logits[[5, 1500]] = [0.0, 1.0]
    assert set(draw(make(vocab=3000, seed=17), logits, 300)) == {5, 1500}
    assert set(draw(make(vocab=3000, top_p=0.5, seed=17), logits, 50)) == {1500}


# --- logprobs ---------------------------------------------------------------------------


def test_logprobs_are_the_raw_log_softmax():
    logits = np.array([1.0, 3.0, 3.0, 0.0], dtype=np.float32)
    sampler = make(vocab=4, temperature=0.3, repetition_penalty=2.0, prompt=[1], logit_bias={0: 5.0})
    expected = logits - np.log(np.exp(logits.astype(np.float64)).sum())
    lp, top = sampler.logprobs(logits, 0, 3)
    assert lp == pytest.approx(expected[0])
    assert [t for t, _ in top] == [1, 2, 0]  # ties by lowest id
    assert [v for _, v in top] == pytest.approx(expected[[1, 2, 0]])
    assert sampler.logprobs(logits, 3, 0) == (pytest.approx(expected[3]), [])


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("top_k", 2.5),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", float("inf")),
        ("presence_penalty", float("nan")),
        ("frequency_penalty", float("-inf")),
        ("penalty_last_n", -2),
        ("logit_bias", {VOCAB: 1.0}),
        ("logit_bias", {-1: 1.0}),
        ("logit_bias", {"5": 1.0}),
        ("logit_bias", {5: float("nan")}),
        ("seed", 1.5),
    ],
)
def test_validation_names_the_bad_field(field, value):
    with pytest.raises(SamplingError) as info:
        SamplingParams(**{field: value}).validate(VOCAB)
    assert info.value.field == field and field in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(SamplingError):
        Sampler(SamplingParams(**{field: value}), [], VOCAB)


def test_defaults_and_disabled_top_k_are_valid():
    SamplingParams().validate(VOCAB)
    SamplingParams(top_k=-1, temperature=0.0, min_p=1.0, top_p=1.0, seed=-3).validate(VOCAB)


def test_bad_logits_are_refused():
    with pytest.raises(SamplingError, match="logits"):
        make().sample(np.zeros(VOCAB + 1, dtype=np.float32))
    with pytest.raises(SamplingError, match="logits"):
        make().sample(np.full(VOCAB, np.nan, dtype=np.float32))
    with pytest.raises(SamplingError, match="logits"):
        make(temperature=0.0).sample(np.full(VOCAB, -np.inf, dtype=np.float32))


def test_min_tokens_bans_the_end_tokens_until_enough_are_drawn():
    logits = random_logits(21)
    end = int(np.argmax(logits))  # greedy would end at once
    sampler = Sampler(SamplingParams(temperature=0, min_tokens=3), [], VOCAB, end_ids={end, 5})
    assert sampler.needs_host
    drawn = [sampler.sample(logits) for _ in range(4)]
    assert end not in drawn[:3] and 5 not in drawn[:3] and drawn[3] == end
    assert not Sampler(SamplingParams(min_tokens=0), [], VOCAB, end_ids={end}).needs_host
    with pytest.raises(SamplingError, match="min_tokens"):
        SamplingParams(min_tokens=-1).validate(VOCAB)
