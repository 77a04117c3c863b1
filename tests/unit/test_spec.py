"""Speculative decoding's parts alone (runtime/engine/speculative.py, speculative_ngram.py, the
scheduler's and the KV manager's side): the n-gram lookup, the acceptance walk and its statistics, the cost model,
the planner, and that rejected drafts leave no KV behind and never reach the prefix cache."""

import math

import numpy as np
import pytest

from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.prefix_cache import block_keys
from rfc.runtime.sampling.sampler import Sampler, SamplingParams
from rfc.runtime.engine.scheduler import FinishReason, Scheduler, SchedulerConfig, Sequence, SequenceStatus
from rfc.runtime.engine.speculative import (
    DraftPlanner,
    SeqSpec,
    SpecConfig,
    SpecError,
    SpecRequest,
    SpecType,
    StepCost,
    accept,
    start,
)
from rfc.runtime.engine.speculative_ngram import NgramIndex


def chi_square_bound(df: int, z: float = 3.72) -> float:
    """The chi-square quantile with `df` degrees of freedom at the normal quantile z (3.72: a
    one-sided p of 1e-4), by the Wilson-Hilferty approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


# -- the n-gram lookup ---------------------------------------------------------------------------


def brute_force(tokens: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    for n in range(max_n, min_n - 1, -1):
        if len(tokens) <= n:
            continue
        key = tokens[-n:]
        for s in range(len(tokens) - n - 1, -1, -1):
            if tokens[s : s + n] == key:
                return tokens[s + n : s + n + k]
    return []


def test_ngram_drafts_what_followed_the_latest_occurrence_of_the_longest_key():
    index = NgramIndex(1, 3)
    index.extend([5, 6, 7, 8, 1, 6, 7, 9, 2, 6, 7])
    assert index.propose(3) == [9, 2, 6]  # "6 7" last occurred before "9"; "1 6 7"/"2 6 7" ... no 3-gram repeat
    index.extend([9])
    assert index.propose(2) == [2, 6]  # "6 7 9" occurred once before: the 3-gram key wins
    assert index.propose(0) == []


def test_ngram_never_matches_the_key_itself_and_is_empty_without_a_repeat():
    index = NgramIndex(2, 4)
    index.extend([1, 2, 3, 4])
    assert index.propose(5) == []
    index.extend([1])  # "4 1" never occurred before; neither did a 1-gram key (min_n 2)
    assert index.propose(5) == []


@pytest.mark.parametrize("seed", range(5))
def test_ngram_index_built_token_by_token_agrees_with_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 6, 300).tolist()  # a small alphabet: many repeats
    index = NgramIndex(2, 4)
    for i, token in enumerate(tokens):
        index.extend([token])
        k = int(rng.integers(1, 9))
        assert index.propose(k) == brute_force(tokens[: i + 1], 2, 4, k)


def test_a_draft_goes_on_copying_the_place_the_last_one_copied():
    index = NgramIndex(1, 4)
    # "2 3 4 5" occurs twice, followed by 6 and by 8; the sequence copies the first place
    index.extend([1, 2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 8, 0, 1, 2])
    assert index.draft(3) == index.propose(3) == [3, 4, 5]  # "1 2" occurred once: at the start
    index.extend([3, 4, 5])  # accepted
    assert index.propose(2) == [8, 0]  # the latest "2 3 4 5" is the second place
    assert index.draft(2) == [6, 7]  # the copy goes on where its last draft came from
    index.extend([9])  # the text left the copy, and 9 never occurred before: no draft
    assert index.draft(2) == []


def test_matched_counts_the_tokens_before_the_copied_place_that_the_history_ends_with():
    index = NgramIndex(1, 4)
    assert index.matched() == 0  # no draft yet
    index.extend([7, 1, 2, 3, 4, 5, 6, 9, 3, 4])
    assert index.draft(2) == [5, 6]  # "3 4" is copied from the first place
    assert index.matched() == 2  # 2 before "3" and 9 before the second "3": the match is 3 4
    index.extend([5, 6])
    assert index.draft(1) == [9] and index.matched() == 4  # "3 4 5 6" now
    assert index.matched(cap=3) == 3
    index = NgramIndex(1, 4)
    index.extend([1, 2, 3, 1, 2, 3])
    assert index.draft(5) == [1, 2, 3] and index.matched() == 3  # the history's start bounds it


# -- the acceptance walk ---------------------------------------------------------------------------


def test_accept_walks_while_the_rows_draw_the_drafts():
    rows = {0: 10, 1: 11, 2: 99, 3: 13}
    assert accept([10, 11, 12], rows.get, ()) == [10, 11, 99]  # third draft rejected: 99 instead
    assert accept([10, 11], rows.get, ()) == [10, 11, 99]  # all accepted: the row after them too
    assert accept([7], rows.get, ()) == [10]  # the first rejected: the token a plain step draws
    assert accept([10, 11, 12], rows.get, {11}) == [10, 11]  # an end of generation ends it
    assert accept([10, 11, 12], {0: 10, 1: None}.get, ()) == [10]  # a near tie: nothing for that row


def _chain(vocab: int, seed: int) -> np.ndarray:
    """A toy model: logits of the next token given the previous one."""
    return np.random.default_rng(seed).normal(0, 1.5, (vocab, vocab)).astype(np.float32)


def _sequences(logits: np.ndarray, length: int, runs: int, draft, seed: int, params: SamplingParams) -> np.ndarray:
    """`runs` sequences of `length` tokens after token 0, drawn by a Sampler row by row
    (draft None), or in verify steps of the drafts `draft(previous token, k)`."""
    out = np.zeros((runs, length), dtype=np.int64)
    for r in range(runs):
        sampler = Sampler(params, [0], logits.shape[0])
        sampler._rng = np.random.default_rng(seed * 100_003 + r)
        tokens = [0]
        while len(tokens) <= length:
            if draft is None:
                tokens.append(sampler.sample(logits[tokens[-1]]))
                continue
            d = draft(tokens[-1], min(3, length + 1 - len(tokens)))
            context = [tokens[-1], *d]  # row i sees the i-th token of the chunk
            tokens.extend(accept(d, lambda i: sampler.sample(logits[context[i]]), ()))
        out[r] = tokens[1 : length + 1]
    return out


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4, top_p=0.9)],
    ids=["t1", "t0.7-topk-topp"],
)
def test_verify_steps_draw_from_the_target_distribution(params):
    """The rule alone: over a toy Markov model, the tokens at positions 1..4 drawn through
    verify steps (drafts: the most likely next tokens, often accepted, and a wrong guess,
    always rejected) have the distribution of plain sampling, chi-square against the exact
    marginals, computed from the sampler's own filtered distribution."""
    vocab, length, runs = 6, 4, 3000
    logits = _chain(vocab, 1)
    likely = lambda prev, k: [int(np.argmax(logits[prev]))] * k  # noqa: E731
    wrong = lambda prev, k: [int(np.argmin(logits[prev]))] * k  # noqa: E731
    # the exact next-token distribution the sampler draws from, row by row: the softmax at
    # its temperature over the tokens its top_k / top_p filter keeps
    probe = Sampler(params, [0], vocab)
    trans = np.zeros((vocab, vocab))
    for prev in range(vocab):
        ids, _ = probe._candidates(probe.processed_logits(logits[prev]))
        kept = np.arange(vocab) if ids is None else np.sort(ids)
        x = logits[prev][kept].astype(np.float64) / params.temperature
        trans[prev][kept] = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    marginal = np.eye(vocab)[0]
    for pos, (name, draft) in enumerate([("likely", likely), ("wrong", wrong), ("plain", None)]):
        got = _sequences(logits, length, runs, draft, seed=pos, params=params)
        dist = marginal
        for i in range(length):
            dist = dist @ trans
            counts = np.bincount(got[:, i], minlength=vocab)
            live = dist > 0
            assert counts[~live].sum() == 0, f"{name}: a token outside the sampler's set at position {i}"
            expected = dist[live] * runs
            stat = float(((counts[live] - expected) ** 2 / expected).sum())
            assert stat < chi_square_bound(int(live.sum()) - 1), f"{name}, position {i}: chi-square {stat:.1f}"


