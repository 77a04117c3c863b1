"""Structured output on the real SmolLM2-135M-Instruct through real clients: 20 JSON schemas
through the `openai` SDK (`beta.chat.completions.parse` with pydantic models, and
`response_format`) and the `ollama` client's `format=`, each answer parsed and validated with
`jsonschema`; unsupported schema features refused with a 400 that names them.

Greedy decoding: a 135M model sampled at temperature 0.7 writes numbers of hundreds of
digits (valid JSON, cut off by max_tokens); the schemas vary instead."""

import json
import re

import jsonschema
import ollama
import openai
import pydantic
import pytest

from tests.e2e.clients.conftest import CHAT

pytestmark = [pytest.mark.shared, pytest.mark.slow]

_S = {"type": "string", "maxLength": 40}
SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": _S, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"city": _S, "country": _S}, "required": ["city", "country"]},
    {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 10}}, "required": ["score"]},
    {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["n"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": _S, "minItems": 1, "maxItems": 3}},
        "required": ["tags"],
    },
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
    {
        "type": "object",
        "properties": {"title": _S, "subtitle": _S},
        "required": ["title"],
        "additionalProperties": False,
    },  # optional field
    {
        "type": "object",
        "properties": {
            "author": {
                "type": "object",
                "properties": {"first": _S, "last": _S},
                "required": ["first", "last"],
                "additionalProperties": False,
            }
        },
        "required": ["author"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "minItems": 2, "maxItems": 4},
    {
        "type": "object",
        "properties": {
            "points": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                    "required": ["x", "y"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["points"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"status": {"const": "done"}, "count": {"type": "integer"}},
        "required": ["status", "count"],
    },
    {
        "type": "object",
        "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
        "required": ["value"],
    },
    {
        "type": "object",
        "properties": {
            "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            "currency": {"enum": ["EUR", "USD"]},
        },
        "required": ["price", "currency"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "required": ["code"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "maxItems": 2,
                "items": {"type": "array", "maxItems": 2, "items": {"type": "integer"}},
            }
        },
        "required": ["matrix"],
    },
    {
        "$defs": {
            "pet": {
                "type": "object",
                "properties": {"kind": {"enum": ["cat", "dog"]}, "name": _S},
                "required": ["kind", "name"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}, "maxItems": 2}},
        "required": ["pets"],
    },
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
        "required": ["a", "b", "c"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"date": {"type": "string", "format": "date"}},
        "required": ["date"],
        "additionalProperties": False,
    },
]
PROMPT = "Answer with JSON only. Describe something from your day."


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_openai_response_format_json_schema(client, i):
    schema = SCHEMAS[i]
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=300,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), schema)


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_ollama_format_schema(url, i):
    schema = SCHEMAS[i]
    reply = ollama.Client(host=url).chat(
        model=CHAT,
        messages=[{"role": "user", "content": PROMPT}],
        format=schema,
        options={"temperature": 0, "num_predict": 300},
    )
    assert reply.done_reason == "stop", reply.message.content
    jsonschema.validate(json.loads(reply.message.content), schema)


class Step(pydantic.BaseModel):
    explanation: str = pydantic.Field(max_length=60)
    output: int


class Solution(pydantic.BaseModel):
    steps: list[Step] = pydantic.Field(max_length=3)
    final_answer: int


def test_openai_sdk_parse_with_pydantic(client):
    reply = client.beta.chat.completions.parse(
        model=CHAT,
        messages=[{"role": "user", "content": "Solve 8x + 7 = -23"}],
        response_format=Solution,
        max_tokens=400,
        temperature=0,
    )
    assert isinstance(reply.choices[0].message.parsed, Solution)


def test_json_object_mode_and_streaming(client):
    kwargs = dict(
        model=CHAT,
        messages=[
            {"role": "user", "content": "Reply with a JSON object with two keys: the name and the age of a cat."}
        ],
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    assert isinstance(json.loads(whole), dict)
    parts = [
        c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs) if c.choices
    ]
    assert "".join(parts) == whole


def test_completions_and_llama_cpp_extras(client, url):
    import requests

    reply = client.completions.create(
        model=CHAT,
        prompt="Colour:",
        max_tokens=10,
        temperature=0,
        extra_body={"grammar": 'root ::= " red" | " green" | " blue"'},
    )
    assert reply.choices[0].text in (" red", " green", " blue")
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "pick"}],
        "max_tokens": 20,
        "temperature": 0,
        "json_schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    }
    out = requests.post(url + "/v1/chat/completions", json=body, timeout=60).json()
    assert isinstance(json.loads(out["choices"][0]["message"]["content"])["n"], int)


