"""Speculative decoding: a decoding sequence's step carries draft tokens, and the target model
verifies them all in that one multi-token step.

A draft comes from the sequence's own history (`SpecType.NGRAM`, runtime/engine/speculative_ngram.py) or from
a small draft model with the same vocabulary (`SpecType.DRAFT`, runtime/engine/speculative_draft.py). The
step's chunk is the sequence's last token followed by the k drafts, every one with a logit
row; the engine samples row i as it would sample that position without speculation (the same
sampler, penalties, grammar mask and random stream) and keeps going while the token it drew
equals draft i (`accept`). Row i is the target's distribution after draft i-1 only if every
draft before it was accepted, which is why the walk stops at the first mismatch: the token
drawn there is the sequence's next token, and the KV of the drafts after it is dropped.

Drawing t ~ p and accepting a draft d when t == d is the standard rejection-sampling scheme for
a draft that is a point mass on d (an n-gram's, or a draft model's greedy choice): d is
accepted with probability p(d), and on a rejection t is distributed as p without d,
renormalized: max(0, p - q) for q = 1 at d. Every emitted token is a draw from the target's
own distribution, so the output has exactly the target's distribution at any temperature and
is the same token for token when greedy (given the same logits: see `SpecConfig.tie_margin`).

Which sequences draft, and how many tokens, is a throughput decision (`DraftPlanner`): what a
step of T tokens costs is measured from the engine's own decode steps (`StepCost`), and a
draft token that is accepted with probability q is worth adding while it raises the step's
tokens per second. On a device that is memory-bound for small batches extra tokens are nearly
free and drafts fill the batch up to `step_tokens`; on the cpu one more token costs up to a
fifth of a one-token step; in a large batch only near-certain drafts pay. q comes from each
sequence's own history of accepted drafts (`SeqSpec.chances`): for an n-gram draft, of drafts
backed by a match as long as this one's (a token deep in a verbatim copy is nearly always
right, a token found by one recent token seldom), for a draft model's, of all its drafts.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from rfc.runtime.engine.speculative_ngram import NgramIndex

if TYPE_CHECKING:
    from rfc.runtime.engine.batch import ScheduledChunk
    from rfc.runtime.engine.requests import RequestState
    from rfc.runtime.engine.speculative_draft import DraftModel

# The most draft tokens a sequence may carry in one step (the flag's and a request's bound).
MAX_DRAFT_TOKENS = 64


class SpecType(StrEnum):
    NONE = "none"  # no speculation
    NGRAM = "ngram"  # prompt lookup: drafts copied from the sequence's own tokens
    DRAFT = "draft"  # a draft model's greedy tokens


class SpecError(ValueError):
    """A speculative-decoding setting (named by `field`) cannot be honoured."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class SpecConfig:
    """How an engine speculates (`rfc serve --spec-type ...`); a request may choose otherwise
    (`SpecRequest`)."""

    type: SpecType = SpecType.NONE  # what a request that does not choose gets
    n_max: int = 16  # draft tokens per sequence and step at most (--spec-draft-n-max)
    # n-gram key lengths tried, longest first; down to one token: a short key drafts where a
    # longer one found nothing, and the planner keeps such drafts only while they are accepted
    ngram_min: int = 1
    ngram_max: int = 4
    # A step carrying drafts holds at most this many tokens. 31: the cpu target's matmuls switch
    # to packed 8-row GEMM tiles at 32 tokens, where a row's logits are no longer bit for bit
    # those of a one-token step for every format (docs/benchmarks-log.md, speculative decoding).
    step_tokens: int = 31
    # Greedy verify rows whose best two logits are closer than this are not trusted: the walk
    # stops before the row, and the sequence's next step computes it without drafts. Devices
    # whose multi-token rows differ from one-token rows in the last bits (some cpu formats,
    # ~1e-5) then still give the text of a run without speculation. 0 turns it off.
    tie_margin: float = 1e-3
    # b / a of the step-cost model: None fits it to the engine's own decode steps (StepCost);
    # a number fixes it (a device known to be memory-bound for small batches: near 0)
    cost_ratio: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.n_max <= MAX_DRAFT_TOKENS:
            raise ValueError(f"--spec-draft-n-max must be in [0, {MAX_DRAFT_TOKENS}], got {self.n_max}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(
                f"n-gram key lengths must satisfy 1 <= min <= max, got {self.ngram_min} and {self.ngram_max}"
            )
        if self.step_tokens < 2 or self.tie_margin < 0 or (self.cost_ratio is not None and self.cost_ratio < 0):
            raise ValueError(
                "a speculative step must hold at least 2 tokens; the tie margin and cost ratio cannot be negative"
            )