def test_a_seeded_verify_step_draws_the_tokens_of_plain_sampling():
    """Row by row the walk takes one draw of the request's random stream per emitted token,
    as plain sampling does: with the same seed and logits, the same tokens, drafts or not."""
    logits = _chain(8, 3)
    plain = _sequences(logits, 12, 20, None, seed=5, params=SamplingParams(temperature=1.0))
    drafted = _sequences(
        logits,
        12,
        20,
        lambda prev, k: [int(np.argmax(logits[prev]))] * k,
        seed=5,
        params=SamplingParams(temperature=1.0),
    )
    assert np.array_equal(plain, drafted)


# -- per-request settings ---------------------------------------------------------------------------


def test_a_request_chooses_its_speculation_within_the_servers_bounds():
    config = SpecConfig(type=SpecType.NGRAM, n_max=8)
    assert start(config, None, False).type is SpecType.NGRAM
    assert start(config, SpecRequest(SpecType.NONE), False) is None
    assert start(config, SpecRequest(n_max=0), False) is None
    assert start(config, SpecRequest(n_max=3), False).n_max == 3
    # opting in on a server without a default
    assert start(SpecConfig(), SpecRequest(SpecType.NGRAM), False).n_max == 16
    with pytest.raises(SpecError) as e:
        start(config, SpecRequest(n_max=9), False)
    assert e.value.field == "speculative.n_max"
    with pytest.raises(SpecError) as e:
        start(config, SpecRequest(SpecType.DRAFT), False)
    assert e.value.field == "speculative.type"
    assert start(config, SpecRequest(SpecType.DRAFT), True).type is SpecType.DRAFT


