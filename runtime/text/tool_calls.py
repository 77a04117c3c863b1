"""Parsing a model's tool calls out of its output, one parser per template family.

Every model family writes tool calls in the format its chat template renders them back in, so
the family is detected from the template source (a marker only that family's templates use)
and the same format is parsed from the output. The parsers never raise: output that does not
hold a well-formed call stays plain content, as the model wrote it.

Families (`ToolFormat.name`, what it parses, who writes it):
- hermes: `<tool_call>{"name", "arguments"}</tool_call>` (Qwen2.5, Qwen3, QwQ, Hermes 2/3,
  MiMo, Granite 4, Bielik, Reka), and the same JSON between other tags (Apriel `<tool_calls>`,
  MiniMax-M1, Nemotron Nano 2 `<TOOLCALL>`, GigaChat, Apertus, Command R7B/A `<|START_ACTION|>`);
- qwen3_coder: `<function=NAME><parameter=KEY>VALUE</parameter></function>` (Qwen3-Coder,
  Qwen3.5, Nemotron 3, StepFun, Seed-OSS);
- glm: `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>` (GLM 4.6/4.7,
  Ling, Laguna, Spark);
- invoke: `<invoke name="NAME"><parameter name="K">V</parameter></invoke>` (MiniMax-M2,
  DeepSeek V3.2/V4 DSML, MiniCPM5 `<function name=..><param ...>`);
- llama3: a bare `{"name", "parameters"}` object, optionally after `<|python_tag|>`;
- mistral: `[TOOL_CALLS]NAME[ARGS]{...}` and `[TOOL_CALLS][{"name", "arguments"}]`;
- deepseek: `<｜tool▁call▁begin｜>[function<｜tool▁sep｜>]NAME...{args}<｜tool▁call▁end｜>` (R1, V3, V3.1);
- functionary: `<function=NAME>{...}</function>` (v3.1) and `>>>NAME\\n{...}` (v3.2);
- kimi: `<|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>{...}<|tool_call_end|>`;
- harmony: gpt-oss's `to=functions.NAME ... <|message|>{...}<|call|>`;
- solar: `<|tool_call:name|>NAME<|tool_call:args|>{...}<|tool_call:end|>`;
- pythonic: `<|tool_call_start|>[name(k=v)]<|tool_call_end|>` (LFM2.5).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from rfc.runtime.text.tool_parsers import (
    Parser,
    deepseek,
    functionary,
    gemma4,
    glm,
    harmony,
    invoke,
    json_tags,
    kimi,
    llama3,
    mistral,
    pythonic,
    qwen3_coder,
    solar,
)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{secrets.token_hex(12)}")
    complete: bool = True  # False: a forced call cut off by max_tokens, `arguments` the JSON written so far


@dataclass(frozen=True)
class Parsed:
    content: str
    calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class ToolFormat:
    """One family: how to see it in a template, where a call starts in the output, how to parse."""

    name: str
    template_markers: tuple[str, ...]  # any of these in the template source picks the family
    starts: tuple[str, ...]  # output text that begins a call (content before it streams as is)
    parse_calls: Parser
    at_start_only: bool = False  # a call is recognised only at the start of the output

    def parse(self, text: str, tools: list[dict] | None = None) -> Parsed:
        """Content and calls of a complete output; the whole text as content if malformed."""
        start = self.call_start(text)
        if start is None:
            return Parsed(text)
        schemas = _parameter_schemas(tools or [])
        try:
            result = self.parse_calls(text[start:], schemas)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, SyntaxError):
            result = None
        if not result or not result[1]:
            return Parsed(text)
        rest, calls = result
        out = []
        for name, args in calls:
            if not isinstance(name, str) or not name:
                return Parsed(text)
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    return Parsed(text)
            if args is None:
                args = {}
            if not isinstance(args, dict):
                return Parsed(text)
            out.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
        content = (text[:start] + rest).strip()
        return Parsed(content, tuple(out))

    def opened_by(self, prompt: str) -> str:
        """The call marker the generation prompt itself ends with (functionary v3.2 ends it with
        `>>>`): the output continues it, so it is put back in front of the output to parse."""
        return next((m for m in self.starts if len(m) > 1 and prompt.endswith(m)), "")

    def call_start(self, text: str) -> int | None:
        if self.at_start_only:
            stripped = len(text) - len(text.lstrip())
            return stripped if any(text.startswith(s, stripped) for s in self.starts) else None
        found = [i for i in (text.find(s) for s in self.starts) if i >= 0]
        return min(found) if found else None

    def may_start(self, text: str) -> bool:
        """Whether `text` (the output so far) may still turn into a call at its end; the
        streaming layer holds such a tail back instead of sending it as content."""
        if self.at_start_only:
            s = text.lstrip()
            return any(m.startswith(s) or s.startswith(m) for m in self.starts)
        return any(_partial_suffix(text, m) for m in self.starts)


# -- helpers -----------------------------------------------------------------------------


def _parameter_schemas(tools: list[dict]) -> dict[str, dict]:
    out = {}
    for t in tools:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = params.get("properties", {}) if isinstance(params, dict) else {}
    return out


# Order matters: a template that matches an earlier family's marker belongs to it (Qwen3-Coder
# templates also say `<tool_call>`, so qwen3_coder comes before hermes).
FORMATS: tuple[ToolFormat, ...] = (
    ToolFormat("harmony", ("<|channel|>", "to=functions."), ("to=functions.",), harmony),
    ToolFormat("kimi", ("<|tool_call_begin|>",), ("<|tool_calls_section_begin|>", "<|tool_call_begin|>"), kimi),
    ToolFormat("deepseek", ("<｜tool▁call▁begin｜>",), ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>"), deepseek),
    ToolFormat(
        "invoke",
        ("<invoke name=", "invoke name=", "<function name="),
        ("<minimax:tool_call>", "<｜DSML｜function_calls>", "<｜DSML｜tool_calls>", "<function name="),
        invoke,
    ),
    ToolFormat("qwen3_coder", ("<parameter=",), ("<tool_call>", "<seed:tool_call>", "<function="), qwen3_coder),
    ToolFormat("glm", ("<arg_key>",), ("<tool_call>",), glm),
    ToolFormat("solar", ("<|tool_call:name|>",), ("<|tool_calls|>", "<|tool_call:begin|>"), solar),
    ToolFormat("gemma4", ("<|tool_call>",), ("<|tool_call>",), gemma4),
    ToolFormat("pythonic", ("<|tool_call_start|>",), ("<|tool_call_start|>",), pythonic),
    ToolFormat("mistral", ("[TOOL_CALLS]",), ("[TOOL_CALLS]",), mistral),
    ToolFormat("functionary", (">>>all", "<function="), ("<function=", ">>>"), functionary),
    ToolFormat("hermes_apriel", ("<tool_calls>[",), ("<tool_calls>",), json_tags("<tool_calls>", "</tool_calls>")),
    ToolFormat("hermes_minimax", ("<tool_calls>",), ("<tool_calls>",), json_tags("<tool_calls>", "</tool_calls>")),
    ToolFormat("hermes_nemotron", ("<TOOLCALL>",), ("<TOOLCALL>",), json_tags("<TOOLCALL>", "</TOOLCALL>")),
    ToolFormat(
        "command_r", ("<|START_ACTION|>",), ("<|START_ACTION|>",), json_tags("<|START_ACTION|>", "<|END_ACTION|>")
    ),
    ToolFormat(
        "apertus", ("<|tools_prefix|>",), ("<|tools_prefix|>",), json_tags("<|tools_prefix|>", "<|tools_suffix|>")
    ),
    ToolFormat(
        "gigachat", ("<|function_call|>",), ("<|function_call|>",), json_tags("<|function_call|>", "<|message_sep|>")
    ),
    ToolFormat(
        "gigachat3",
        ("'function call'",),
        ("function call<|role_sep|>",),
        json_tags("function call<|role_sep|>", "<|message_sep|>"),
    ),
    ToolFormat("firefunction", ("functools[",), ("functools",), json_tags("functools", "<|eot_id|>")),
    ToolFormat("hermes", ("<tool_call>",), ("<tool_call>",), json_tags("<tool_call>", "</tool_call>")),
    ToolFormat(
        "llama3",
        ("<|python_tag|>", '"parameters": ', '{"name": "'),
        ("<|python_tag|>", "{"),
        llama3,
        at_start_only=True,
    ),
)
BY_NAME = {f.name: f for f in FORMATS}
# Families known and not parsed yet: their templates still render tools, the output stays
# content. (Command R+ `Action: ```json`, MiniMax-M3, Kimi K3, Hunyuan 3, muse-glimmer.)
UNPARSED_MARKERS = ("Action:\\' followed", "]<]minimax[>[", "<|open|>", ":opensource>", "<atem:")


def detect(template_source: str) -> ToolFormat | None:
    """The tool-call family of a chat template; None when it renders no tools we can parse."""
    if "tools" not in template_source and "tool_calls" not in template_source:
        return None
    if any(m in template_source for m in UNPARSED_MARKERS):
        return None
    for fmt in FORMATS:
        if any(m in template_source for m in fmt.template_markers):
            return fmt
    return None


def _partial_suffix(text: str, tag: str) -> bool:
    """Whether `text` contains `tag` or ends with a proper prefix of it."""
    if tag in text:
        return True
    return any(tag.startswith(text[-n:]) for n in range(min(len(tag) - 1, len(text)), 0, -1))
