"""The forced-call schema lifts every tool's `$defs` / `definitions` into its own root: a list
of calls validates exactly when each call's arguments validate against that tool's own
parameters (jsonschema is the oracle), whatever names the tools' definitions share."""

import jsonschema
import pytest

from rfc.runtime.server.call_schema import calls_schema

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
NESTED = {
    "type": "object",
    "properties": {"who": {"$ref": "#/$defs/Person"}},
    "required": ["who"],
    "$defs": {"Person": PERSON},
}
DRAFT7 = {
    "type": "object",
    "properties": {"who": {"$ref": "#/definitions/Person"}},
    "required": ["who"],
    "definitions": {"Person": PERSON},
}
# the same definition name for another schema, a pointer into a definition, and an escaped name
OTHER = {
    "type": "object",
    "properties": {
        "boss": {"$ref": "#/$defs/Person"},
        "age": {"$ref": "#/$defs/Person/properties/id"},
        "tag": {"$ref": "#/$defs/a~1b"},
    },
    "required": ["boss"],
    "$defs": {
        "Person": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
        "a/b": {"enum": ["x"]},
    },
}
# recursion through the parameters' own root, and a `$ref` that is data (a const), not a schema
TREE = {
    "type": "object",
    "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}, "k": {"const": {"$ref": "#"}}},
}
TOOLS = {"add": NESTED, "old": DRAFT7, "boss": OTHER, "tree": TREE}
VALID = {
    "add": {"who": {"name": "Bob", "age": 30}},
    "old": {"who": {"name": "Ann", "age": 3}},
    "boss": {"boss": {"id": 1}, "age": 4, "tag": "x"},
    "tree": {"kids": [{"kids": []}], "k": {"$ref": "#"}},
}
INVALID = {
    "add": {"who": {"name": "Bob"}},
    "old": {"who": {"age": "3", "name": "x"}},
    "boss": {"boss": {"name": "Bob", "age": 3}},
    "tree": {"kids": [{"kids": [1]}]},
}


@pytest.mark.parametrize("name", TOOLS)
def test_each_call_validates_as_its_tool_parameters_do(name):
    schema = calls_schema([{"name": n, "parameters": p} for n, p in TOOLS.items()], single=False)
    jsonschema.Draft202012Validator.check_schema(schema)
    for args, valid in ((VALID[name], True), (INVALID[name], False)):
        assert jsonschema.Draft202012Validator(TOOLS[name]).is_valid(args) is valid  # the oracle agrees with the cases
        calls = [{"name": name, "arguments": args}]
        assert jsonschema.Draft202012Validator(schema).is_valid(calls) is valid, (name, args)


def test_colliding_definitions_are_renamed_and_the_tools_left_alone():
    schema = calls_schema([{"name": "add", "parameters": NESTED}, {"name": "boss", "parameters": OTHER}], single=True)
    assert set(schema["$defs"]) == {"Person", "boss__Person", "a/b"} and schema["maxItems"] == 1
    # the request's own schema unchanged
    assert NESTED["properties"]["who"] == {"$ref": "#/$defs/Person"} and "$defs" in NESTED


def test_a_tool_without_definitions_stays_inline():
    schema = calls_schema([{"name": "f", "parameters": PERSON}], single=True)
    assert "$defs" not in schema and schema["items"]["properties"]["arguments"] == PERSON