def test_a_sequences_acceptance_follows_its_recent_drafts_and_fades_back_when_idle():
    spec = SeqSpec(SpecType.NGRAM, 8)
    assert spec.acceptance() == 2 / 3  # the prior
    for _ in range(10):
        spec.record(8, 8)
    high = spec.acceptance()
    assert high > 0.85
    spec.record(4, 0)
    assert spec.acceptance() < high
    for _ in range(14):
        spec.record(4, 0)
    low = spec.acceptance()
    assert low < 0.4
    for _ in range(40):
        spec.record(0, 0)  # offered, not carried
    assert low < 0.6 < spec.acceptance() < 2 / 3


def test_an_ngram_drafts_chances_grow_with_the_match_behind_it_and_follow_its_outcomes():
    spec = SeqSpec(SpecType.NGRAM, 16, NgramIndex(1, 4))
    spec.matched = 1
    fresh = spec.chances(4)
    assert fresh[0] == pytest.approx(1 / 2.5)  # the prior m / (m + 1.5)
    assert fresh == sorted(fresh) and fresh[3] == pytest.approx(4 / 5.5)  # token i follows a match of m + i
    spec.matched = 20
    assert spec.chances(1)[0] == pytest.approx(16 / 17.5)  # buckets: 16..23 share one rate
    for _ in range(6):  # drafts after one-token matches fail at once; long copies hold
        spec.matched = 1
        spec.record(3, 0)
        spec.matched = 16
        spec.record(8, 8)
    spec.matched = 1
    assert spec.chances(1)[0] < 0.15
    spec.matched = 16
    assert spec.chances(1)[0] > 0.95
    # a draft model's drafts have no match: every token gets the sequence's geometric rate
    model = SeqSpec(SpecType.DRAFT, 16)
    assert model.chances(3) == [model.acceptance()] * 3


# -- the cost model and the planner ---------------------------------------------------------------


def test_step_cost_keeps_its_prior_until_step_sizes_vary_then_fits_them():
    cost = StepCost(prior_ratio=0.2)
    assert cost.curve(3) == pytest.approx([1, 1.2, 1.4])
    for _ in range(50):
        cost.observe(1, 0.010)
    assert cost.ratio() == 0.2  # one size seen: no slope to tell
    for t in [1, 4, 8, 2, 6] * 40:
        cost.observe(t, 0.010 + 0.0005 * (t - 1))
    assert cost.ratio() == pytest.approx(0.05, rel=0.02)
    # measured sizes are their own means, the others between them or on the line; never decreasing
    assert cost.curve(10) == pytest.approx([1 + 0.05 * t for t in range(10)], rel=0.02)
    for _ in range(20):
        cost.observe(3, 0.009)  # faster than 2 tokens (noise): held at c(2)
    assert cost.curve(3)[2] == cost.curve(3)[1]


