"""Exact selection and drawing over a large vocabulary without full-vocabulary sorts or exps.

What costs at 128k tokens is anything that touches every logit more than once or twice: a
full argpartition (~0.7 ms here), an argsort (~20 ms), a float32 exp (~0.3-0.6 ms: numpy's
exp is not vectorized on every CPU). What is cheap is a comparison pass, a max and a gather.
So every function here first narrows the vocabulary with a bound that provably keeps every
token that matters, then does the exact work on the few that are left:

- the k largest: the k-th largest of per-block maxima is a lower bound of the k-th largest
  value, so `x >= bound` keeps all of them and usually little else;
- masses: tokens more than `radius` below the best weigh at most e^-radius each, so their
  total is bounded by (count * e^-radius) without an exp; a result is accepted only when
  that bound cannot change it, and recomputed over everything when it could;
- drawing: rejection sampling with that bound as the envelope of the tail, so the draw is
  exact while only the window near the peak is exponentiated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_BLOCK = 256  # block of the block-maxima bound
_SMALL = 4096  # below this many candidates the plain full-array code is fastest
_PICK_BLOCK = 1024  # the draw sums the weights in blocks of this size (see pick)
_SAMPLE = 512  # strided sample size of top_p's threshold guess


def top_k_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of x (0 < k < x.size), in no particular order; ties
    at the boundary are broken arbitrarily, as np.argpartition does."""
    n = x.size
    blocks = n // _BLOCK
    if n > _SMALL and k < blocks:
        maxima = x[: blocks * _BLOCK].reshape(blocks, _BLOCK).max(axis=1)
        # k blocks have a maximum >= bound: at least k values pass, and every value of the
        # true top k is >= the k-th largest, which is >= bound.
        bound = np.partition(maxima, blocks - k)[blocks - k]
        if np.isfinite(bound):  # a NaN would compare false everywhere
            cand = np.flatnonzero(x >= bound)
            return cand[np.argpartition(x[cand], cand.size - k)[cand.size - k :]]
    return np.argpartition(x, n - k)[n - k :]


def window(vals: np.ndarray, peak: float, radius: float) -> tuple[np.ndarray | None, np.ndarray, float]:
    """exp(vals - peak) over the tokens at most `radius` below the peak.

    Returns (their indices or None for all, their weights, a bound on the total weight of
    the others: each is below e^-radius)."""
    if vals.size <= _SMALL:
        return None, np.exp(vals - peak), 0.0
    near = vals >= peak - radius
    count = np.count_nonzero(near)
    if count > vals.size // 4:  # selecting a dense mask costs about as much as the exp
        return None, np.exp(vals - peak), 0.0
    idx = np.flatnonzero(near)
    tail = (vals.size - count) * math.exp(-radius)
    return idx, np.exp(vals[idx] - peak), tail