@dataclass(frozen=True)
class SpecRequest:
    """One request's choice (llama-server's `speculative.type` / `speculative.n_max`): None
    takes the engine's `SpecConfig`; NONE opts out."""

    type: SpecType | None = None
    n_max: int | None = None


# Prior of a sequence's acceptance rate (accepted and missed drafts it starts with), and how
# much each draft token seen discounts the ones before (the recent text decides: a sequence
# that copies its input for a while and then writes freely).
_PRIOR_ACCEPTED = 2.0
_PRIOR_MISSED = 1.0
_ACCEPTANCE_DECAY = 0.9

# An n-gram draft's tokens by the length m of the match behind them (NgramIndex.matched: the
# tokens before the copied place that equal the sequence's last ones): a draft continuing a
# long verbatim copy is nearly always right, one found by a single recent token seldom. Over
# tools/spec_prompts' greedy SmolLM2 outputs the first draft token was accepted 17% of the time
# at m = 1, 51% at 2, 68% at 3-4, ~85% at 5-7 and 93-100% from 8 on. A draft token that follows
# i accepted ones is backed by a match of m + i. Each bucket's rate starts at
# m / (m + 1.5) for its smallest m with the weight of _MATCH_PRIOR_WEIGHT trials; each trial in
# a bucket discounts that bucket's earlier ones by _MATCH_DECAY.
_MATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
_MATCH_PRIOR_WEIGHT = 2.0
_MATCH_DECAY = 0.98


def _match_bucket(m: int) -> int:
    return max(bisect.bisect_right(_MATCH_BUCKETS, m) - 1, 0)


@dataclass(eq=False)
class SeqSpec:
    """One request's speculation (the engine thread's): its drafter and its record."""

    type: SpecType
    n_max: int
    index: NgramIndex | None = None  # NGRAM: the sequence's tokens, indexed
    accepted: float = 0.0  # draft tokens accepted, discounted
    missed: float = 0.0  # verify steps that ended at a rejected draft, discounted
    hold: bool = False  # no drafts next step: a near tie is recomputed in a one-token row
    matched: int = 0  # NGRAM: the match length behind the last draft offered
    # NGRAM: per match-length bucket, draft tokens accepted and seen (discounted)
    _hits: list[float] = field(default_factory=lambda: [0.0] * len(_MATCH_BUCKETS))
    _trials: list[float] = field(default_factory=lambda: [0.0] * len(_MATCH_BUCKETS))

    def acceptance(self) -> float:
        """P(a draft token is accepted | the ones before it were): the geometric estimate
        accepted / (accepted + misses), with the prior's weight."""
        return (self.accepted + _PRIOR_ACCEPTED) / (self.accepted + self.missed + _PRIOR_ACCEPTED + _PRIOR_MISSED)

    def chances(self, n: int) -> list[float]:
        """P(draft token i is accepted | the ones before it were), i < n, for the draft just
        offered: by the match behind each token (an n-gram draft) or the geometric estimate."""
        if self.index is None:
            return [self.acceptance()] * n
        out = []
        for i in range(n):
            b = _match_bucket(self.matched + i)
            prior = _MATCH_BUCKETS[b] / (_MATCH_BUCKETS[b] + 1.5)
            out.append((self._hits[b] + _MATCH_PRIOR_WEIGHT * prior) / (self._trials[b] + _MATCH_PRIOR_WEIGHT))
        return out

    def record(self, drafted: int, accepted: int) -> None:
        """A verify step's outcome; drafted == 0: a step that had a draft to offer and did
        not carry it, which lets the record fade towards the prior (a sequence whose drafts
        failed a while ago gets to try again)."""
        trials = accepted + (accepted < drafted)  # each draft token seen is one Bernoulli trial
        fade = _ACCEPTANCE_DECAY ** max(trials, 1)
        self.accepted = self.accepted * fade + accepted
        self.missed = self.missed * fade + (accepted < drafted)
        if self.index is None:
            return
        if drafted == 0:
            b = _match_bucket(self.matched)
            self._hits[b] *= _MATCH_DECAY
            self._trials[b] *= _MATCH_DECAY
        for i in range(trials):
            b = _match_bucket(self.matched + i)
            self._hits[b] = self._hits[b] * _MATCH_DECAY + (i < accepted)
            self._trials[b] = self._trials[b] * _MATCH_DECAY + 1