def test_step_cost_takes_each_sizes_fastest_recent_time_so_that_a_slow_one_does_not_stick():
    """The first verify steps after a prefill ran cold (3 tokens: 7.7 and 6.9 ms, then 5.8 warm,
    against 4.3 ms for one token); a mean held 3 tokens at 1.6x a one-token step and the
    planner never tried 3 again."""
    cost = StepCost()
    for t, ms in [(1, 6.6), (3, 7.7), (3, 6.9), (1, 4.4), (3, 5.8)] + [(1, 4.3)] * 5 + [(2, 5.0)] * 3:
        cost.observe(t, ms / 1000)
    assert cost.curve(3) == pytest.approx([1, 5.0 / 4.3, 5.8 / 4.3])
    for _ in range(StepCost._WINDOW):
        cost.observe(3, 0.0065)  # the machine got busier: the old fast times age out
    assert cost.curve(3)[2] == pytest.approx(6.5 / 4.3)


def test_step_cost_curve_bends_where_the_device_does():
    """The cpu: a second token nearly free, then a fifth of a step each."""
    cost = StepCost()
    times = {1: 10.0, 2: 10.2, 3: 12.0, 4: 14.0, 8: 22.0}
    for _ in range(10):
        for t, ms in times.items():
            cost.observe(t, ms / 1000)
    assert cost.curve(8) == pytest.approx([1, 1.02, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2])


def test_planner_gives_drafts_while_they_pay_for_their_cost():
    planner = DraftPlanner(StepCost(fixed=0.2), step_tokens=31)
    # alone: q^i against E r / (1 + r (T - 1)); at q = 0.9 seven tokens pay (see runtime/engine/speculative.py)
    assert planner.allocate({1: [0.9] * 16}, 1, 1) == {1: 7}
    assert planner.allocate({1: [0.9] * 3}, 1, 1) == {1: 3}  # no more than offered
    assert planner.allocate({1: [0.45] * 16}, 1, 1) == {1: 1}
    assert planner.allocate({1: [0.15] * 16}, 1, 1) == {}
    # a draft whose later tokens are surer (a growing match) gets more of them than its first
    # token's chance alone would give
    assert planner.allocate({1: [0.45] + [0.97] * 15}, 1, 1) == {1: 11}
    # in a batch of 16 decodes one more token slows 16 sequences: only a near-certain draft pays
    batch = {i: [0.5] * 16 for i in range(16)}
    assert planner.allocate(batch, 16, 16) == {}
    assert planner.allocate({**batch, 99: [0.97] * 16}, 16, 16) == {99: 6}  # while 0.97^i > ~0.83
    # a free token (a memory-bound device) is always worth it, up to the step's token bound
    free = DraftPlanner(StepCost(fixed=1e-12), step_tokens=31)
    given = free.allocate({1: [0.6] * 16, 2: [0.3] * 16}, 2, 2)
    assert given == {1: 16, 2: 13}  # 29 drafts: the step holds 31 tokens
    assert DraftPlanner(StepCost(fixed=0.0001), step_tokens=31).allocate({1: [0.9] * 16}, 31, 1) == {}


def test_config_bounds():
    with pytest.raises(ValueError):
        SpecConfig(n_max=65)
    with pytest.raises(ValueError):
        SpecConfig(ngram_min=3, ngram_max=2)


# -- the scheduler and the KV manager ---------------------------------------------------------------


def test_truncate_frees_the_blocks_past_the_kept_tokens_and_never_keyed_ones():
    blocks = BlockManager(8, 4)
    blocks.allocate(1, 14)  # 4 blocks
    blocks.register(1, list(range(8)))  # the first two are keyed
    blocks.truncate(1, 9)
    assert len(blocks.block_table(1)) == 3 and blocks.num_free() == 5
    blocks.truncate(1, 8)
    assert len(blocks.block_table(1)) == 2
    with pytest.raises(ValueError):
        blocks.truncate(1, 4)  # the second keyed block would go


def _decoding(sched: Scheduler, prompt: list[int], max_tokens: int = 40) -> Sequence:
    seq = Sequence(1, prompt, max_tokens)
    sched.add(seq)
    chunks = sched.schedule()
    assert sched.postprocess(chunks, {1: 100}) == {}
    return seq


