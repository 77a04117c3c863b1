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

import ast
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{secrets.token_hex(12)}")


@dataclass(frozen=True)
class Parsed:
    content: str
    calls: tuple[ToolCall, ...] = ()


Parser = Callable[[str, dict[str, dict]], "tuple[str, list[tuple[str, object]]] | None"]


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


def _coerce(value: str, schema: object) -> object:
    """An XML-style argument's text as the JSON value its schema asks for (strings stay
    strings; anything else is read as JSON when it parses)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "string":
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _json_prefix(text: str) -> tuple[object, str]:
    """The JSON value at the start of `text` (after whitespace) and the text after it."""
    stripped = text.lstrip()
    value, end = json.JSONDecoder().raw_decode(stripped)
    return value, stripped[end:]


def _name_args(obj: object) -> tuple[str, object]:
    if not isinstance(obj, dict):
        raise ValueError("a tool call must be an object")
    name = obj.get("name", obj.get("tool_name"))
    if name is None and len(obj) == 1 and not {"arguments", "parameters"} & obj.keys():  # Apertus: {"NAME": {args}}
        ((name, args),) = obj.items()
        return name, args
    args = obj.get("arguments", obj.get("parameters", {}))
    return name, args


def _between(text: str, start: str, end: str) -> tuple[list[str], str]:
    """The bodies of every `start ... end` in `text`, and the text outside them. An unclosed
    last body runs to the end of the text (generation often stops on the end token)."""
    bodies, outside, pos = [], [], 0
    while True:
        i = text.find(start, pos)
        if i < 0:
            outside.append(text[pos:])
            break
        outside.append(text[pos:i])
        j = text.find(end, i + len(start))
        if j < 0:
            bodies.append(text[i + len(start):])
            break
        bodies.append(text[i + len(start):j])
        pos = j + len(end)
    return bodies, "".join(outside)


def _json_tags(start: str, end: str) -> Parser:
    def parse(text: str, schemas: dict) -> tuple[str, list] | None:
        bodies, rest = _between(text, start, end)
        calls = []
        for body in bodies:
            body = body.strip()
            value = json.loads(body) if body[:1] in "[{" and _is_json(body) else _json_lines(body)
            for obj in value if isinstance(value, list) else [value]:
                calls.append(_name_args(obj))
        return rest, calls
    return parse


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _json_lines(body: str) -> list:
    """Several JSON objects one after another (MiniMax-M1 puts one per line)."""
    out, rest = [], body
    while rest.strip():
        value, rest = _json_prefix(rest)
        out.append(value)
    return out


_QWEN_FN = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.S)
_QWEN_PARAM = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.S)


def _qwen3_coder(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = []
    for name, body in _QWEN_FN.findall(text):
        props = schemas.get(name, {})
        calls.append((name, {k: _coerce(v, props.get(k)) for k, v in _QWEN_PARAM.findall(body)}))
    rest = _QWEN_FN.sub("", text)
    rest = re.sub(r"</?(?:seed:)?tool_call>", "", rest)
    return rest, calls


_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def _glm(text: str, schemas: dict) -> tuple[str, list] | None:
    bodies, rest = _between(text, "<tool_call>", "</tool_call>")
    calls = []
    for body in bodies:
        name = body.split("<arg_key>", 1)[0].strip()
        props = schemas.get(name, {})
        calls.append((name, {k.strip(): _coerce(v, props.get(k.strip())) for k, v in _GLM_ARG.findall(body)}))
    return rest, calls


_INVOKE = re.compile(r"<(?:[\w:｜]*)(?:invoke|function) name=\"([^\"]+)\">(.*?)</(?:[\w:｜]*)(?:invoke|function)>", re.S)
_INVOKE_PARAM = re.compile(r"<(?:[\w:｜]*)(?:parameter|param) name=\"([^\"]+)\"(?: string=\"(true|false)\")?>(.*?)</(?:[\w:｜]*)(?:parameter|param)>", re.S)
_INVOKE_WRAPPERS = re.compile(r"</?(?:minimax:tool_call|｜DSML｜function_calls|｜DSML｜tool_calls)>")


def _invoke(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = []
    for name, body in _INVOKE.findall(text):
        props = schemas.get(name, {})
        args = {}
        for key, is_string, value in _INVOKE_PARAM.findall(body):
            args[key] = value if is_string == "true" else _coerce(value, props.get(key))
        calls.append((name, args))
    return _INVOKE_WRAPPERS.sub("", _INVOKE.sub("", text)), calls


def _llama3(text: str, schemas: dict) -> tuple[str, list] | None:
    text = text.strip().removeprefix("<|python_tag|>")
    calls, rest = [], text
    while rest.strip().startswith("{"):
        value, rest = _json_prefix(rest)
        calls.append(_name_args(value))
        rest = rest.lstrip().removeprefix(";")  # several calls: `{...}; {...}`
    return rest, calls


_MISTRAL_ARGS = "[ARGS]"


def _mistral(text: str, schemas: dict) -> tuple[str, list] | None:
    parts = text.split("[TOOL_CALLS]")
    calls, rest = [], parts[0]
    for part in parts[1:]:
        if part.lstrip().startswith("["):  # Nemo: a JSON list of calls
            value, after = _json_prefix(part)
            calls += [_name_args(obj) for obj in value]
        else:  # Small 3.2, Devstral, Ministral: NAME[CALL_ID]ID[ARGS]{...} (CALL_ID optional)
            name, args = part.split(_MISTRAL_ARGS, 1)
            name = name.split("[CALL_ID]", 1)[0]
            value, after = _json_prefix(args)
            calls.append((name.strip(), value))
        rest += after
    return rest, calls


_DS_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)(?:<｜tool▁call▁end｜>|$)", re.S)
_DS_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def _deepseek(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = []
    for head, body in _DS_CALL.findall(text):
        if head.strip() == "function":  # R1 and V3: function<sep>NAME\n```json\n{...}\n```
            name, _, body = body.partition("\n")
            fenced = _DS_FENCE.match(body)
            body = fenced.group(1) if fenced else body
        else:  # V3.1: NAME<sep>{...}
            name = head
        calls.append((name.strip(), json.loads(body)))
    rest = _DS_CALL.sub("", text)
    rest = re.sub(r"<｜tool▁calls▁(?:begin|end)｜>", "", rest)
    return rest, calls


_FUNCTIONARY_31 = re.compile(r"<function=([^>]+)>(.*?)</function>", re.S)


def _functionary(text: str, schemas: dict) -> tuple[str, list] | None:
    if "<function=" in text:
        calls = [(name, json.loads(body)) for name, body in _FUNCTIONARY_31.findall(text)]
        return _FUNCTIONARY_31.sub("", text), calls
    calls, rest = [], []
    for chunk in text.split(">>>")[1:]:  # v3.2: >>>NAME\n{...}; >>>all\n is plain text
        name, _, body = chunk.partition("\n")
        if name.strip() == "all":
            rest.append(body)
        elif body.strip():
            value, after = _json_prefix(body)
            calls.append((name.strip(), value))
            rest.append(after)
        else:
            calls.append((name.strip(), {}))
    return "".join(rest), calls


_KIMI = re.compile(r"<\|tool_call_begin\|>\s*(?:functions\.)?([^:<]+?)(?::\d+)?\s*<\|tool_call_argument_begin\|>(.*?)<\|tool_call_end\|>", re.S)


def _kimi(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = [(name, json.loads(body)) for name, body in _KIMI.findall(text)]
    rest = re.sub(r"<\|tool_calls_section_(?:begin|end)\|>", "", _KIMI.sub("", text))
    return rest, calls


# The model writes `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>`;
# the template renders the header the other way round (` to=functions.NAME<|channel|>commentary json`).
_HARMONY = re.compile(r"to=functions\.([\w.-]+)[^\n]*?<\|message\|>(.*?)(?:<\|call\|>|$)", re.S)


def _harmony(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = [(name, json.loads(body)) for name, body in _HARMONY.findall(text)]
    rest = _HARMONY.sub("", text)
    rest = re.sub(r"<\|start\|>assistant|<\|channel\|>commentary", "", rest)
    return rest, calls


_SOLAR = re.compile(r"<\|tool_call:begin\|>.*?<\|tool_call:name\|>(.*?)<\|tool_call:args\|>(.*?)<\|tool_call:end\|>", re.S)


def _solar(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = [(name.strip(), json.loads(body)) for name, body in _SOLAR.findall(text)]
    return re.sub(r"<\|tool_calls\|>|<\|calls\|>", "", _SOLAR.sub("", text)), calls


_GEMMA4 = re.compile(r"<\|tool_call>call:([\w.-]+)(\{.*?\})<tool_call\|>", re.S)
_GEMMA4_KEY = re.compile(r"([{,])\s*([A-Za-z_][\w-]*)\s*:")


def _gemma4(text: str, schemas: dict) -> tuple[str, list] | None:
    """`<|tool_call>call:NAME{key:<|"|>text<|"|>,n:2}<tool_call|>`: JSON with bare keys and
    `<|"|>` for quotes."""
    calls = []
    for name, body in _GEMMA4.findall(text):
        strings: list[str] = []

        def keep(m: re.Match) -> str:  # strings aside first, so that their text is not rewritten
            strings.append(m.group(1))
            return f"\x00{len(strings) - 1}\x00"
        body = re.sub(r'<\|"\|>(.*?)<\|"\|>', keep, body, flags=re.S)
        body = _GEMMA4_KEY.sub(r'\1"\2":', body)
        body = re.sub("\x00(\\d+)\x00", lambda m: json.dumps(strings[int(m.group(1))]), body)
        calls.append((name, json.loads(body)))
    return _GEMMA4.sub("", text), calls


def _pythonic(text: str, schemas: dict) -> tuple[str, list] | None:
    bodies, rest = _between(text, "<|tool_call_start|>", "<|tool_call_end|>")
    calls = []
    for body in bodies:
        tree = ast.parse(body.strip(), mode="eval").body  # parsed, never evaluated
        for call in tree.elts if isinstance(tree, ast.List) else [tree]:
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
                raise ValueError("not a call with keyword arguments")
            calls.append((call.func.id, {k.arg: ast.literal_eval(k.value) for k in call.keywords}))
    return rest, calls


# Order matters: a template that matches an earlier family's marker belongs to it (Qwen3-Coder
# templates also say `<tool_call>`, so qwen3_coder comes before hermes).
FORMATS: tuple[ToolFormat, ...] = (
    ToolFormat("harmony", ("<|channel|>", "to=functions."), ("to=functions.",), _harmony),
    ToolFormat("kimi", ("<|tool_call_begin|>",), ("<|tool_calls_section_begin|>", "<|tool_call_begin|>"), _kimi),
    ToolFormat("deepseek", ("<｜tool▁call▁begin｜>",), ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>"), _deepseek),
    ToolFormat("invoke", ("<invoke name=", "invoke name=", "<function name="),
               ("<minimax:tool_call>", "<｜DSML｜function_calls>", "<｜DSML｜tool_calls>", "<function name="), _invoke),
    ToolFormat("qwen3_coder", ("<parameter=",), ("<tool_call>", "<seed:tool_call>", "<function="), _qwen3_coder),
    ToolFormat("glm", ("<arg_key>",), ("<tool_call>",), _glm),
    ToolFormat("solar", ("<|tool_call:name|>",), ("<|tool_calls|>", "<|tool_call:begin|>"), _solar),
    ToolFormat("gemma4", ("<|tool_call>",), ("<|tool_call>",), _gemma4),
    ToolFormat("pythonic", ("<|tool_call_start|>",), ("<|tool_call_start|>",), _pythonic),
    ToolFormat("mistral", ("[TOOL_CALLS]",), ("[TOOL_CALLS]",), _mistral),
    ToolFormat("functionary", (">>>all", "<function="), ("<function=", ">>>"), _functionary),
    ToolFormat("hermes_apriel", ("<tool_calls>[",), ("<tool_calls>",), _json_tags("<tool_calls>", "</tool_calls>")),
    ToolFormat("hermes_minimax", ("<tool_calls>",), ("<tool_calls>",), _json_tags("<tool_calls>", "</tool_calls>")),
    ToolFormat("hermes_nemotron", ("<TOOLCALL>",), ("<TOOLCALL>",), _json_tags("<TOOLCALL>", "</TOOLCALL>")),
    ToolFormat("command_r", ("<|START_ACTION|>",), ("<|START_ACTION|>",), _json_tags("<|START_ACTION|>", "<|END_ACTION|>")),
    ToolFormat("apertus", ("<|tools_prefix|>",), ("<|tools_prefix|>",), _json_tags("<|tools_prefix|>", "<|tools_suffix|>")),
    ToolFormat("gigachat", ("<|function_call|>",), ("<|function_call|>",), _json_tags("<|function_call|>", "<|message_sep|>")),
    ToolFormat("gigachat3", ("'function call'",), ("function call<|role_sep|>",),
               _json_tags("function call<|role_sep|>", "<|message_sep|>")),
    ToolFormat("firefunction", ("functools[",), ("functools",), _json_tags("functools", "<|eot_id|>")),
    ToolFormat("hermes", ("<tool_call>",), ("<tool_call>",), _json_tags("<tool_call>", "</tool_call>")),
    ToolFormat("llama3", ("<|python_tag|>", "\"parameters\": ", "{\"name\": \""), ("<|python_tag|>", "{"), _llama3, at_start_only=True),
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
