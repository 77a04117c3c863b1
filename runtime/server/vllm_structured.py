"""vLLM's structured outputs on the OpenAI routes: `structured_outputs: {json | regex | choice |
grammar | json_object}` (vLLM 0.10.2 on) and the `guided_json`, `guided_regex`, `guided_choice`
and `guided_grammar` fields it replaced (removed in vLLM 0.12, still sent by many clients).

Each is one constraint, as OpenAI's `response_format` or llama.cpp's `json_schema` is, and
goes through the same engine (runtime/sampling/constraints.py): `json` a JSON schema (an
object, or its JSON text as vLLM also takes it), `regex` a regex the whole output matches
(Rust regex syntax, as vLLM's guidance backend reads it), `choice` a list of strings the
output is exactly one of, `grammar` a GBNF grammar (the EBNF of vLLM's xgrammar examples; a
Lark grammar is recognised too).

What the engine cannot honour is a 400 naming the field, never ignored: `whitespace_pattern`
(JSON is written compact), `structural_tag`, and keys of `structured_outputs` vLLM does not
define. vLLM's switches that only narrow what rfc already does are accepted:
`disable_any_whitespace` and `disable_additional_properties` (rfc's JSON has no free
whitespace, and an object schema that does not say `additionalProperties` takes no other keys)
and `disable_fallback` (there is one engine). `guided_decoding_backend` names a backend to use
and is ignored for the same reason."""

import json
from collections.abc import Callable

from rfc.runtime.server.api_fields import JSON_SCHEMA
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind, RequestFields

_CHOICES = {"type": "array", "minItems": 1, "items": {"type": "string"}}
_JSON = {"anyOf": [JSON_SCHEMA, {"type": "string", "description": "the schema's JSON text"}]}
_SWITCHES = ("disable_fallback", "disable_any_whitespace", "disable_additional_properties")
_REFUSED = {
    "whitespace_pattern": "JSON is written without free whitespace",
    "structural_tag": "structural tags are not supported",
}
_NULL = {"type": "null"}
STRUCTURED_OUTPUTS = {
    "type": "object",
    # null is absent, as for a body's own fields
    "properties": {
        **{
            name: {"anyOf": [shape, _NULL]}
            for name, shape in (
                ("json", _JSON),
                ("regex", {"type": "string"}),
                ("choice", _CHOICES),
                ("grammar", {"type": "string"}),
                ("json_object", {"type": "boolean"}),
                *((switch, {"type": "boolean"}) for switch in _SWITCHES),
            )
        },
        **{name: {**_NULL, "description": f"refused: {why}"} for name, why in _REFUSED.items()},
    },
    "additionalProperties": False,
    "description": "vLLM's: one of json (a JSON schema), regex, choice (a list of strings), grammar (GBNF), "
    "json_object; whitespace_pattern and structural_tag are refused",
}

FIELDS = (
    Field("structured_outputs", Kind.JSON, schema=STRUCTURED_OUTPUTS),
    Field("guided_json", Kind.JSON, schema=_JSON, description="vLLM's (before 0.12): structured_outputs.json"),
    Field("guided_regex", Kind.STRING, description="vLLM's (before 0.12): structured_outputs.regex"),
    Field("guided_choice", Kind.JSON, schema=_CHOICES, description="vLLM's (before 0.12): structured_outputs.choice"),
    Field("guided_grammar", Kind.STRING, description="vLLM's (before 0.12): structured_outputs.grammar"),
    Field(
        "guided_whitespace_pattern",
        Kind.JSON,
        schema=_NULL,
        description=f"refused: {_REFUSED['whitespace_pattern']}",
    ),
    Field("guided_decoding_backend", Kind.STRING, description="ignored: one engine serves every constraint"),
    Field("structural_tag", Kind.JSON, schema=_NULL, description=f"refused: {_REFUSED['structural_tag']}"),
)

Build = Callable[[object], object]  # Grammars -> Grammar


def vllm_constraints(f: RequestFields) -> list[tuple[str, Build]]:
    """The constraints a body asks for through vLLM's fields: (field name, builder) pairs."""
    asked = []
    for name in ("guided_whitespace_pattern", "structural_tag"):
        if f.sent(name) is not None:
            raise bad_request(f"'{name}' is not supported: {_REFUSED[name.removeprefix('guided_')]}", name)
    if f.raw("guided_json") is not None:
        asked.append(_json(f.raw("guided_json"), "guided_json"))
    if f.string("guided_regex") is not None:
        asked.append(_regex(f.string("guided_regex"), "guided_regex"))
    if f.raw("guided_choice") is not None:
        asked.append(_choice(f.raw("guided_choice"), "guided_choice"))
    if f.string("guided_grammar") is not None:
        asked.append(_grammar(f.string("guided_grammar"), "guided_grammar"))
    outputs = f.raw("structured_outputs")
    if outputs is not None:
        asked.append(_structured_outputs(outputs))
    return asked


def _structured_outputs(raw: object) -> tuple[str, Build]:
    if not isinstance(raw, dict):
        raise bad_request("'structured_outputs' must be an object", "structured_outputs")
    for key, value in raw.items():
        where = f"structured_outputs.{key}"
        if key in _REFUSED and value is not None:
            raise bad_request(f"'{where}' is not supported: {_REFUSED[key]}", where)
        if key in _SWITCHES and value is not None and not isinstance(value, bool):
            raise bad_request(f"'{where}' must be a boolean", where)
        if key not in (*_REFUSED, *_SWITCHES, "json", "regex", "choice", "grammar", "json_object"):
            name = key if len(key) <= 64 else key[:64] + "..."
            raise bad_request(
                f"'structured_outputs.{name}' is not one of vLLM's structured outputs "
                "(json, regex, choice, grammar, json_object)",
                "structured_outputs",
            )
    json_object = raw.get("json_object")
    if json_object is not None and not isinstance(json_object, bool):
        raise bad_request("'structured_outputs.json_object' must be a boolean", "structured_outputs.json_object")
    kinds = [k for k in ("json", "regex", "choice", "grammar") if raw.get(k) is not None]
    kinds += ["json_object"] if json_object else []
    if len(kinds) != 1:
        raise bad_request(
            "'structured_outputs' takes exactly one of json, regex, choice, grammar, json_object"
            + (f" (got {', '.join(kinds)})" if kinds else ""),
            "structured_outputs",
        )
    kind = kinds[0]
    where = f"structured_outputs.{kind}"
    value = raw.get(kind)
    if kind == "json":
        return _json(value, where)
    if kind == "json_object":
        return where, lambda g: g.any_json_object(where)
    if kind == "choice":
        return _choice(value, where)
    if not isinstance(value, str):
        raise bad_request(f"'{where}' must be a string", where)
    return _regex(value, where) if kind == "regex" else _grammar(value, where)


def _json(value: object, where: str) -> tuple[str, Build]:
    if isinstance(value, str):  # vLLM takes the schema's JSON text as well
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise bad_request(f"'{where}' must be a JSON schema: an object, or its JSON text", where) from None
    return where, lambda g: g.json_schema(value, where)


def _regex(source: str, where: str) -> tuple[str, Build]:
    return where, lambda g: g.regex(source, where)


def _choice(options: object, where: str) -> tuple[str, Build]:
    return where, lambda g: g.choice(options, where)


def _grammar(source: str, where: str) -> tuple[str, Build]:
    return where, lambda g: g.gbnf(source, where)