VLLM_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize(
    "extra, check",
    [
        ({"guided_choice": ["positive", "negative"]}, lambda text: text in ("positive", "negative")),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, lambda text: text in ("yes", "no")),
        (
            {"guided_regex": r"[a-z]{1,8}@[a-z]{1,8}\.com"},
            lambda text: re.fullmatch(r"[a-z]{1,8}@[a-z]{1,8}\.com", text),
        ),
        ({"structured_outputs": {"regex": r"\d{3}-\d{4}"}}, lambda text: re.fullmatch(r"\d{3}-\d{4}", text)),
        ({"guided_json": VLLM_SCHEMA}, lambda text: isinstance(json.loads(text)["n"], int)),
        ({"guided_json": json.dumps(VLLM_SCHEMA)}, lambda text: isinstance(json.loads(text)["n"], int)),
        (
            {"structured_outputs": {"json": VLLM_SCHEMA, "disable_any_whitespace": True}},
            lambda text: isinstance(json.loads(text)["n"], int),
        ),
        ({"structured_outputs": {"json_object": True}}, lambda text: isinstance(json.loads(text), dict)),
        ({"guided_grammar": 'root ::= "red" | "green" | "blue"'}, lambda text: text in ("red", "green", "blue")),
        ({"structured_outputs": {"grammar": 'root ::= "up" | "down"'}}, lambda text: text in ("up", "down")),
    ],
)
def test_vllm_structured_outputs(client, extra, check):
    """vLLM's fields, as its clients send them (`extra_body`): each constrains the answer."""
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Classify the mood of 'what a day' and give a number."}],
        max_tokens=60,
        temperature=0,
        extra_body=extra,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and check(choice.message.content), choice.message.content


def test_vllm_completions_and_refusals(client):
    reply = client.completions.create(
        model=CHAT, prompt="Colour:", max_tokens=10, temperature=0, extra_body={"guided_choice": [" red", " blue"]}
    )
    assert reply.choices[0].text in (" red", " blue")
    refused = [
        ({"guided_whitespace_pattern": "[ ]?"}, "guided_whitespace_pattern", "without free whitespace"),
        ({"structured_outputs": {"json": {}, "whitespace_pattern": " "}}, "structured_outputs.whitespace_pattern", ""),
        ({"structural_tag": {"structures": []}}, "structural_tag", "not supported"),
        ({"structured_outputs": {"choice": ["a"], "regex": "a"}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"jsn": {}}}, "structured_outputs", "jsn"),
        ({"guided_choice": ["a"], "response_format": {"type": "json_object"}}, "guided_choice", "not several"),
        ({"guided_json": "{not json"}, "guided_json", "JSON text"),
        ({"guided_regex": "a(b"}, "guided_regex", "unclosed group"),
        ({"guided_regex": "(x{1000}){100}"}, "guided_regex", "repeats 100000"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "non-empty list"),
    ]
    for extra, param, words in refused:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=5, extra_body=extra
            )
        assert e.value.body["param"] == param and words in e.value.body["message"], (extra, e.value.body)


@pytest.mark.parametrize(
    "schema,named",
    [
        ({"type": "object", "if": {"properties": {}}, "then": {}}, "if"),
        ({"type": "array", "contains": {"type": "string"}}, "contains"),
    ],
)
def test_unsupported_schema_is_a_400_naming_it(client, url, schema, named):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "x"}],
            max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert named in e.value.body["message"] and e.value.body["param"] == "response_format.json_schema.schema"
    with pytest.raises(ollama.ResponseError) as e2:
        ollama.Client(host=url).chat(model=CHAT, messages=[{"role": "user", "content": "x"}], format=schema)
    assert e2.value.status_code == 400 and named in e2.value.error


def test_a_grammar_the_vocabulary_cannot_write_is_a_400(client, url):
    """SmolLM2's vocabulary has no token for the byte 0xF1, so no output can hold U+51D52
    (llguidance's mask still lets one wrong byte through): the client learns that its field
    asked for the impossible, as a 400 before any output or as the stream's error event."""
    ask = {"model": CHAT, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**ask, extra_body={"guided_regex": "\U00051d52"})
    assert e.value.body["param"] == "guided_regex" and "cannot write" in e.value.body["message"]
    with pytest.raises(openai.APIError) as e:
        list(client.chat.completions.create(**ask, stream=True, extra_body={"guided_regex": "\U00051d52"}))
    assert "cannot write" in e.value.message
    with pytest.raises(ollama.ResponseError) as e2:
        ollama.Client(host=url).chat(model=CHAT, messages=ask["messages"], format={"const": "\U00051d52"})
    assert e2.value.status_code == 400 and "cannot write" in e2.value.error
