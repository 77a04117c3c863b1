"""The parsers of runtime/text/tool_calls.py, one per template family: each takes the output from
the first call marker on and returns (the text outside the calls, [(name, arguments)]), or
raises ValueError & co. on malformed text (the caller keeps it as content).

Every parser runs in time linear in the output. The output is the model's, and a model can be
talked into repeating a call marker: the backtracking regexes these parsers used cost 0.5-20 s
on 32 KB of that, cubic for one family, with the GIL held. So the text is
scanned with `str.find` from a moving position (`_Text` remembers each search, so no stretch
of the text is searched twice for one thing), the regexes left only match a run of one
character class at a known position or find one character (neither can backtrack), and JSON
is decoded with `raw_decode` from an index, never on ever-shorter copies of the text. Each
scanner matches exactly what the regex it replaced matched; its docstring names that regex."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator

Parser = Callable[[str, dict[str, dict]], "tuple[str, list[tuple[str, object]]] | None"]

_DECODER = json.JSONDecoder()


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


# -- scanning ------------------------------------------------------------------------------


class _Search:
    """The first match at or after a position of a forward search, remembered: asked again
    from anywhere between where it last searched from and what it found, it answers without
    searching. Parsers ask from positions that only move forward, so a search costs one pass
    over the text in all, however often it is asked (asking from every candidate start again
    is what made the regexes quadratic)."""

    def __init__(self, search: Callable[[int], int]):
        self._search = search
        self._from, self._at = 0, None

    def first(self, pos: int) -> int:
        at = self._at
        if at is None or pos < self._from or (at >= 0 and pos > at):
            at = self._search(pos)
            self._from, self._at = pos, at
        return at


class _Text:
    """One output under scan: `find(needle, pos)` is `text.find(needle, pos)`, remembered per
    needle (see `_Search`)."""

    def __init__(self, text: str):
        self.text = text
        self._needles: dict[str, _Search] = {}

    def find(self, needle: str, pos: int) -> int:
        search = self._needles.get(needle)
        if search is None:
            search = self._needles[needle] = _Search(lambda p, n=needle: self.text.find(n, p))
        return search.first(pos)

    def find_any(self, needles: tuple[str, ...], pos: int) -> tuple[int, str]:
        """The leftmost occurrence of any of `needles` (the first listed where two start at the
        same place, as a regex alternation picks), or (-1, "")."""
        best, found = -1, ""
        for needle in needles:
            at = self.find(needle, pos)
            if at >= 0 and (best < 0 or at < best):
                best, found = at, needle
        return best, found


# Runs of one character class, matched at a known position: nothing follows the class in the
# pattern, so the match never backtracks.
_SPACES = re.compile(r"\s*")  # what str.strip() strips
_DOTTED_NAME = re.compile(r"[\w.-]*")
_KEY_CHARS = re.compile(r"[\w-]*")
_NAME_STOP = re.compile(r"[>\s]")  # one character: searching for it cannot backtrack either


def _skip(run: re.Pattern, text: str, pos: int) -> int:
    return run.match(text, pos).end()


def _is_tag_char(c: str) -> bool:
    """`[\\w:｜]`: the characters of a tag's namespace prefix (`minimax:`, `｜DSML｜`)."""
    return c.isalnum() or c in "_:｜"