def start(config: SpecConfig, asked: SpecRequest | None, has_draft_model: bool) -> SeqSpec | None:
    """A request's speculation state, or None when it does not speculate. SpecError when it
    asks for what this engine cannot do."""
    kind = config.type if asked is None or asked.type is None else asked.type
    n_max = config.n_max if asked is None or asked.n_max is None else asked.n_max
    if asked is not None and asked.n_max is not None and not 0 <= asked.n_max <= config.n_max:
        raise SpecError(
            "speculative.n_max", f"speculative.n_max must be in [0, {config.n_max}] (the server's --spec-draft-n-max)"
        )
    if kind is SpecType.DRAFT and not has_draft_model:
        raise SpecError("speculative.type", "speculative.type 'draft' needs a draft model (rfc serve --model-draft)")
    if kind is SpecType.NONE or n_max == 0:
        return None
    index = NgramIndex(config.ngram_min, config.ngram_max) if kind is SpecType.NGRAM else None
    return SeqSpec(kind, n_max, index)


def accept(draft: Sequence[int], sample_row: Callable[[int], int | None], end_ids: Container[int]) -> list[int]:
    """The tokens a verify step emits. `sample_row(i)` samples row i (the target's next token
    after draft[:i]) as a step without speculation would, or returns None when the row cannot
    be trusted (a near tie): the walk ends before it, emitting nothing for it. The walk goes
    on while the token equals the draft and is no end of generation."""
    emitted: list[int] = []
    for i in range(len(draft) + 1):
        token = sample_row(i)
        if token is None:
            break
        emitted.append(token)
        if i == len(draft) or token != draft[i] or token in end_ids:
            break
    return emitted