def test_a_verify_step_keeps_the_kv_of_accepted_drafts_only():
    blocks = BlockManager(16, 4)
    sched = Scheduler(SchedulerConfig(max_batch=2, max_batch_tokens=64), blocks)
    seq = _decoding(sched, [1, 2, 3, 4, 5, 6])  # 6 prompt tokens, then 100
    (chunk,) = sched.schedule()
    (chunk,) = sched.add_drafts([chunk], {1: [101, 102, 103, 104, 105, 106, 107]})
    assert chunk.tokens == (100, 101, 102, 103, 104, 105, 106, 107) and chunk.num_drafts == 7
    assert chunk.start == 6 and len(blocks.block_table(1)) == 4  # 14 slots
    # rows draw 101 102, then 55 instead of 103
    assert sched.postprocess([chunk], {1: [101, 102, 55]}) == {}
    assert seq.output_ids == [100, 101, 102, 55]
    assert seq.num_computed == 9  # ... 100 101 102 keep their KV; 55 is next to run
    assert len(blocks.block_table(1)) == 3  # the block of drafts 104..107 is freed
    # only whole blocks of kept tokens are keyed: [1 2 3 4], [5 6 100 101]
    assert blocks.num_keyed_tokens(1) == 8
    assert blocks.cache.lookup(block_keys(seq.all_ids(), 4)) == blocks.block_table(1)[:2]
    (chunk,) = sched.schedule()
    assert chunk.start == 9 and chunk.tokens == (55,)


def test_a_near_tie_at_the_first_row_emits_nothing_and_recomputes_the_position():
    blocks = BlockManager(16, 4)
    sched = Scheduler(SchedulerConfig(max_batch=2, max_batch_tokens=64), blocks)
    seq = _decoding(sched, [1, 2, 3])
    (chunk,) = sched.add_drafts(sched.schedule(), {1: [7, 8]})
    assert sched.postprocess([chunk], {1: []}) == {}
    assert seq.output_ids == [100] and seq.num_computed == 3 and len(blocks.block_table(1)) == 1
    (chunk,) = sched.schedule()
    assert chunk.start == 3 and chunk.tokens == (100,)


def test_drafts_stop_short_of_max_tokens_the_budget_and_the_pool():
    blocks = BlockManager(4, 4)
    sched = Scheduler(SchedulerConfig(max_batch=1, max_batch_tokens=16), blocks)
    seq = _decoding(sched, [1, 2, 3], max_tokens=5)
    (chunk,) = sched.add_drafts(sched.schedule(), {1: [7] * 20})
    assert chunk.num_drafts == 3  # 1 token out, 5 at most: 100 + 3 drafts + the row after them
    ended = sched.postprocess([chunk], {1: [7, 7, 7, 9]})
    assert ended == {1: FinishReason.LENGTH} and seq.output_ids == [100, 7, 7, 7, 9]
    assert seq.status is SequenceStatus.FINISHED and blocks.num_free() == 4

    blocks = BlockManager(3, 4)
    sched = Scheduler(SchedulerConfig(max_batch=1, max_batch_tokens=16), blocks)
    blocks.allocate(99, 4)  # someone else's block
    _decoding(sched, [1, 2, 3], max_tokens=9)
    (chunk,) = sched.add_drafts(sched.schedule(), {1: [7] * 20})
    assert chunk.num_drafts == 4  # the 8 slots left, 4 taken by the sequence before
    sched = Scheduler(SchedulerConfig(max_batch=1, max_batch_tokens=3), BlockManager(8, 4))
    _decoding(sched, [1, 2, 3], max_tokens=20)
    (chunk,) = sched.add_drafts(sched.schedule(), {1: [7] * 20})
    assert chunk.num_drafts == 2  # max_batch_tokens


def test_an_end_of_generation_among_the_drafts_ends_the_sequence_there():
    blocks = BlockManager(16, 4)
    sched = Scheduler(SchedulerConfig(max_batch=2, max_batch_tokens=64), blocks)
    seq = Sequence(1, [1, 2, 3], 40, end_ids=frozenset({2}))
    sched.add(seq)
    sched.postprocess(sched.schedule(), {1: 100})
    (chunk,) = sched.add_drafts(sched.schedule(), {1: [5, 2, 6]})
    assert sched.postprocess([chunk], {1: [5, 2]}) == {1: FinishReason.EOS}
    assert seq.output_ids == [100, 5] and blocks.num_free() == 16