def _end_or_eos(t: _Text, end: str, pos: int) -> tuple[int, int]:
    """Where a body from `pos` ends for `(.*?)(?:END|$)` (re.S): (body end, match end). `$` is
    the end of the text or the place just before a final newline."""
    at = t.find(end, pos)
    if at >= 0:
        return at, at + len(end)
    n = len(t.text)
    eos = n - 1 if t.text.endswith("\n") and pos <= n - 1 else n
    return eos, eos


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` without the (start, end) spans, which are in order and do not overlap."""
    out, pos = [], 0
    for start, end in spans:
        out.append(text[pos:start])
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _remove(text: str, needles: tuple[str, ...]) -> str:
    """`text` without any of `needles`: what `re.sub("A|B|...", "", text)` leaves."""
    t, spans, pos = _Text(text), [], 0
    while True:
        at, needle = t.find_any(needles, pos)
        if at < 0:
            return _cut(text, spans)
        spans.append((at, at + len(needle)))
        pos = at + len(needle)


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
            bodies.append(text[i + len(start) :])
            break
        bodies.append(text[i + len(start) : j])
        pos = j + len(end)
    return bodies, "".join(outside)


# -- JSON ----------------------------------------------------------------------------------


def _json_at(text: str, pos: int) -> tuple[object, int]:
    """The JSON value at `pos` (after whitespace) and the index after it."""
    return _DECODER.raw_decode(text, _skip(_SPACES, text, pos))


def _json_prefix(text: str) -> tuple[object, str]:
    """The JSON value at the start of `text` (after whitespace) and the text after it."""
    value, end = _json_at(text, 0)
    return value, text[end:]


def _name_args(obj: object) -> tuple[str, object]:
    if not isinstance(obj, dict):
        raise ValueError("a tool call must be an object")
    name = obj.get("name", obj.get("tool_name"))
    if name is None and len(obj) == 1 and not {"arguments", "parameters"} & obj.keys():  # Apertus: {"NAME": {args}}
        ((name, args),) = obj.items()
        return name, args
    args = obj.get("arguments", obj.get("parameters", {}))
    return name, args


def _json_values(body: str) -> list:
    """Several JSON values one after another (MiniMax-M1 puts one object per line)."""
    out, pos = [], _skip(_SPACES, body, 0)
    while pos < len(body):
        value, pos = _DECODER.raw_decode(body, pos)
        out.append(value)
        pos = _skip(_SPACES, body, pos)
    return out


def json_tags(start: str, end: str) -> Parser:
    def parse(text: str, schemas: dict) -> tuple[str, list] | None:
        bodies, rest = _between(text, start, end)
        calls = []
        for body in bodies:
            body = body.strip()
            value = None
            if body[:1] in "[{":
                try:
                    value = json.loads(body)
                except ValueError:
                    pass
            if value is None:
                value = _json_values(body)
            for obj in value if isinstance(value, list) else [value]:
                calls.append(_name_args(obj))
        return rest, calls

    return parse


def llama3(text: str, schemas: dict) -> tuple[str, list] | None:
    text = text.strip().removeprefix("<|python_tag|>")
    calls, pos = [], 0
    while text.startswith("{", _skip(_SPACES, text, pos)):
        value, pos = _json_at(text, pos)
        calls.append(_name_args(value))
        pos = _skip(_SPACES, text, pos)  # several calls: `{...}; {...}`
        if text.startswith(";", pos):
            pos += 1
    return text[pos:], calls


_MISTRAL_ARGS = "[ARGS]"


def mistral(text: str, schemas: dict) -> tuple[str, list] | None:
    parts = text.split("[TOOL_CALLS]")
    calls, rest = [], parts[0]
    for part in parts[1:]:  # each part is read once: linear
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


# -- XML-style families --------------------------------------------------------------------


def _qwen_elements(text: str, tag: str, unclosed_to_end: bool) -> Iterator[tuple[int, int, str, int, int]]:
    """(start, end, name, body start, body end) of each `<TAG=NAME>BODY</TAG>`:
    `<TAG=([^>\\s]+)>(.*?)(?:</TAG>|$)` (re.S) for functions, whose last may be unclosed, and
    `<TAG=([^>\\s]+)>(.*?)</TAG>` for parameters."""
    t, pos, opening, closing = _Text(text), 0, f"<{tag}=", f"</{tag}>"
    # Where a name stops: searched, not matched from each opening, for `<function=<function=...`
    # has every opening's name run to the same place.
    name_stop = _Search(lambda p: m.start() if (m := _NAME_STOP.search(text, p)) else len(text))
    while (i := t.find(opening, pos)) >= 0:
        name_start = i + len(opening)
        k = name_stop.first(name_start)
        if k == name_start or not text.startswith(">", k):
            pos = i + 1
            continue
        if unclosed_to_end:
            body_end, end = _end_or_eos(t, closing, k + 1)
        else:
            body_end = t.find(closing, k + 1)
            end = body_end + len(closing)
            if body_end < 0:
                pos = i + 1
                continue
        yield i, end, text[name_start:k], k + 1, body_end
        pos = end


def _qwen_parameters(body: str) -> list[tuple[str, str]]:
    """`<parameter=([^>\\s]+)>\\n?(.*?)\\n?</parameter>` (re.S): one newline each side of the
    value is the template's."""
    out = []
    for _, _, name, start, end in _qwen_elements(body, "parameter", False):
        if body.startswith("\n", start):
            start += 1
        if end > start and body[end - 1] == "\n":
            end -= 1
        out.append((name, body[start:end]))
    return out


def qwen3_coder(text: str, schemas: dict) -> tuple[str, list] | None:
    calls, spans = [], []
    for start, end, name, body_start, body_end in _qwen_elements(text, "function", True):
        props = schemas.get(name, {})
        params = _qwen_parameters(text[body_start:body_end])
        calls.append((name, {k: _coerce(v, props.get(k)) for k, v in params}))
        spans.append((start, end))
    rest = _remove(_cut(text, spans), ("<tool_call>", "</tool_call>", "<seed:tool_call>", "</seed:tool_call>"))
    return rest, calls


def _glm_args(body: str) -> list[tuple[str, str]]:
    """`<arg_key>(.*?)</arg_key>\\s*<arg_value>(.*?)</arg_value>` (re.S): a key runs to the first
    `</arg_key>` that a value follows."""
    t, out, pos = _Text(body), [], 0
    while (i := t.find("<arg_key>", pos)) >= 0:
        key_end = t.find("</arg_key>", i + 9)
        while key_end >= 0 and not body.startswith("<arg_value>", value := _skip(_SPACES, body, key_end + 10)):
            key_end = t.find("</arg_key>", key_end + 1)
        if key_end < 0:  # no later key has a value either
            break
        value_end = t.find("</arg_value>", value + 11)
        if value_end < 0:  # nor does any later value end
            break
        out.append((body[i + 9 : key_end], body[value + 11 : value_end]))
        pos = value_end + 12
    return out


def glm(text: str, schemas: dict) -> tuple[str, list] | None:
    bodies, rest = _between(text, "<tool_call>", "</tool_call>")
    calls = []
    for body in bodies:
        name = body.split("<arg_key>", 1)[0].strip()
        props = schemas.get(name, {})
        calls.append((name, {k.strip(): _coerce(v, props.get(k.strip())) for k, v in _glm_args(body)}))
    return rest, calls


def _closing_tag(t: _Text, kind: str) -> _Search:
    """The first `</PREFIX KIND>` (`</(?:[\\w:｜]*)KIND>`) at or after a position: its start."""
    text, anchor = t.text, kind + ">"

    def search(pos: int) -> int:
        at = t.find(anchor, pos)
        while at >= 0:
            s = at
            while s > pos and _is_tag_char(text[s - 1]):
                s -= 1
            if s - 2 >= pos and text.startswith("</", s - 2):
                return s - 2
            at = t.find(anchor, at + 1)
        return -1

    return _Search(search)


def _named_elements(text: str, kinds: tuple[str, ...], flagged: bool) -> Iterator[tuple[int, int, str, str, str]]:
    """(start, end, name, string flag, body) of each
    `<(?:[\\w:｜]*)(?:KIND|...) name="([^"]+)"(?: string="(true|false)")?>(.*?)</(?:[\\w:｜]*)(?:KIND|...)>`
    (re.S; the string attribute only when `flagged`). An opening tag is found from its
    ` name="`: the kind ends right before it, the prefix runs back to the `<`."""
    t, pos = _Text(text), 0
    closings = [_closing_tag(t, kind) for kind in kinds]
    while (at := t.find(' name="', pos)) >= 0:
        pos = at + 1
        if not any(text.startswith(kind, at - len(kind)) and at - len(kind) > 0 for kind in kinds):
            continue
        start = at - 1
        while start >= 0 and _is_tag_char(text[start]):
            start -= 1
        if start < 0 or text[start] != "<":
            continue
        quote = t.find('"', at + 7)
        if quote <= at + 7:
            continue
        flag, body_start = "", quote + 2
        if flagged and text.startswith(' string="true">', quote + 1):
            flag, body_start = "true", quote + 16
        elif flagged and text.startswith(' string="false">', quote + 1):
            flag, body_start = "false", quote + 17
        elif not text.startswith(">", quote + 1):
            continue
        ends = [e for e in (c.first(body_start) for c in closings) if e >= 0]
        if not ends:  # no closing tag after this one: none after a later one either
            return
        body_end = min(ends)
        end = text.index(">", body_end) + 1
        yield start, end, text[at + 7 : quote], flag, text[body_start:body_end]
        pos = end


def invoke(text: str, schemas: dict) -> tuple[str, list] | None:
    calls, spans = [], []
    for start, end, name, _, body in _named_elements(text, ("invoke", "function"), False):
        props = schemas.get(name, {})
        args = {}
        for _, _, key, is_string, value in _named_elements(body, ("parameter", "param"), True):
            args[key] = value if is_string == "true" else _coerce(value, props.get(key))
        calls.append((name, args))
        spans.append((start, end))
    wrappers = (
        "<minimax:tool_call>",
        "</minimax:tool_call>",
        "<｜DSML｜function_calls>",
        "</｜DSML｜function_calls>",
        "<｜DSML｜tool_calls>",
        "</｜DSML｜tool_calls>",
    )
    return _remove(_cut(text, spans), wrappers), calls


# -- families with special tokens ----------------------------------------------------------

_DS_BEGIN, _DS_SEP, _DS_END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"


def _unfence(body: str) -> str:
    """The inside of a ```json fence filling `body`, or `body`: `^\\s*```(?:json)?\\s*(.*?)\\s*```\\s*$` (re.S)."""
    inner = body.lstrip()
    if not inner.startswith("```"):
        return body
    inner = inner[3:].removeprefix("json").lstrip().rstrip()
    return inner[:-3].rstrip() if inner.endswith("```") else body


