"""The parsers of runtime/tool_calls.py, one per template family: each takes the output from
the first call marker on and returns (the text outside the calls, [(name, arguments)]), or
raises ValueError & co. on malformed text (the caller keeps it as content)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable

Parser = Callable[[str, dict[str, dict]], "tuple[str, list[tuple[str, object]]] | None"]


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


def json_tags(start: str, end: str) -> Parser:
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


def qwen3_coder(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = []
    for name, body in _QWEN_FN.findall(text):
        props = schemas.get(name, {})
        calls.append((name, {k: _coerce(v, props.get(k)) for k, v in _QWEN_PARAM.findall(body)}))
    rest = _QWEN_FN.sub("", text)
    rest = re.sub(r"</?(?:seed:)?tool_call>", "", rest)
    return rest, calls


_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def glm(text: str, schemas: dict) -> tuple[str, list] | None:
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


def invoke(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = []
    for name, body in _INVOKE.findall(text):
        props = schemas.get(name, {})
        args = {}
        for key, is_string, value in _INVOKE_PARAM.findall(body):
            args[key] = value if is_string == "true" else _coerce(value, props.get(key))
        calls.append((name, args))
    return _INVOKE_WRAPPERS.sub("", _INVOKE.sub("", text)), calls


def llama3(text: str, schemas: dict) -> tuple[str, list] | None:
    text = text.strip().removeprefix("<|python_tag|>")
    calls, rest = [], text
    while rest.strip().startswith("{"):
        value, rest = _json_prefix(rest)
        calls.append(_name_args(value))
        rest = rest.lstrip().removeprefix(";")  # several calls: `{...}; {...}`
    return rest, calls


_MISTRAL_ARGS = "[ARGS]"


def mistral(text: str, schemas: dict) -> tuple[str, list] | None:
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


def deepseek(text: str, schemas: dict) -> tuple[str, list] | None:
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


def functionary(text: str, schemas: dict) -> tuple[str, list] | None:
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


def kimi(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = [(name, json.loads(body)) for name, body in _KIMI.findall(text)]
    rest = re.sub(r"<\|tool_calls_section_(?:begin|end)\|>", "", _KIMI.sub("", text))
    return rest, calls


# The model writes `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>`;
# the template renders the header the other way round (` to=functions.NAME<|channel|>commentary json`).
_HARMONY = re.compile(r"to=functions\.([\w.-]+)[^\n]*?<\|message\|>(.*?)(?:<\|call\|>|$)", re.S)


def harmony(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = [(name, json.loads(body)) for name, body in _HARMONY.findall(text)]
    rest = _HARMONY.sub("", text)
    rest = re.sub(r"<\|start\|>assistant|<\|channel\|>commentary", "", rest)
    return rest, calls


_SOLAR = re.compile(r"<\|tool_call:begin\|>.*?<\|tool_call:name\|>(.*?)<\|tool_call:args\|>(.*?)<\|tool_call:end\|>", re.S)


def solar(text: str, schemas: dict) -> tuple[str, list] | None:
    calls = [(name.strip(), json.loads(body)) for name, body in _SOLAR.findall(text)]
    return re.sub(r"<\|tool_calls\|>|<\|calls\|>", "", _SOLAR.sub("", text)), calls


_GEMMA4 = re.compile(r"<\|tool_call>call:([\w.-]+)(\{.*?\})<tool_call\|>", re.S)
_GEMMA4_KEY = re.compile(r"([{,])\s*([A-Za-z_][\w-]*)\s*:")


def gemma4(text: str, schemas: dict) -> tuple[str, list] | None:
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


def pythonic(text: str, schemas: dict) -> tuple[str, list] | None:
    bodies, rest = _between(text, "<|tool_call_start|>", "<|tool_call_end|>")
    calls = []
    for body in bodies:
        tree = ast.parse(body.strip(), mode="eval").body  # parsed, never evaluated
        for call in tree.elts if isinstance(tree, ast.List) else [tree]:
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
                raise ValueError("not a call with keyword arguments")
            calls.append((call.func.id, {k.arg: ast.literal_eval(k.value) for k in call.keywords}))
    return rest, calls
