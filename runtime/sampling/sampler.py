"""Token sampling: logit processing and a seeded draw, one `Sampler` per request.

The chain follows llama.cpp's default order:
logit_bias -> penalties (repetition, presence, frequency) -> greedy when temperature is 0
-> top_k -> top_p -> min_p -> temperature -> softmax -> draw.

Penalties follow llama.cpp too: all three count the tokens in one window of the last
`penalty_last_n` tokens of the context, prompt included (vLLM counts only generated tokens
for presence and frequency; we keep one window so one knob bounds all three).
"""

import math
import secrets
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rfc.runtime.core.sampling_kernels import KernelLogitsError, SamplingKernels
from rfc.runtime.sampling.selection import draw, top_k_ids, top_p_head, window
from rfc.runtime.text.values import is_finite_number, shown

# Windows of selection.window (in logits below the best): a draw exponentiates the tokens
# within _DRAW_RADIUS (temperature-scaled) and reaches the rest by rejection; top_p's total
# mass is bounded to within vocab * e^-_MASS_RADIUS before its cut is trusted.
_DRAW_RADIUS = 16.0
_MASS_RADIUS = 22.0
_LOGPROB_RADIUS = 30.0
_MIN_P_MARGIN = 1e-3  # float32 exp may round up: the window must hold every token min_p keeps
# Temperatures below this sample greedily, as in vLLM: dividing float32 logits by them
# overflows, and the distribution is one-hot long before.
_GREEDY_BELOW = 1e-5