def deepseek(text: str, schemas: dict) -> tuple[str, list] | None:
    """`<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)(?:<｜tool▁call▁end｜>|$)` (re.S)."""
    t, calls, spans, pos = _Text(text), [], [], 0
    while (i := t.find(_DS_BEGIN, pos)) >= 0:
        sep = t.find(_DS_SEP, i + len(_DS_BEGIN))
        if sep < 0:
            break
        body_end, end = _end_or_eos(t, _DS_END, sep + len(_DS_SEP))
        head, body = text[i + len(_DS_BEGIN) : sep], text[sep + len(_DS_SEP) : body_end]
        if head.strip() == "function":  # R1 and V3: function<sep>NAME\n```json\n{...}\n```
            name, _, body = body.partition("\n")
            body = _unfence(body)
        else:  # V3.1: NAME<sep>{...}
            name = head
        calls.append((name.strip(), json.loads(body)))
        spans.append((i, end))
        pos = end
    return _remove(_cut(text, spans), ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>")), calls


def functionary(text: str, schemas: dict) -> tuple[str, list] | None:
    if "<function=" in text:  # v3.1: `<function=([^>]+)>(.*?)</function>` (re.S)
        t, calls, spans, pos = _Text(text), [], [], 0
        while (i := t.find("<function=", pos)) >= 0:
            name_end = t.find(">", i + 10)
            body_end = t.find("</function>", name_end + 1) if name_end > i + 10 else -1
            if body_end < 0:
                pos = i + 1
                continue
            calls.append((text[i + 10 : name_end], json.loads(text[name_end + 1 : body_end])))
            spans.append((i, body_end + 11))
            pos = body_end + 11
        return _cut(text, spans), calls
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


_KIMI_BEGIN, _KIMI_ARGS, _KIMI_END = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


def _kimi_name(head: str) -> str | None:
    """The name in the text between `<|tool_call_begin|>` and the next `<`, as
    `\\s*(?:functions\\.)?([^:<]+?)(?::\\d+)?\\s*` reads it whole, or None."""
    lead = len(head) - len(head.lstrip())
    starts = [lead + 10, lead] if head.startswith("functions.", lead) else [lead]
    if lead:  # the regex backs off the leading whitespace one character at most
        starts.append(lead - 1)  # (the name may then be that whitespace character, and no less)
    colon = head.find(":", lead)
    for start in starts:
        if colon < 0:  # the name runs to the trailing whitespace, and is one character at least
            end = max(start + 1, len(head.rstrip()))
            if end <= len(head):
                return head[start:end]
        elif colon > start:  # the name ends at the colon: `:0` and whitespace follow
            index = head[colon + 1 :].rstrip()
            if index.isdecimal():
                return head[start:colon]
            return None
    return None


def kimi(text: str, schemas: dict) -> tuple[str, list] | None:
    """`<\\|tool_call_begin\\|>` HEAD `<\\|tool_call_argument_begin\\|>(.*?)<\\|tool_call_end\\|>`
    (re.S), HEAD as in `_kimi_name`: the arguments open at the first `<` after the begin marker."""
    t, calls, spans, pos = _Text(text), [], [], 0
    while (i := t.find(_KIMI_BEGIN, pos)) >= 0:
        pos = i + 1
        head_start = i + len(_KIMI_BEGIN)
        args = t.find("<", head_start)
        if args < 0 or not text.startswith(_KIMI_ARGS, args):
            continue
        name = _kimi_name(text[head_start:args])
        body_end = t.find(_KIMI_END, args + len(_KIMI_ARGS))
        if name is None or body_end < 0:
            continue
        calls.append((name, json.loads(text[args + len(_KIMI_ARGS) : body_end])))
        spans.append((i, body_end + len(_KIMI_END)))
        pos = body_end + len(_KIMI_END)
    return _remove(_cut(text, spans), ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>")), calls


def harmony(text: str, schemas: dict) -> tuple[str, list] | None:
    """`to=functions\\.([\\w.-]+)[^\\n]*?<\\|message\\|>(.*?)(?:<\\|call\\|>|$)` (re.S): the model writes
    `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>` (the
    template renders the header the other way round: ` to=functions.NAME<|channel|>commentary json`)."""
    t, calls, spans, pos = _Text(text), [], [], 0
    while (i := t.find("to=functions.", pos)) >= 0:
        pos = i + 1
        name_end = _skip(_DOTTED_NAME, text, i + 13)
        message = t.find("<|message|>", name_end)
        newline = t.find("\n", name_end)
        if name_end == i + 13 or message < 0 or 0 <= newline < message:
            continue
        body_end, end = _end_or_eos(t, "<|call|>", message + 11)
        calls.append((text[i + 13 : name_end], json.loads(text[message + 11 : body_end])))
        spans.append((i, end))
        pos = end
    return _remove(_cut(text, spans), ("<|start|>assistant", "<|channel|>commentary")), calls


_SOLAR = ("<|tool_call:begin|>", "<|tool_call:name|>", "<|tool_call:args|>", "<|tool_call:end|>")


def solar(text: str, schemas: dict) -> tuple[str, list] | None:
    """`<\\|tool_call:begin\\|>.*?<\\|tool_call:name\\|>(.*?)<\\|tool_call:args\\|>(.*?)<\\|tool_call:end\\|>`
    (re.S): each marker the first of its kind after the one before (a later one cannot
    complete a call the first could not)."""
    t, calls, spans, pos = _Text(text), [], [], 0
    while (begin := t.find(_SOLAR[0], pos)) >= 0:
        name = t.find(_SOLAR[1], begin + len(_SOLAR[0]))
        args = t.find(_SOLAR[2], name + len(_SOLAR[1])) if name >= 0 else -1
        end = t.find(_SOLAR[3], args + len(_SOLAR[2])) if args >= 0 else -1
        if end < 0:
            break
        calls.append((text[name + len(_SOLAR[1]) : args].strip(), json.loads(text[args + len(_SOLAR[2]) : end])))
        spans.append((begin, end + len(_SOLAR[3])))
        pos = end + len(_SOLAR[3])
    return _remove(_cut(text, spans), ("<|tool_calls|>", "<|calls|>")), calls


_GEMMA4_CALL, _GEMMA4_END, _GEMMA4_QUOTE = "<|tool_call>call:", "}<tool_call|>", '<|"|>'


def _gemma4_keys(text: str) -> str:
    """Bare keys quoted: `([{,])\\s*([A-Za-z_][\\w-]*)\\s*:` -> `\\1"\\2":`."""
    t, out, pos, scan = _Text(text), [], 0, 0
    while (at := t.find_any(("{", ","), scan)[0]) >= 0:
        scan = at + 1
        key = _skip(_SPACES, text, at + 1)
        if key >= len(text) or not (text[key].isascii() and (text[key].isalpha() or text[key] == "_")):
            continue
        key_end = _skip(_KEY_CHARS, text, key + 1)
        colon = _skip(_SPACES, text, key_end)
        if text.startswith(":", colon):
            out += [text[pos : at + 1], '"', text[key:key_end], '":']
            pos = scan = colon + 1
    out.append(text[pos:])
    return "".join(out)


def _gemma4_json(body: str) -> str:
    """`{key:<|"|>text<|"|>,n:2}` as JSON: `<|"|>` pairs are strings (set aside first, so that
    their text is not rewritten; an unpaired last one stays as it is), keys are bare."""
    parts = body.split(_GEMMA4_QUOTE)
    pairs = (len(parts) - 1) // 2
    outside = parts[0 : 2 * pairs + 1 : 2]
    outside[-1] = _GEMMA4_QUOTE.join(parts[2 * pairs :])
    out = [_gemma4_keys(outside[0])]
    for string, after in zip(parts[1 : 2 * pairs : 2], outside[1:]):
        out += [json.dumps(string), _gemma4_keys(after)]
    return "".join(out)


def gemma4(text: str, schemas: dict) -> tuple[str, list] | None:
    """`<\\|tool_call>call:([\\w.-]+)(\\{.*?\\})<tool_call\\|>` (re.S):
    `<|tool_call>call:NAME{key:<|"|>text<|"|>,n:2}<tool_call|>`, JSON with bare keys and
    `<|"|>` for quotes."""
    t, calls, spans, pos = _Text(text), [], [], 0
    while (i := t.find(_GEMMA4_CALL, pos)) >= 0:
        pos = i + 1
        name_end = _skip(_DOTTED_NAME, text, i + len(_GEMMA4_CALL))
        if name_end == i + len(_GEMMA4_CALL) or not text.startswith("{", name_end):
            continue
        close = t.find(_GEMMA4_END, name_end + 1)
        if close < 0:
            continue
        calls.append((text[i + len(_GEMMA4_CALL) : name_end], json.loads(_gemma4_json(text[name_end : close + 1]))))
        spans.append((i, close + len(_GEMMA4_END)))
        pos = close + len(_GEMMA4_END)
    return _cut(text, spans), calls


def pythonic(text: str, schemas: dict) -> tuple[str, list] | None:
    bodies, rest = _between(text, "<|tool_call_start|>", "<|tool_call_end|>")
    calls = []
    for body in bodies:
        try:
            tree = ast.parse(body.strip(), mode="eval").body  # parsed, never evaluated
        except MemoryError:  # CPython's parser gives up this way on deep or long invalid input
            raise ValueError("not a list of calls") from None
        for call in tree.elts if isinstance(tree, ast.List) else [tree]:
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
                raise ValueError("not a call with keyword arguments")
            calls.append((call.func.id, {k.arg: ast.literal_eval(k.value) for k in call.keywords}))
    return rest, calls