def top_p_head(weights: np.ndarray, target: float) -> tuple[np.ndarray, float]:
    """The smallest most-likely head of `weights` whose sum reaches `target` (the token
    that crosses it included, ties in weight by lowest index), and that head's mass; the
    indices come in no particular order. When the whole array holds less than `target`
    the head is all of it.

    A weighted quickselect instead of a sort (a top_p head can hold a large part of the
    vocabulary): a sorted strided sample guesses a band of weights that holds the cut,
    two masked sums check the guess exactly, and the search goes on inside the band."""
    kept: list[np.ndarray] = []  # indices known to be in the head
    base = 0.0  # their mass
    cand = None  # indices of w in weights; None: w is weights
    w = weights
    while True:
        need = target - base
        if w.size <= _SMALL:
            head, mass = _sorted_head(_ids(cand, w.size), w, need)
            return np.concatenate([*kept, head]), base + mass
        sample = np.sort(w[:: w.size // _SAMPLE])[::-1]
        estimate = np.cumsum(sample, dtype=np.float64) * (w.size / sample.size)
        r = int(np.searchsorted(estimate, need))
        spread = 3 * int(math.sqrt(r + 1)) + 2  # a few standard deviations of a sampled rank
        high = sample[max(r - spread, 0)]
        low = sample[min(r + spread, sample.size - 1)]
        above = w > high
        above_mass = _masked_sum(w, above)
        if above_mass >= need:  # the cut lies above the band
            band = above
        else:
            at_least = w >= low
            at_least_mass = _masked_sum(w, at_least)
            if at_least_mass < need:  # the cut lies below the band: all of it is in the head
                kept.append(_select(cand, np.flatnonzero(at_least)))
                base += at_least_mass
                band = ~at_least
            else:
                kept.append(_select(cand, np.flatnonzero(above)))
                base += above_mass
                band = at_least & ~above
        if np.count_nonzero(band) == w.size:  # equal weights: no guess splits them; sort
            head, mass = _sorted_head(_ids(cand, w.size), w, target - base)
            return np.concatenate([*kept, head]), base + mass
        # numpy selects sparse masks fast and dense ones slowly (~1 ms at 128k here): the
        # band and the head are the sparse parts.
        inside = np.flatnonzero(band)
        cand, w = _select(cand, inside), w[inside]


def _ids(cand: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n) if cand is None else cand


def _select(cand: np.ndarray | None, inside: np.ndarray) -> np.ndarray:
    return inside if cand is None else cand[inside]


def _masked_sum(w: np.ndarray, mask: np.ndarray) -> float:
    """sum(w[mask]) in float64 without selecting: a BLAS dot product is many times faster
    here than a masked, where= or boolean-indexed reduction over a dense mask. float64,
    because a top_p cut deep in the tail depends on sums to better than float32 rounding."""
    return float(np.dot(w.astype(np.float64), mask.astype(np.float64)))


def _sorted_head(cand: np.ndarray, w: np.ndarray, need: float) -> tuple[np.ndarray, float]:
    """top_p_head by a full sort of a few candidates (`cand` ascending: ties by index)."""
    if w.size == 0 or need <= 0:
        return cand[:0], 0.0
    order = np.argsort(-w, kind="stable")
    cumulative = np.cumsum(w[order], dtype=np.float64)
    cut = min(int(np.searchsorted(cumulative, need, side="left")) + 1, w.size)
    return cand[order[:cut]], float(cumulative[cut - 1])


def pick(weights: np.ndarray, fraction: float) -> int:
    """Inverse-CDF draw: the index i with cdf[i-1] <= fraction * total < cdf[i], for
    fraction in [0, 1). numpy's cumsum is slow over a whole vocab, so it runs over the
    block sums and then inside the one block that holds the draw."""
    starts = np.arange(0, weights.size, _PICK_BLOCK)
    block_cdf = np.cumsum(np.add.reduceat(weights, starts, dtype=np.float64))
    u = min(fraction * block_cdf[-1], np.nextafter(block_cdf[-1], 0.0))
    # side="right": the first block, then the first candidate, whose cdf passes u, so a
    # zero-probability candidate is never drawn.
    b = int(np.searchsorted(block_cdf, u, side="right"))
    block = weights[starts[b] : starts[b] + _PICK_BLOCK]
    cdf = (block_cdf[b - 1] if b else 0.0) + np.cumsum(block, dtype=np.float64)
    i = int(np.searchsorted(cdf, u, side="right"))
    if i == block.size:  # u fell in the rounding gap between the two ways of summing
        i = int(np.flatnonzero(block)[-1])
    return int(starts[b]) + i


def draw(
    scaled: np.ndarray, peak: float, radius: float, uniform: Callable[[], float], integer: Callable[[int], int]
) -> int:
    """An index drawn with probability proportional to exp(scaled - peak), exactly.

    Only the window within `radius` of the peak is exponentiated. The tail is proposed with
    the constant envelope e^-radius per token (above each tail weight) and a proposed tail
    token is kept with probability weight / envelope, else the draw starts over: rejection
    sampling, so the result follows the full distribution. A proposal lands in the tail
    with probability at most tail_count * e^-radius / (window mass >= 1)."""
    idx, weights, tail = window(scaled, peak, radius)
    if idx is None:
        return pick(weights, uniform())
    near_mass = float(weights.sum(dtype=np.float64))
    envelope = math.exp(-radius)
    total = near_mass + tail
    near = np.zeros(scaled.size, dtype=bool)
    near[idx] = True
    while True:
        u = uniform() * total
        if u < near_mass:
            return int(idx[pick(weights, u / near_mass)])
        j = integer(scaled.size)
        while near[j]:  # a uniform tail token: proposals inside the window are redrawn
            j = integer(scaled.size)
        if uniform() * envelope < math.exp(float(scaled[j]) - peak):
            return j
