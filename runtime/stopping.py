"""Stop strings over streamed text.

Works on `str`, so it can never cut a multi-byte character: the detokenizer only hands it
complete characters.
"""

from collections.abc import Sequence


class StopChecker:
    """Incremental stop-string matching over streamed text. Holds back text that might be the
    start of a stop string, never returns the stop string itself.

    Empty stop strings are ignored (they would stop before the first character)."""

    def __init__(self, stop: Sequence[str]):
        self._stops = tuple(s for s in dict.fromkeys(stop) if s)
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
            return buffer[:start], True
        keep = _longest_stop_prefix_tail(buffer, self._stops)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], False

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


def _longest_stop_prefix_tail(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
