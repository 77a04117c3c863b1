"""Stop strings over streamed text.

Works on `str`, so it can never cut a multi-byte character: the detokenizer only hands it
complete characters.
"""

from collections.abc import Sequence

# Per stop string, in characters: a reply holds back up to this much text, and each streamed
# piece costs time in proportion to it (llama-server has no bound; OpenAI takes 4 strings).
MAX_STOP_CHARS = 1024


def stop_problem(stop: Sequence[str]) -> str | None:
    """Why a request's stop strings cannot be taken (None: they can)."""
    long = [s for s in stop if len(s) > MAX_STOP_CHARS]
    if long:
        return f"a stop string of {len(long[0])} characters is longer than {MAX_STOP_CHARS}"
    return None


class StopChecker:
    """Incremental stop-string matching over streamed text. Holds back text that might be the
    start of a stop string, and returns the stop string itself only with `include`.

    Empty stop strings are ignored (they would stop before the first character)."""

    def __init__(self, stop: Sequence[str], include: bool = False):
        self._stops = tuple(s for s in dict.fromkeys(stop) if s)
        self._include = include  # the matched stop string ends the text too (vLLM's include_stop_str_in_output)
        self._fails = [_failure(s) for s in self._stops]  # once per request, not per piece
        self._held = ""
        self.matched: str | None = None  # the stop string that ended the text, once one has

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def push(self, text: str) -> tuple[str, bool]:
        """Add streamed text; return (text safe to emit now, stopped).

        Once stopped, every later push returns ("", True)."""
        if self.stopped:
            return "", True
        buffer = self._held + text
        # Held-back text is the longest tail that starts a stop string, so any match starts
        # inside `buffer` and the earliest start is where the output ends.
        start, matched = _earliest_match(buffer, self._stops)
        if matched is not None:
            self._held = ""
            self.matched = matched
            return buffer[: start + (len(matched) if self._include else 0)], True
        keep = _longest_stop_prefix_tail(buffer, self._stops, self._fails)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """The held-back text, at the end of a stream that did not stop."""
        held, self._held = self._held, ""
        return held


def _earliest_match(text: str, stops: Sequence[str]) -> tuple[int, str | None]:
    best, matched = len(text), None
    for stop in stops:
        i = text.find(stop, 0, best + len(stop) - 1)  # only a match starting before `best`
        if i != -1:
            best, matched = i, stop
    return best, matched


def _longest_stop_prefix_tail(text: str, stops: Sequence[str], fails: Sequence[list[int]] | None = None) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string, in
    time linear in the stops' lengths (the prefix function of each stop, `fails`, computed
    once per request by StopChecker, then the text's tail run through it: a tail that repeats
    a stop's start, "aaaa" against "aaab", would otherwise cost len² per piece)."""
    fails = fails if fails is not None else [_failure(s) for s in stops]
    longest = 0
    for stop, fail in zip(stops, fails):
        if len(stop) - 1 <= longest:
            continue
        tail = text[len(text) - (len(stop) - 1) :] if len(text) >= len(stop) - 1 else text
        longest = max(longest, _overlap(stop, fail, tail))
    return longest


def _failure(stop: str) -> list[int]:
    """Knuth-Morris-Pratt's failure function: fail[i] is the longest proper prefix of
    stop[:i + 1] that is also its suffix."""
    fail = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k
    return fail


def _overlap(stop: str, fail: list[int], tail: str) -> int:
    """The longest proper prefix of `stop` that `tail` (shorter than `stop`) ends with."""
    k = 0
    for ch in tail:
        while k and ch != stop[k]:
            k = fail[k - 1]
        if ch == stop[k]:
            k += 1
    return k
