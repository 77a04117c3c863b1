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
# Gemma 4's thinking block: `<|channel>thought\n...<channel|>` (its template writes past reasoning
# so, and an empty block into the prompt when thinking is off); the same split with other tags.
GEMMA4_OPEN, GEMMA4_CLOSE = "<|channel>thought", "<channel|>"
# gpt-oss's harmony format: messages `<|start|>assistant<|channel|>NAME<|message|>TEXT<|end|>`,
# the reasoning in channel analysis, the answer in channel final (which ends with <|return|>),
# tool calls in channel commentary (` to=functions.NAME`, ending with <|call|>).
CHANNEL, MESSAGE = "<|channel|>", "<|message|>"
HARMONY_ANALYSIS = CHANNEL + "analysis" + MESSAGE
HARMONY_ENDS = ("<|end|>", "<|return|>", "<|call|>")


def template_thinks(source: str) -> bool:
    """Whether a chat template writes or strips `<think>` blocks, harmony's analysis channel,
    or Gemma 4's thought channel: its model thinks."""
    return OPEN in source or CLOSE in source or template_is_harmony(source) or template_is_gemma4(source)


def template_is_gemma4(source: str) -> bool:
    """Whether a chat template writes Gemma 4's `<|channel>thought ... <channel|>` blocks."""
    return GEMMA4_OPEN in source and GEMMA4_CLOSE in source


def thinking_tags(source: str) -> tuple[str, str]:
    """The open and close tags of a thinking template's reasoning block."""
    return (GEMMA4_OPEN, GEMMA4_CLOSE) if template_is_gemma4(source) else (OPEN, CLOSE)


def template_is_harmony(source: str) -> bool:
    """Whether a chat template is gpt-oss's harmony format (channels, not `<think>`)."""
    return CHANNEL in source and "analysis" in source and MESSAGE in source


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether the rendered prompt leaves the model inside an open `<think>` block (or
    harmony's analysis channel)."""
    tail = prompt.rstrip()
    return tail.endswith(OPEN) or prompt.endswith(HARMONY_ANALYSIS)


@dataclass
class Split:
    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """Incremental `<think>` splitter: push text pieces, get the reasoning and content they
    release. Text before a `<think>` that does not start the output is content (the tag only
    counts at the start, leading whitespace aside), so a model that merely mentions the tag
    in its answer is not cut."""

    def __init__(self, starts_inside: bool, tags: tuple[str, str] = (OPEN, CLOSE)):
        self._open, self._close = tags  # `<think>`, `</think>` unless the template says otherwise (Gemma 4)
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
                self._space.append(buf[: len(buf) - len(stripped)])
                if stripped.startswith(self._open):
                    self._may_open, self._inside, self._space = False, True, []
                    buf = stripped[len(self._open) :]
                    continue
                if self._open.startswith(stripped):  # maybe the tag, not complete yet
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
            end = buf.find(self._close)
            if end >= 0:
                out.reasoning += buf[:end]
                buf = buf[end + len(self._close) :]
                self._inside, self._done = False, True
                continue
            keep = _partial_suffix(buf, self._close)
            out.reasoning += buf[: len(buf) - keep]
            self._held = buf[len(buf) - keep :]
            break
        return out

    def flush(self) -> Split:
        """The held-back text at the end of the output."""
        held = "".join(self._space) + self._held
        self._held, self._space = "", []
        if self._inside:
            return Split(reasoning=held)
        return Split(content=held)


class HarmonySplitter:
    """Incremental harmony splitter, the same interface as ReasoningSplitter: the text of
    analysis messages is reasoning, that of any other message content, headers and end
    markers dropped; but a message to a recipient (a tool call: `to=functions.NAME` in its
    header) passes through as content from its recipient on, `<|message|>` and `<|call|>`
    included, for the harmony tool-call parser. Output that is not harmony at all is content.
    A header is held until its `<|message|>` (HEADER_MAX characters at most: then it is
    content), a body's tail while it may be the start of an end marker: a piece costs time
    in its own length."""

    HEADER_MAX = 256

    def __init__(self, starts_inside: bool):
        self._channel: str | None = "analysis" if starts_inside else None  # None: in a header
        self._held = ""  # the header so far, or a body's tail that may start an end marker
        self._raw = False  # the output did not start as harmony: everything is content

    def push(self, text: str) -> Split:
        out = Split()
        buf = self._held + text
        self._held = ""
        while buf:
            if self._raw:
                out.content += buf
                break
            if self._channel is None:  # a header: `<|start|>assistant<|channel|>NAME ...<|message|>`
                end = buf.find(MESSAGE)
                if end < 0:
                    if len(buf) > self.HEADER_MAX or not _may_be_header(buf):
                        self._raw = True
                        continue
                    self._held = buf
                    break
                header, buf = buf[:end], buf[end + len(MESSAGE) :]
                self._channel = "analysis" if _channel_of(header) == "analysis" else "final"
                to = header.find("to=")
                if to >= 0:  # a tool call: the tool parser reads it whole
                    self._channel = "call"
                    out.content += header[to:] + MESSAGE
                continue
            ends = [(i, m) for m in HARMONY_ENDS if (i := buf.find(m)) >= 0]
            if ends:
                i, marker = min(ends)
                body, buf = buf[:i], buf[i + len(marker) :]
                self._emit(out, body + (marker if self._channel == "call" else ""))
                self._channel = None
                continue
            keep = max(_partial_suffix(buf, m) for m in HARMONY_ENDS)
            self._emit(out, buf[: len(buf) - keep])
            self._held = buf[len(buf) - keep :]
            break
        return out

    def _emit(self, out: Split, text: str) -> None:
        if self._channel == "analysis":
            out.reasoning += text
        else:
            out.content += text

    def flush(self) -> Split:
        """The held-back text at the end of the output (a header never finished is content)."""
        held, self._held = self._held, ""
        if self._channel == "analysis" and not self._raw:
            return Split(reasoning=held)
        return Split(content=held)


def _channel_of(header: str) -> str:
    """The channel a harmony header names (`...<|channel|>final`, `<|channel|>commentary to=...`)."""
    at = header.find(CHANNEL)
    if at < 0:
        return ""
    words = header[at + len(CHANNEL) :].split()
    return words[0] if words else ""


def _may_be_header(text: str) -> bool:
    """Whether `text` may still become a harmony header: it starts with (or is the start of)
    `<|start|>`, `<|channel|>` or a recipient (` to=functions.NAME<|channel|>...`, the order
    the template writes)."""
    return any(text.startswith(t) or t.startswith(text) for t in ("<|start|>", CHANNEL, " to=", "to="))


def make_splitter(
    harmony: bool, starts_inside: bool, tags: tuple[str, str] = (OPEN, CLOSE)
) -> ReasoningSplitter | HarmonySplitter:
    """The splitter for a template's reasoning format (`tags`: thinking_tags of the template)."""
    return HarmonySplitter(starts_inside) if harmony else ReasoningSplitter(starts_inside, tags)


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
