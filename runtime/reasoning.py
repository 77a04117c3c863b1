"""Splitting a thinking model's output into reasoning and answer.

Models that think (Qwen3, QwQ, DeepSeek-R1 and its distills, SmolLM3, GLM, MiniMax...) write
their reasoning between `<think>` and `</think>`, then the answer. Many templates open the
block themselves at the end of the generation prompt (DeepSeek-R1 writes `<think>\\n`), so the
output starts inside it and only `</think>` appears. The split is made on the text as it
streams: a piece that might be the start of a tag is held back until the next piece decides.
A piece costs time in its own length (plus a tag's): the splitter never searches again text
it has already passed, not even a long run of whitespace before the block.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"


def template_thinks(source: str) -> bool:
    """Whether a chat template writes or strips `<think>` blocks: its model thinks."""
    return OPEN in source or CLOSE in source


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether the rendered prompt leaves the model inside an open `<think>` block."""
    tail = prompt.rstrip()
    return tail.endswith(OPEN)


@dataclass
class Split:
    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """Incremental `<think>` splitter: push text pieces, get the reasoning and content they
    release. Text before a `<think>` that does not start the output is content (the tag only
    counts at the start, leading whitespace aside), so a model that merely mentions the tag
    in its answer is not cut."""

    def __init__(self, starts_inside: bool):
        self._inside = starts_inside
        self._may_open = not starts_inside  # only at the very start of the output
        self._done = False  # past `</think>`: everything else is content
        self._held = ""  # a tail that may be the start of a tag (as long as one, at most)
        self._space: list[str] = []  # the whitespace the output starts with, while a `<think>` may follow it
        self._reasoning_started = False
        self._content_started = False  # newlines right after `</think>` are the template's, not the answer's

    def push(self, text: str) -> Split:
        out = Split()
        buf = self._held + text
        self._held = ""
        while buf:
            if self._done:
                if not self._content_started:
                    buf = buf.lstrip("\n")
                    self._content_started = bool(buf)
                out.content += buf
                break
            if self._may_open:
                stripped = buf.lstrip()
                self._space.append(buf[:len(buf) - len(stripped)])
                if stripped.startswith(OPEN):
                    self._may_open, self._inside, self._space = False, True, []
                    buf = stripped[len(OPEN):]
                    continue
                if OPEN.startswith(stripped):  # maybe the tag, not complete yet
                    self._held = stripped
                    break
                self._may_open = False
                self._done = self._content_started = True  # no reasoning block: all of it is the answer
                buf, self._space = "".join(self._space) + stripped, []
                continue
            # inside the block
            if not self._reasoning_started:
                buf = buf.lstrip("\n")
                self._reasoning_started = bool(buf)
                if not buf:
                    break
            end = buf.find(CLOSE)
            if end >= 0:
                out.reasoning += buf[:end]
                buf = buf[end + len(CLOSE):]
                self._inside, self._done = False, True
                continue
            keep = _partial_suffix(buf, CLOSE)
            out.reasoning += buf[:len(buf) - keep]
            self._held = buf[len(buf) - keep:]
            break
        return out

    def flush(self) -> Split:
        """The held-back text at the end of the output."""
        held = "".join(self._space) + self._held
        self._held, self._space = "", []
        if self._inside:
            return Split(reasoning=held)
        return Split(content=held)


def split_whole(text: str, starts_inside: bool) -> Split:
    """The split of a complete output."""
    s = ReasoningSplitter(starts_inside)
    a, b = s.push(text), s.flush()
    return Split(a.reasoning + b.reasoning, a.content + b.content)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
