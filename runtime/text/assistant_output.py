"""A chat model's output as an assistant message: reasoning, content and tool calls, built
piece by piece as the text streams (the same object gives the non-streamed reply, so the
streamed deltas always reassemble to it).

Content streams as it comes, except a tail that may be the start of a tool call: once a
call's marker appears, the rest is held back and parsed when the output ends (a call is
only useful whole; the OpenAI SDK and the AI SDK accept a call's arguments in one delta).
Output that does not parse as calls is released as content then.

A piece costs time in its own length, not in the length of the output so far: what grows
(the held-back call, the message) is kept as a list of pieces and joined once, and only a
tail as long as a call marker is searched again (a long generation made quadratic is a way
to stall the server)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from rfc.runtime.text.reasoning import CLOSE, OPEN, make_splitter
from rfc.runtime.text.tool_calls import ToolCall, ToolFormat


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
    harmony: bool = False  # ... or harmony's analysis channel (gpt-oss)
    starts_inside: bool = False  # the prompt opened the block
    tags: tuple[str, str] = (OPEN, CLOSE)  # the block's tags (Gemma 4: `<|channel>thought`, `<channel|>`)
    tool_format: ToolFormat | None = None  # parse calls from free text (tool_choice auto)
    tools: tuple[dict, ...] = ()  # the request's tools, for their parameter types
    forced_calls: bool = False  # the grammar forced a JSON list of {"name", "arguments"}
    generic_calls: bool = False  # ... or {"tool_calls": [...]} | {"response": ...} (generic tool calling)
    call_prefix: str = ""  # a call marker the prompt ends with (functionary v3.2's `>>>`)

    @property
    def is_plain(self) -> bool:
        return not (self.thinks or self.tool_format or self.forced_calls or self.generic_calls)


@dataclass
class AssistantMessage:
    reasoning: str = ""
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


class OutputParser:
    def __init__(self, spec: OutputSpec):
        self.spec = spec
        self._reasoning = make_splitter(spec.harmony, spec.starts_inside, spec.tags) if spec.thinks else None
        self._pending = spec.call_prefix  # content not yet released: a tail that may start a call
        self._space: list[str] = []  # at_start_only formats, undecided: the leading whitespace, set aside
        # The output from a call's marker on (all of it when forced), held back for `finish`.
        self._call: list[str] | None = [spec.call_prefix] if spec.forced_calls or spec.generic_calls else None
        self._decided = False  # at_start_only formats: whether the output began with a call
        self._reasoning_parts: list[str] = []  # the message, as released
        self._content_parts: list[str] = []
        self._calls: list[ToolCall] = []

    @property
    def message(self) -> AssistantMessage:
        """The message so far: read it once the output is finished."""
        return AssistantMessage(_joined(self._reasoning_parts), _joined(self._content_parts), list(self._calls))

    def push(self, text: str) -> Delta:
        if self._reasoning is not None:
            split = self._reasoning.push(text)
            reasoning, content = split.reasoning, split.content
        else:
            reasoning, content = "", text
        return self._record(Delta(reasoning, self._content(content)))

    def finish(self) -> Delta:
        """What the end of the output releases: held-back text and the parsed calls."""
        reasoning = tail = ""
        if self._reasoning is not None:
            split = self._reasoning.flush()
            reasoning, tail = split.reasoning, split.content
        in_call = self._call is not None
        rest = "".join(self._call if in_call else [*self._space, self._pending]) + tail
        self._call, self._space, self._pending = [] if in_call else None, [], ""
        if self.spec.forced_calls:  # never content: what does not parse is a call cut off, or nothing
            calls = forced_calls(rest, tuple(t["function"]["name"] for t in self.spec.tools if "function" in t))
            return self._record(Delta(reasoning, "", tuple(calls)))
        if self.spec.generic_calls:
            content, calls = generic_reply(
                rest, tuple(t["function"]["name"] for t in self.spec.tools if "function" in t)
            )
            return self._record(Delta(reasoning, content, tuple(calls)))
        if in_call and self.spec.tool_format is not None:
            parsed = self.spec.tool_format.parse(rest, list(self.spec.tools))
            return self._record(Delta(reasoning, parsed.content if parsed.calls else rest, parsed.calls))
        return self._record(Delta(reasoning, rest))

    def _content(self, text: str) -> str:
        if self._call is not None:
            self._call.append(text)
            return ""
        fmt = self.spec.tool_format
        if fmt is None:
            out, self._pending = self._pending + text, ""
            return out
        if fmt.at_start_only:
            return self._content_at_start(text, fmt)
        self._pending += text  # a marker's length at most, and this piece
        start = fmt.call_start(self._pending)
        if start is not None:
            out, self._call, self._pending = self._pending[:start], [self._pending[start:]], ""
            return out
        keep = _held_tail(self._pending, fmt.starts)
        out, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        return out

    def _content_at_start(self, text: str, fmt: ToolFormat) -> str:
        """A format whose call is recognised only at the start of the output: hold the output
        back until its first non-blank text shows whether it is a call."""
        if self._decided:
            return text
        if not self._pending:  # leading whitespace so far: set it aside, not stripped again on every piece
            stripped = text.lstrip()
            self._space.append(text[: len(text) - len(stripped)])
            text = stripped
        self._pending += text
        if fmt.call_start(self._pending) is not None:
            self._call, out = [*self._space, self._pending], ""
        elif fmt.may_start(self._pending):
            return ""
        else:
            out = "".join([*self._space, self._pending])
        self._decided, self._space, self._pending = True, [], ""
        return out

    def _record(self, delta: Delta) -> Delta:
        self._reasoning_parts.append(delta.reasoning)
        self._content_parts.append(delta.content)
        self._calls += delta.calls
        return delta


def parse_whole(spec: OutputSpec, text: str) -> AssistantMessage:
    p = OutputParser(spec)
    p.push(text)
    p.finish()
    return p.message


def forced_calls(text: str, names: tuple[str, ...] = ()) -> list[ToolCall]:
    """The calls of an output the grammar forced into `[{"name": ..., "arguments": {...}}]`.
    An output cut short (max_tokens) keeps the calls it completed, and the one it was writing as
    an incomplete call (`complete` False): its name (completed from `names` where the grammar
    left only one) and the arguments' JSON so far, as OpenAI returns a call cut off."""
    partial: ToolCall | None = None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # cut short, or nested past the decoder's depth
        value, rest = _complete_items(text)
        partial = _partial_call(rest, names) if rest is not None else None
    if not isinstance(value, list):
        return []
    calls = []
    for item in value:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("arguments"), dict)
        ):
            return []
        calls.append(ToolCall(item["name"], json.dumps(item["arguments"], ensure_ascii=False)))
    return calls + ([partial] if partial is not None else [])


