"""A chat model's output as an assistant message: reasoning, content and tool calls, built
piece by piece as the text streams (the same object gives the non-streamed reply, so the
streamed deltas always reassemble to it).

Content streams as it comes, except a tail that may be the start of a tool call: once a
call's marker appears, the rest is held back and parsed when the output ends (a call is
only useful whole; the OpenAI SDK and the AI SDK accept a call's arguments in one delta).
Output that does not parse as calls is released as content then."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from rfc.runtime.reasoning import ReasoningSplitter
from rfc.runtime.tool_calls import ToolCall, ToolFormat


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""
    calls: tuple[ToolCall, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.calls)


@dataclass(frozen=True)
class OutputSpec:
    """How to read one request's output."""

    thinks: bool = False  # split `<think>` blocks off as reasoning
    starts_inside: bool = False  # the prompt opened the block
    tool_format: ToolFormat | None = None  # parse calls from free text (tool_choice auto)
    tools: tuple[dict, ...] = ()  # the request's tools, for their parameter types
    forced_calls: bool = False  # the grammar forced a JSON list of {"name", "arguments"}
    call_prefix: str = ""  # a call marker the prompt ends with (functionary v3.2's `>>>`)

    @property
    def is_plain(self) -> bool:
        return not (self.thinks or self.tool_format or self.forced_calls)


@dataclass
class AssistantMessage:
    reasoning: str = ""
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


class OutputParser:
    def __init__(self, spec: OutputSpec):
        self.spec = spec
        self._reasoning = ReasoningSplitter(spec.starts_inside) if spec.thinks else None
        self._pending = spec.call_prefix  # content not yet released
        self._in_call = False
        self._decided = False  # at_start_only formats: whether the output began with a call
        self.message = AssistantMessage()

    def push(self, text: str) -> Delta:
        if self._reasoning is not None:
            split = self._reasoning.push(text)
            reasoning, content = split.reasoning, split.content
        else:
            reasoning, content = "", text
        return self._record(Delta(reasoning, self._content(content)))

    def finish(self) -> Delta:
        """What the end of the output releases: held-back text and the parsed calls."""
        reasoning = ""
        if self._reasoning is not None:
            split = self._reasoning.flush()
            reasoning = split.reasoning
            self._pending += split.content
        rest, self._pending = self._pending, ""
        if self.spec.forced_calls:
            calls = forced_calls(rest)
            return self._record(Delta(reasoning, "" if calls else rest, tuple(calls)))
        if self._in_call and self.spec.tool_format is not None:
            parsed = self.spec.tool_format.parse(rest, list(self.spec.tools))
            return self._record(Delta(reasoning, parsed.content if parsed.calls else rest, parsed.calls))
        return self._record(Delta(reasoning, rest))

    def _content(self, text: str) -> str:
        self._pending += text
        fmt = self.spec.tool_format
        if self.spec.forced_calls or self._in_call:
            return ""
        if fmt is None:
            out, self._pending = self._pending, ""
            return out
        if fmt.at_start_only:
            if not self._decided:
                if fmt.call_start(self._pending) is not None:
                    self._decided = self._in_call = True
                    return ""
                if fmt.may_start(self._pending):
                    return ""
                self._decided = True
            out, self._pending = self._pending, ""
            return out
        start = fmt.call_start(self._pending)
        if start is not None:
            out, self._pending = self._pending[:start], self._pending[start:]
            self._in_call = True
            return out
        keep = _held_tail(self._pending, fmt.starts)
        out, self._pending = self._pending[:len(self._pending) - keep], self._pending[len(self._pending) - keep:]
        return out

    def _record(self, delta: Delta) -> Delta:
        m = self.message
        m.reasoning += delta.reasoning
        m.content += delta.content
        m.calls += delta.calls
        return delta


def parse_whole(spec: OutputSpec, text: str) -> AssistantMessage:
    p = OutputParser(spec)
    p.push(text)
    p.finish()
    return p.message


def forced_calls(text: str) -> list[ToolCall]:
    """The calls of an output the grammar forced into `[{"name": ..., "arguments": {...}}]`.
    An output cut short (max_tokens) keeps the calls it completed."""
    try:
        value = json.loads(text)
    except ValueError:
        value = _complete_items(text)
    if not isinstance(value, list):
        return []
    calls = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("arguments"), dict):
            return []
        calls.append(ToolCall(item["name"], json.dumps(item["arguments"], ensure_ascii=False)))
    return calls


def _complete_items(text: str) -> list:
    """The complete elements at the start of a JSON array that was cut off."""
    items, pos, decoder = [], 1, json.JSONDecoder()
    if not text.startswith("["):
        return []
    while True:
        try:
            item, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return items
        items.append(item)
        if not text.startswith(",", pos):
            return items
        pos += 1


def _held_tail(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a marker."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if m.startswith(text[-n:]):
                best = n
                break
    return best