class StepCost:
    """What a decode step costs by its token count, relative to a one-token step: `curve(n)`
    is c(1) = 1, ..., c(n), non-decreasing. A size the engine ran at least `_MIN_SEEN` times
    costs the fastest of its last `_WINDOW` times, sizes between measured ones are
    interpolated, and past them the line a + b * (T - 1) fitted to every step seen (weighted
    least squares) goes on, or the prior ratio b / a until the sizes seen vary enough to tell
    a slope. On a memory-bound device the first extra tokens are nearly free (the weights are
    read once for all of them) and later ones cost a share of a step each: the measured sizes
    get that bend right, a line only its average.

    The fastest recent time, not a mean: what else runs on the machine (or a cold cache after a
    prefill) only ever slows a step, and a size the planner thinks dear is rarely run again, so
    a mean that once took a slow time kept the planner off that size for the rest of the
    sequence (the first verify steps after a 550-token prefill took 1.6x a one-token step at 3
    tokens, the warm ones 1.3x, and drafts stayed at one token through a verbatim copy)."""

    _MIN_SEEN = 3
    _WINDOW = 8  # recent times kept per size: old ones were taken at shorter contexts

    def __init__(self, prior_ratio: float = 0.2, decay: float = 0.98, fixed: float | None = None) -> None:
        self.prior_ratio = prior_ratio
        self.fixed = fixed
        self._decay = decay
        self._w = self._t = self._tt = self._y = self._ty = 0.0
        self._recent: dict[int, deque[float]] = {}  # tokens -> its last _WINDOW times (seconds)
        self._seen: dict[int, int] = {}

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens < 1 or not math.isfinite(seconds) or seconds <= 0:
            return
        d, x = self._decay, float(tokens - 1)
        self._w = self._w * d + 1
        self._t = self._t * d + x
        self._tt = self._tt * d + x * x
        self._y = self._y * d + seconds
        self._ty = self._ty * d + x * seconds
        self._recent.setdefault(tokens, deque(maxlen=self._WINDOW)).append(seconds)
        self._seen[tokens] = self._seen.get(tokens, 0) + 1

    def _line(self) -> tuple[float, float] | None:
        """(a, b) of the fitted line, or None while it cannot be told."""
        if self._w < 8:
            return None
        mean_t = self._t / self._w
        var_t = self._tt / self._w - mean_t * mean_t
        if var_t < 0.5:  # (nearly) one step size seen: its slope is unknown
            return None
        b = (self._ty / self._w - mean_t * self._y / self._w) / var_t
        a = self._y / self._w - b * mean_t
        return (a, b) if a > 0 else None

    def ratio(self) -> float:
        """b / a: what one more token costs, in one-token steps, on the line."""
        if self.fixed is not None:
            return self.fixed
        line = self._line()
        return self.prior_ratio if line is None else min(max(line[1] / line[0], 0.0), 2.0)

    def curve(self, n: int) -> list[float]:
        """[c(1), ..., c(n)]: the cost of a step of 1..n tokens in one-token steps (index 0 is
        c(1)). Between two measured sizes it is interpolated; past the largest it goes on at
        the line's slope."""
        r = self.ratio()
        if self.fixed is not None:
            return [1 + r * (t - 1) for t in range(1, n + 1)]
        fit = self._line()
        seen = sorted(t for t, k in self._seen.items() if k >= self._MIN_SEEN and t <= n)
        fastest = {t: min(self._recent[t]) for t in seen}
        unit = fastest[1] if 1 in seen else (fit[0] if fit is not None else None)
        if unit is None or not seen:
            return [1 + r * (t - 1) for t in range(1, n + 1)]
        points = {t: fastest[t] / unit for t in seen}
        points.setdefault(1, 1.0)
        sizes = sorted(points)
        slope = fit[1] / unit if fit is not None else r
        out, top, j = [], 0.0, 0
        for t in range(1, n + 1):
            while j + 1 < len(sizes) and sizes[j + 1] <= t:
                j += 1
            low = sizes[j]
            if t == low:
                value = points[low]
            elif j + 1 < len(sizes):
                high = sizes[j + 1]
                value = points[low] + (points[high] - points[low]) * (t - low) / (high - low)
            else:
                value = points[low] + max(slope, 0.0) * (t - low)
            top = max(top, value)
            out.append(top)
        return out


class DraftPlanner:
    """How many draft tokens each decoding sequence of a step gets: the most valuable first
    (a sequence's i-th draft is accepted with probability q_1 ... q_i, q_k its k-th token's
    chance given the ones before it), while each is worth its cost, and the step stays within
    `step_tokens`. A token that makes a step of T tokens one of T+1 raises its expected tokens E
    by its probability p and its cost C by c(T+1) - c(T): it pays while
    p > E * (c(T+1) - c(T)) / c(T) (tokens per unit of time go up)."""

    def __init__(self, cost: StepCost, step_tokens: int) -> None:
        self.cost = cost
        self.step_tokens = step_tokens

    def allocate(self, offers: dict[int, Sequence[float]], tokens: int, rows: int) -> dict[int, int]:
        """`offers`: sequence id -> the chances of its draft tokens available (each given the
        ones before it; SeqSpec.chances); the step has `tokens` tokens and `rows` logit rows
        before drafts. Returns sequence id -> drafts."""
        if tokens >= self.step_tokens:
            return {}
        c = self.cost.curve(self.step_tokens)
        expected, total = float(rows), tokens
        given: dict[int, int] = {}
        heap = [(-q[0], seq_id, 1) for seq_id, q in offers.items() if len(q) and q[0] > 0]
        heapq.heapify(heap)
        while heap and total < self.step_tokens:
            neg_value, seq_id, i = heapq.heappop(heap)
            value = -neg_value
            if value <= expected * (c[total] - c[total - 1]) / c[total - 1]:
                break  # the best left is not worth its cost, and nothing after it is
            given[seq_id] = i
            expected += value
            total += 1
            if i < len(offers[seq_id]):
                heapq.heappush(heap, (-value * offers[seq_id][i], seq_id, i + 1))
        return given


@dataclass(frozen=True)
class DraftWant:
    """A decoding sequence that may carry drafts this step (taken under the engine's lock)."""

    seq_id: int
    spec: SeqSpec
    limit: int  # drafts at most: its n_max, and max_tokens never overshot
    tokens: list[int] | None = None  # DRAFT: the sequence's tokens (a copy, read under the lock)


