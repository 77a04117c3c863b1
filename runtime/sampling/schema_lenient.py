"""JSON schemas read as llama.cpp's and Ollama's schema converters read them, before
llguidance compiles them:

- keywords that constrain what a token-by-token grammar cannot (`uniqueItems`, pydantic's
  `set[...]`) and `format` values llguidance does not know (`binary`, `path`,
  `ipvanyaddress`, ...) are accepted and ignored: the output may break them, and the server
  logs which were ignored;
- a number left unbounded gets at most 16 integral digits (llama.cpp's `integral-part`), so
  greedy decoding cannot run `1000000000...` to max_tokens: an integer lies within
  +-(10^16 - 2) (the largest 16-digit bound a double holds exactly), a number strictly within
  +-10^16 (its fraction unbounded). A bound the schema sets itself is kept.

Every other keyword llguidance does not implement stays a 400 (runtime/sampling/constraints.py)."""

from __future__ import annotations

# The `format` values llguidance enforces; any other is ignored.
KNOWN_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri", "unknown"}
)
IGNORED_KEYWORDS = ("uniqueItems",)
# 10^16 - 1 as llguidance reads bounds (as doubles) is 10^16: the largest 16-digit one it keeps.
INTEGER_BOUND = 10**16 - 2
NUMBER_BOUND = 1e16

_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SINGLES = (
    "items",
    "additionalItems",
    "not",
    "contains",
    "if",
    "then",
    "else",
    "propertyNames",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
)


def lenient(schema: object) -> tuple[object, list[str]]:
    """A copy of `schema` with what is ignored taken out and open numbers bounded; the sorted
    names of what was ignored (`uniqueItems`, `format: binary`)."""
    ignored: set[str] = set()
    return _walk(schema, ignored), sorted(ignored)


def _walk(node: object, ignored: set[str]) -> object:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in IGNORED_KEYWORDS:
        if key in out:
            del out[key]
            ignored.add(key)
    fmt = out.get("format")
    if isinstance(fmt, str) and fmt not in KNOWN_FORMATS:
        del out["format"]
        ignored.add(f"format: {fmt}")
    for key in _MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: _walk(v, ignored) for k, v in out[key].items()}
    for key in _LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_walk(v, ignored) for v in out[key]]
    for key in _SINGLES:
        if isinstance(out.get(key), dict):
            out[key] = _walk(out[key], ignored)
    _bound_numbers(out)
    return out


def _bound_numbers(node: dict) -> None:
    types = node.get("type")
    types = {types} if isinstance(types, str) else set(types) if isinstance(types, list) else set()
    if "integer" in types:
        low, high = -INTEGER_BOUND, INTEGER_BOUND
        lower, upper = "minimum", "maximum"
    elif "number" in types:
        low, high = -NUMBER_BOUND, NUMBER_BOUND
        lower, upper = "exclusiveMinimum", "exclusiveMaximum"
    else:
        return
    if "minimum" not in node and "exclusiveMinimum" not in node:
        node[lower] = low
    if "maximum" not in node and "exclusiveMaximum" not in node:
        node[upper] = high