class SamplingError(ValueError):
    """A sampling parameter (named by `field`) or the logits handed to the sampler are invalid."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 (or below 1e-5) -> greedy (argmax, ties -> lowest id)
    top_k: int = 0  # 0 or negative -> disabled
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # logit > 0 -> logit / p, else logit * p
    presence_penalty: float = 0.0  # logit -= presence if the token is in the window
    frequency_penalty: float = 0.0  # logit -= frequency * count in the window
    penalty_last_n: int = 64  # window of recent tokens for penalties; 0 off, -1 whole context
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # -100 effectively bans
    seed: int | None = None  # None -> OS entropy
    min_tokens: int = 0  # the end tokens are banned until this many have been drawn (vLLM's)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_BELOW

    def validate(self, vocab_size: int) -> None:
        """Raise SamplingError naming the first invalid field."""
        # Ranges are bounded where the arithmetic would otherwise overflow float32 logits
        # (a repetition_penalty of 1e-320 divides a logit into infinity).
        _require_number(self, "temperature")
        _require(0 <= self.temperature <= 1e4, "temperature", "must be in [0, 10000]")
        _require_int(self, "top_k")
        _require_number(self, "top_p")
        _require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _require_number(self, "min_p")
        _require(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        _require_number(self, "repetition_penalty")
        _require(1e-3 <= self.repetition_penalty <= 1e3, "repetition_penalty", "must be in [0.001, 1000]")
        _require_number(self, "presence_penalty")
        _require(abs(self.presence_penalty) <= 1e4, "presence_penalty", "must be in [-10000, 10000]")
        _require_number(self, "frequency_penalty")
        _require(abs(self.frequency_penalty) <= 1e4, "frequency_penalty", "must be in [-10000, 10000]")
        _require_int(self, "penalty_last_n")
        _require(self.penalty_last_n >= -1, "penalty_last_n", "must be >= -1")
        for token, bias in self.logit_bias.items():
            _require(
                _is_int(token) and 0 <= token < vocab_size,
                "logit_bias",
                f"token id {shown(token)} is not in [0, {vocab_size})",
            )
            _require(
                _is_finite(bias) and abs(bias) <= 1e4,
                "logit_bias",
                f"bias for token {token} must be in [-10000, 10000]",
            )
        _require(self.seed is None or _is_int(self.seed), "seed", "must be an integer or None")
        _require(_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens", "must be an integer >= 0")


class Sampler:
    """Per-request sampling state: its own numpy Generator (seeded from params.seed, or from
    OS entropy when None) and the token counts of the penalty window.

    With `kernels` (the cpu kernel library's, runtime/core/sampling_kernels.py) the filters, the
    draw and the logprobs run there, a few passes over the row; without, in numpy below (the
    reference the kernels are tested against). Both draw from the same distribution; a seed
    gives the same tokens run after run on one of them, not across the two."""

    def __init__(self, params: SamplingParams, prompt_tokens: Sequence[int], vocab_size: int,
                 kernels: SamplingKernels | None = None, end_ids: Iterable[int] = ()):  # fmt: skip
        """`end_ids`: the tokens that would end the request, banned while fewer than
        params.min_tokens have been drawn."""
        params.validate(vocab_size)
        self.params = params
        self._kernels = kernels
        self._joint: tuple | None = None  # (row, top_n, (lse, top ids)) of the last joint draw
        self.vocab_size = vocab_size
        # default_rng takes non-negative seeds only; any int the client sends maps to one.
        seed = None if params.seed is None else params.seed & (2**64 - 1)
        self._rng = np.random.default_rng(seed)
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64)
        self._bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float32)
        self._end_ids = np.array(sorted(end_ids) if params.min_tokens else [], dtype=np.int64)
        self._penalized = params.penalty_last_n != 0 and (
            params.repetition_penalty != 1 or params.presence_penalty != 0 or params.frequency_penalty != 0
        )
        # the seed of a device-side draw (a function of (seed, step), not of this Generator)
        self.device_seed = secrets.randbits(64) if seed is None else seed
        self.drawn = 0  # tokens drawn so far: the step of the next device draw
        self._window: deque[int] = deque()
        self._counts: dict[int, int] = {}
        if self._penalized:
            recent = prompt_tokens if params.penalty_last_n < 0 else prompt_tokens[-params.penalty_last_n :]
            for token in recent:
                self._record(int(token))

    def sample(self, logits: np.ndarray, top_logprobs: int | None = None) -> int:
        """Draw the next token from float logits [vocab] and record it for the penalties."""
        token = self.draw(logits, top_logprobs)
        self.record(token)
        return token

    def draw(self, logits: np.ndarray, top_logprobs: int | None = None) -> int:
        """Draw the next token from float logits [vocab], recording nothing (a grammar may
        still refuse it: the caller then draws again and records the one it keeps).

        With top_logprobs (the logprobs() call to follow on the same row), the kernels work
        out the row's normalizer and top ids in the same passes when bias and penalties
        leave the row as it is; logprobs(logits, ...) then uses them."""
        x = self._processed(logits, copy=False)
        self._joint = None
        if self.params.temperature < _GREEDY_BELOW:
            token = int(np.argmax(x))  # argmax returns the first maximum: ties -> lowest id
            _require_drawable(x[token])
        elif self._kernels is not None:
            p = self.params
            joint = top_logprobs if x is logits else None  # the logprobs are of the unprocessed row
            try:
                top_k = p.top_k if 0 < p.top_k < x.size else 0  # any int validates; the kernel takes int64
                token, found = self._kernels.sample(
                    x, p.temperature, top_k, p.min_p, p.top_p, self._rng.random(), joint
                )
            except KernelLogitsError:
                raise SamplingError("logits", "a logit is NaN or none is finite: no token can be drawn") from None
            if found is not None:
                self._joint = (logits, top_logprobs, found)
        else:
            token = self._draw(*self._candidates(x))
        return token

    def near_tie(self, logits: np.ndarray, margin: float) -> bool:
        """Whether the best two processed logits are within `margin` of each other (a greedy
        choice that the last bits of the logits could flip). Records nothing."""
        x = self._processed(logits, copy=False)
        best = x.max()
        _require_drawable(float(best))
        return int(np.count_nonzero(x >= best - np.float32(margin))) > 1

    def record(self, token: int) -> None:
        """Counts a token drawn elsewhere (on the device) as sample() counts its own."""
        self.drawn += 1
        if self._penalized:
            self._record(token)

    @property
    def needs_host(self) -> bool:
        """Whether this request's sampling needs the host's logits (logit_bias, min_tokens)."""
        return bool(self._bias_ids.size) or bool(self._end_ids.size)

    def penalty_counts(self) -> dict[int, int] | None:
        """The penalty window's token counts (None: penalties off); not to be modified."""
        return self._counts if self._penalized else None

    def penalty_counts_ahead(self) -> dict[int, int] | None:
        """The window's counts as recording one more token leaves them, that token itself not
        counted: what a step queued before its last token is read stages, the device counting
        the token it feeds (None: penalties off); not to be modified."""
        if not self._penalized:
            return None
        if self.params.penalty_last_n < 0 or len(self._window) < self.params.penalty_last_n:
            return self._counts
        old = self._window[0]  # the token the next one pushes out of the window
        counts = dict(self._counts)
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        return counts

    def processed_logits(self, logits: np.ndarray) -> np.ndarray:
        """A float32 copy of `logits` with logit_bias and the penalties applied."""
        return self._processed(logits, copy=True)

    def _processed(self, logits: np.ndarray, copy: bool) -> np.ndarray:
        """The one per-row logit processing path (bias, penalties; a token mask would go
        here too). Without copy, logits that need no change come back as they are: the
        caller must not write to the result."""
        if logits.shape != (self.vocab_size,):
            raise SamplingError("logits", f"shape {logits.shape} != ({self.vocab_size},)")
        banned = bool(self._end_ids.size) and self.drawn < self.params.min_tokens
        changes = bool(self._bias_ids.size) or (self._penalized and bool(self._counts)) or banned
        x = logits.astype(np.float32, copy=copy or changes)
        if self._bias_ids.size:
            x[self._bias_ids] += self._bias_values  # dict keys: no repeated ids
        if banned:
            x[self._end_ids] = -np.inf
        if self._penalized and self._counts:
            self._apply_penalties(x)
        return x

    def logprobs(self, logits: np.ndarray, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
        """Log-probability of `token` and the `top_n` most likely (id, logprob) pairs, best
        first, ties by lowest id.

        These are the model's raw log-softmax over the logits, before bias, penalties,
        temperature and filtering: what vLLM returns by default, and the same for every
        request whatever its sampling parameters. The kernels' normalizer sums every token;
        numpy's sums those within _LOGPROB_RADIUS of the best (the rest change it by less
        than vocab * e^-30, 1e-8 at 128k: below float32 resolution)."""
        x = logits.astype(np.float32, copy=False)
        joint, self._joint = self._joint, None
        asked = top_n
        top_n = min(max(top_n, 0), x.size)
        best = None
        if joint is not None and joint[0] is logits and joint[1] == asked:
            lse, best = joint[2]
        elif self._kernels is not None:
            lse, best = self._kernels.logprobs(x, top_n)
        else:
            peak = float(x.max())
            _require_drawable(peak)  # before the window: a NaN peak selects nothing
            _, weights, _ = window(x, peak, _LOGPROB_RADIUS)
            lse = peak + math.log(float(weights.sum(dtype=np.float64)))
        _require_drawable(lse)
        if top_n == 0:
            return float(x[token]) - lse, []
        if best is None:
            best = top_k_ids(x, top_n) if top_n < x.size else np.arange(x.size)
        best = best[np.lexsort((best, -x[best]))]
        return float(x[token]) - lse, [(int(i), float(x[i]) - lse) for i in best]

    def _apply_penalties(self, x: np.ndarray) -> None:
        p = self.params
        ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
        counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
        vals = x[ids]
        if p.repetition_penalty != 1:
            vals = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        vals = vals - p.presence_penalty - p.frequency_penalty * counts  # every count is > 0
        x[ids] = vals

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Apply top_k, top_p and min_p: the kept ids (None: all of them) and their logits."""
        p = self.params
        ids = top_k_ids(x, p.top_k) if 0 < p.top_k < x.size else None
        vals = x if ids is None else x[ids]
        if p.min_p == 0 and p.top_p == 1:
            return ids, vals
        peak = float(vals.max())
        _require_drawable(peak)
        kept = self._nucleus(vals, peak)
        return (kept if ids is None else ids[kept]), vals[kept]

    def _nucleus(self, vals: np.ndarray, peak: float) -> np.ndarray:
        """Indices of `vals` that min_p and top_p keep.

        top_p and min_p each keep a head of the candidates sorted by probability, so the
        result is the shorter head whichever runs first. min_p runs first because it is a
        cheap mask that shrinks what top_p has to sort; top_p still uses the mass of all
        candidates, so the result is what llama.cpp's top_p -> min_p order gives.

        Only the window near the peak is exponentiated: min_p never keeps a token below
        peak + log(min_p), and top_p's total is known up to the window's tail bound. When
        that bound could move top_p's cut, the work is redone over every candidate."""
        p = self.params
        radius = _MASS_RADIUS if p.top_p < 1 else 0.0
        if p.min_p > 0:
            radius = max(radius, -math.log(p.min_p) + _MIN_P_MARGIN)
        for r in (radius, math.inf):
            idx, weights, tail = window(vals, peak, r)
            at = np.arange(weights.size) if idx is None else idx
            kept = _at_least(weights, p.min_p) if p.min_p > 0 else None
            if p.top_p == 1:
                return at if kept is None else at[kept]
            mass = float(weights.sum(dtype=np.float64))  # a cut deep in the tail needs float64
            low, high = p.top_p * mass, p.top_p * (mass + tail)
            head_weights = weights if kept is None else weights[kept]
            head, head_mass = top_p_head(head_weights, low)
            # Exact when the tail bound cannot move the cut, or when min_p's set (all inside
            # the window) is shorter than any top_p head could be.
            whole_min_p_set = p.min_p > 0 and head.size == head_weights.size and head_mass < low
            exact = head_mass >= high or whole_min_p_set
            if exact or tail == 0:
                return at[head if kept is None else kept[head]]
        raise AssertionError("unreachable: the full window has no tail")

    def _draw(self, ids: np.ndarray | None, vals: np.ndarray) -> int:
        t = self.params.temperature
        scaled = vals if t == 1 else vals * np.float32(1 / t)
        peak = float(scaled.max())
        _require_drawable(peak)
        i = draw(scaled, peak, _DRAW_RADIUS, self._rng.random, self._rng.integers)
        return i if ids is None else int(ids[i])

    def _record(self, token: int) -> None:
        self._counts[token] = self._counts.get(token, 0) + 1
        if self.params.penalty_last_n < 0:
            return  # whole context: counts only grow, no window to keep
        self._window.append(token)
        if len(self._window) > self.params.penalty_last_n:
            old = self._window.popleft()
            self._counts[old] -= 1
            if self._counts[old] == 0:
                del self._counts[old]


def _at_least(weights: np.ndarray, floor: float) -> np.ndarray | None:
    """Indices of weights >= floor, or None when that is all of them (selecting a dense
    mask is slow; min_p over a flat distribution keeps everything)."""
    mask = weights >= floor
    return None if np.count_nonzero(mask) == weights.size else np.flatnonzero(mask)


def _require_drawable(peak: float) -> None:
    if not math.isfinite(peak):
        raise SamplingError("logits", f"the largest logit is {peak}: no token can be drawn")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return is_finite_number(value)


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise SamplingError(field_name, message)


def _require_number(params: SamplingParams, field_name: str) -> None:
    value = getattr(params, field_name)
    _require(_is_finite(value), field_name, f"must be a finite number, got {shown(value)}")


def _require_int(params: SamplingParams, field_name: str) -> None:
    value = getattr(params, field_name)
    _require(_is_int(value), field_name, f"must be an integer, got {shown(value)}")