class Speculator:
    """The engine's speculative decoding (engine thread): which decoding sequences carry
    drafts and how many, the drafts themselves, and the counts /metrics reports."""

    def __init__(self, config: SpecConfig, draft: DraftModel | None = None) -> None:
        self.config = config
        self.draft = draft
        self.planner = DraftPlanner(StepCost(fixed=config.cost_ratio), config.step_tokens)
        self.drafted = 0  # draft tokens verified, since start
        self.accepted = 0  # of those, accepted
        self.verify_steps = 0  # sequence-steps that carried drafts

    def start(self, asked: SpecRequest | None) -> SeqSpec | None:
        return start(self.config, asked, self.draft is not None)

    def wants(self, chunks: list[ScheduledChunk], states: list[RequestState]) -> list[DraftWant]:
        """The step's decoding sequences that speculate (the engine's lock held: their tokens
        are read here, and an n-gram index takes the new ones)."""
        out = []
        for chunk, state in zip(chunks, states):
            spec, seq = state.spec, state.seq
            if spec is None or len(chunk.tokens) != 1 or chunk.start != seq.num_tokens() - 1:
                continue  # no speculation, or not a decode step
            if spec.hold:  # a near tie's position: computed in a one-token row this step
                spec.hold = False
                continue
            limit = min(spec.n_max, seq.max_tokens - len(seq.output_ids) - 1)
            if limit < 1:
                continue
            if spec.index is not None:
                n, p = len(spec.index), len(seq.prompt_ids)
                spec.index.extend(seq.prompt_ids[n:] + seq.output_ids if n < p else seq.output_ids[n - p :])
                out.append(DraftWant(seq.seq_id, spec, limit))
            else:
                out.append(DraftWant(seq.seq_id, spec, limit, seq.all_ids()))
        return out

    def propose(self, wants: list[DraftWant], tokens: int, rows: int, live: set[int]) -> dict[int, list[int]]:
        """The drafts of a step of `tokens` tokens and `rows` logit rows before them (the
        engine's lock released: a draft model runs here). `live`: the sequences running."""
        offers: dict[int, list[float]] = {}
        found: dict[int, list[int]] = {}
        for want in wants:
            if want.spec.index is not None:
                found[want.seq_id] = want.spec.index.draft(want.limit)
                want.spec.matched = want.spec.index.matched()
                offers[want.seq_id] = want.spec.chances(len(found[want.seq_id]))
            else:
                offers[want.seq_id] = want.spec.chances(want.limit)
        given = self.planner.allocate(offers, tokens, rows)
        for want in wants:
            if offers[want.seq_id] and want.seq_id not in given:
                want.spec.record(0, 0)  # offered and not carried: the record fades
        drafts = {seq_id: found[seq_id][:n] for seq_id, n in given.items() if seq_id in found}
        if self.draft is not None:
            self.draft.release(live)
            asked = {w.seq_id: (w.tokens, given[w.seq_id]) for w in wants if w.tokens is not None and w.seq_id in given}
            if asked:
                drafts.update(self.draft.propose(asked))
        return drafts

    def record(self, spec: SeqSpec, drafted: int, accepted: int, tie: bool) -> None:
        """A verify step's outcome for one sequence; `tie`: the walk stopped at a near tie (no
        rejection: that row is recomputed next step)."""
        if tie:
            spec.record(accepted, accepted)  # no draft was rejected: the row after them was not trusted
        else:
            spec.record(drafted, accepted)
        spec.hold = tie
        self.drafted += drafted
        self.accepted += accepted
        self.verify_steps += 1

    def observe_step(self, chunks: list[ScheduledChunk], seconds: float) -> None:
        """A step's time, for the cost model: decode steps only (a prefill's attention is
        another cost than one more decode token's)."""
        if all(len(c.tokens) == 1 + c.num_drafts for c in chunks):
            self.planner.cost.observe(sum(len(c.tokens) for c in chunks), seconds)

    def counts(self) -> dict[str, int]:
        return {"spec_drafted": self.drafted, "spec_accepted": self.accepted, "spec_verify_steps": self.verify_steps}
