"""Prompt lookup: draft tokens copied from the sequence's own history (n-gram matching).

Text that rewrites, edits or quotes its input repeats long runs of it. The last `n` tokens of a
sequence (its key) are looked up among its earlier tokens, prompt included, and the tokens that
followed the latest earlier occurrence are the draft; keys of `max_n` tokens are tried first,
down to `min_n` (llama.cpp's ngram-simple looks up one key length, its ngram-map-k keeps a
map from keys to what followed them; vLLM's n-gram proposer tries a range of lengths, longest
first, as here).

The index is incremental: each n-gram that has a successor is mapped to the start of its
latest occurrence, so a lookup is one dictionary probe per key length and appending a token
costs one insertion per key length, whatever the history's length.

A sequence that copies a text goes on copying the same place: `draft` keeps the alignment of
its last draft (the source's position relative to the history's end) and continues from there
while the last tokens still agree with the source's, and only then looks the key up again. The
latest occurrence of a short key is often another place than the one being copied (a line of
code that recurs, a common phrase), and a draft from there fails at its first token.
"""

from __future__ import annotations

from collections.abc import Sequence

# The tokens before the aligned source position that must equal the history's last ones for a
# draft to continue the copy there.
_ALIGNED_TOKENS = 2


class NgramIndex:
    """The tokens of one sequence and, per key length n in [min_n, max_n], every n-gram that
    has a successor mapped to the start of its latest occurrence."""

    def __init__(self, min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram key lengths must satisfy 1 <= min_n <= max_n, got {min_n} and {max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self.tokens: list[int] = []
        self._latest: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}
        self._offset: int | None = None  # the last draft's alignment: history end - its source's start

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Appends `tokens` to the history."""
        history = self.tokens
        for token in tokens:
            end = len(history)
            # every n-gram ending at the current last token now has a successor: `token`
            for n, latest in self._latest.items():
                if end >= n:
                    latest[tuple(history[end - n : end])] = end - n
            history.append(int(token))

    def propose(self, max_tokens: int) -> list[int]:
        """Up to `max_tokens` tokens that followed the latest earlier occurrence of the
        history's last n tokens, for the longest n that occurred before; [] when none did."""
        source = self._lookup() if max_tokens >= 1 else None
        return [] if source is None else self.tokens[source : source + max_tokens]

    def draft(self, max_tokens: int) -> list[int]:
        """Up to `max_tokens` draft tokens: the continuation of the text the last draft copied,
        while the history's last tokens still agree with it there, else `propose`'s (whose
        alignment the next draft then keeps)."""
        history = self.tokens
        end = len(history)
        if max_tokens < 1:
            return []
        if self._offset is not None:
            at = end - self._offset
            if _ALIGNED_TOKENS <= at < end and history[at - _ALIGNED_TOKENS : at] == history[end - _ALIGNED_TOKENS :]:
                return history[at : at + max_tokens]
        source = self._lookup()
        if source is None:
            return []
        self._offset = end - source
        return history[source : source + max_tokens]

    def matched(self, cap: int = 32) -> int:
        """How many tokens before the place the last draft copied equal the history's last
        ones (at most `cap`): how much of the text the draft continues is already a copy
        (runtime/engine/speculative.py turns it into the draft's chances)."""
        if self._offset is None:
            return 0
        history = self.tokens
        end = len(history)
        at = end - self._offset
        k = 0
        while k < cap and k < at and history[at - 1 - k] == history[end - 1 - k]:
            k += 1
        return k

    def _lookup(self) -> int | None:
        """Where the tokens that followed the latest earlier occurrence of the longest key
        start; None when no key occurred before."""
        history = self.tokens
        end = len(history)
        for n in range(self.max_n, self.min_n - 1, -1):
            if end <= n:
                continue
            start = self._latest[n].get(tuple(history[end - n :]))
            if start is not None:
                return start + n
        return None