_GENERIC_CALLS = re.compile(r'\{\s*"tool_calls"\s*:\s*')
_GENERIC_RESPONSE = re.compile(r'\{\s*"response"\s*:\s*')


def generic_reply(text: str, names: tuple[str, ...] = ()) -> tuple[str, list[ToolCall]]:
    """(content, calls) of an output in generic tool calling's JSON: `{"tool_calls": [...]}`
    gives calls (a list cut off by max_tokens, as forced calls do), `{"response": ...}` the
    response as content (a string as it is, a formatted answer as its JSON); anything else,
    the text."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict) and isinstance(value.get("response"), str):
        return value["response"], []
    if isinstance(value, dict) and "response" in value:
        return json.dumps(value["response"], ensure_ascii=False, separators=(",", ":")), []
    if (m := _GENERIC_CALLS.match(text)) is not None:
        body = text[m.end() :]
        if isinstance(value, dict):
            body = json.dumps(value.get("tool_calls"), ensure_ascii=False)
        calls = forced_calls(body, names)
        if calls:
            return "", calls
    if (m := _GENERIC_RESPONSE.match(text)) is not None:  # cut off: the answer so far
        body = text[m.end() :]
        if body.startswith('"'):
            return _partial_string(body), []
        return body, []
    return text, []


def _partial_string(body: str) -> str:
    """The text of a JSON string cut off (its closing quote, perhaps half an escape, missing)."""
    for cut in range(len(body), max(len(body) - 7, 0), -1):
        try:
            return json.loads(body[:cut] + '"')
        except ValueError:
            continue
    return body[1:]


def _complete_items(text: str) -> tuple[list, str | None]:
    """The complete elements at the start of a JSON array that was cut off, and the text of the
    element it was cut off in (None: nothing after them but the array's end)."""
    items, pos, decoder = [], 1, json.JSONDecoder()
    if not text.startswith("["):
        return [], None
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return items, text[pos:]
        items.append(item)
        pos = end
        if not text.startswith(",", pos):
            return items, None
        pos += 1


# The forced grammar writes each call compactly, its name first: `{"name":"NAME","arguments":{...`
_PARTIAL_CALL = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)(")?(?:\s*,\s*"arguments"\s*:\s*(.*))?', re.DOTALL)


def _partial_call(text: str, names: tuple[str, ...]) -> ToolCall | None:
    m = _PARTIAL_CALL.match(text)
    if m is None:
        return None
    try:
        name = json.loads(f'"{m.group(1)}"') if m.group(2) else None
    except ValueError:
        return None
    if name is None:  # the name itself was cut off: the one tool it can still be
        fits = [n for n in names if n.startswith(m.group(1))]
        if len(fits) != 1:
            return None
        name = fits[0]
    return ToolCall(name, m.group(3) or "", complete=False)


def _joined(parts: list[str]) -> str:
    """The pieces joined, and kept as one piece, so that reading again costs nothing."""
    text = "".join(parts)
    parts[:] = [text]
    return text


def _held_tail(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a marker (tried where
    the marker's first character occurs: this runs on every streamed piece)."""
    best = 0
    for m in markers:
        i = max(len(text) - len(m) + 1, 0)
        while (i := text.find(m[0], i)) >= 0 and len(text) - i > best:
            if m.startswith(text[i:]):
                best = len(text) - i
                break
            i += 1
    return best
