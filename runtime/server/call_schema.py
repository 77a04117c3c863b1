"""The JSON schema a forced tool call's output follows: a list of calls, each one tool's name and
arguments, the arguments following that tool's `parameters`.

A tool's parameters are a schema of their own: their `$ref`s point into their own root
(`#/$defs/Person`, draft-07's `#/definitions/Person`, `#` itself for recursion). Nested under
the list's items those pointers would point into the list's schema instead, so every tool's
`$defs` and `definitions` are lifted into the list schema's `$defs` (a name two tools use for
different schemas takes the tool's name as a prefix) and every local `$ref` rewritten to match;
a tool whose parameters refer to their own root (or to anything outside their definitions) is
itself lifted into `$defs` and referred to from its call."""

from __future__ import annotations

_DEF_MAPS = ("$defs", "definitions")
# Keywords whose values are data, not schemas: a "$ref" in there is a value to keep as it is.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def calls_schema(functions: list[dict], single: bool) -> dict:
    """The list of calls to `functions` (OpenAI function specs) as one schema; `single`: one call."""
    defs: dict[str, object] = {}
    schema = _calls(functions, single, defs)
    if defs:
        schema["$defs"] = defs
    return schema


def generic_schema(functions: list[dict], single: bool, response: object | None) -> dict:
    """llama-server's generic tool calling: the output is either `{"tool_calls": [calls]}` or
    `{"response": ...}`, the response a string or, where a response format was asked for,
    following its schema (the format constrains the answer, not the calls)."""
    defs: dict[str, object] = {}
    calls = _calls(functions, single, defs)
    answer = {"type": "string"} if response is None else _lifted(response, "response", defs)
    schema: dict = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"tool_calls": calls},
                "required": ["tool_calls"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"response": answer},
                "required": ["response"],
                "additionalProperties": False,
            },
        ]
    }
    if defs:
        schema["$defs"] = defs
    return schema


def _calls(functions: list[dict], single: bool, defs: dict[str, object]) -> dict:
    one = []
    for f in functions:
        arguments = _lifted(f["parameters"], f["name"], defs)
        one.append(
            {
                "type": "object",
                "properties": {"name": {"const": f["name"]}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    item = one[0] if len(one) == 1 else {"anyOf": one}
    return {"type": "array", "items": item, "minItems": 1, **({"maxItems": 1} if single else {})}


def _lifted(params: object, tool: str, defs: dict[str, object]) -> object:
    """`params` with its definitions moved into `defs` (renamed where taken) and its local
    `$ref`s rewritten to point there; the parameters themselves moved there too when something
    refers to their root."""
    if not isinstance(params, dict):
        return params
    renamed: dict[tuple[str, str], str] = {}
    for kind in _DEF_MAPS:
        table = params.get(kind)
        if isinstance(table, dict):
            for name, sub in table.items():
                renamed[(kind, name)] = _claim(defs, name, tool, sub)
    root_name: list[str] = []  # claimed on the first reference to the parameters' root

    def root() -> str:
        if not root_name:
            root_name.append(_claim(defs, f"{tool}__parameters", tool, None))
        return root_name[0]

    def ref(target: str) -> str:
        if not target.startswith("#"):
            return target  # not local: left for the grammar engine to refuse
        tokens = target[1:].split("/")[1:] if target != "#" else []
        if len(tokens) >= 2 and tokens[0] in _DEF_MAPS:
            new = renamed.get((tokens[0], _unescape(tokens[1])))
            if new is not None:
                return "/".join(["#", "$defs", _escape(new), *tokens[2:]])
        return "/".join(["#", "$defs", _escape(root()), *tokens])

    def walk(node: object) -> object:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out[k] = ref(v)
            elif k in _DATA_KEYWORDS:
                out[k] = v
            elif k in ("properties", "patternProperties", *_DEF_MAPS) and isinstance(v, dict):
                out[k] = {name: walk(sub) for name, sub in v.items()}  # names, then schemas
            else:
                out[k] = walk(v)
        return out

    body = walk(params)
    for kind in _DEF_MAPS:
        table = body.pop(kind, None) if isinstance(body, dict) else None
        if isinstance(table, dict):
            for name, sub in table.items():
                defs[renamed[(kind, name)]] = sub
    if root_name:
        defs[root_name[0]] = body
        return {"$ref": f"#/$defs/{_escape(root_name[0])}"}
    return body


def _claim(defs: dict[str, object], name: str, tool: str, schema: object) -> str:
    """A name in `defs` for `schema`: its own if free, else the tool's name as a prefix,
    numbered if that is taken too."""
    if name not in defs:
        defs[name] = schema  # reserved; the rewritten schema replaces it
        return name
    base = f"{tool}__{name}" if not name.startswith(f"{tool}__") else name
    candidate, n = base, 2
    while candidate in defs:
        candidate, n = f"{base}_{n}", n + 1
    defs[candidate] = schema
    return candidate


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")
