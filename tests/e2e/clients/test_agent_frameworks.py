"""What agent frameworks send and map, as raw HTTP against a real `rfc serve` of SmolLM2, with
its own ChatML template (no tool support in it) and with Qwen2.5's (hermes tool calls):
nested tool parameters (`$defs`, `definitions`) on every dialect's forced call, the context
errors clients map to their context-window exceptions."""

import json

import jsonschema
import pytest
import requests

from tests.e2e.clients.conftest import CHAT, TOOLS_QWEN

pytestmark = [pytest.mark.shared, pytest.mark.slow]
ASK = [{"role": "user", "content": "Add Bob, who is 30, to the team."}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
# A pydantic model with a nested model, as pydantic writes it (and draft-07's `definitions`)
NESTED = {"type": "object", "properties": {"who": {"$ref": "#/$defs/Person"}}, "required": ["who"], "$defs": {"Person": PERSON}}
NESTED_07 = {"type": "object", "properties": {"who": {"$ref": "#/definitions/Person"}}, "required": ["who"],
             "definitions": {"Person": PERSON}}
# A second tool whose `Person` is another schema: renamed, not merged
OTHER = {"type": "object", "properties": {"boss": {"$ref": "#/$defs/Person"}}, "required": ["boss"],
         "$defs": {"Person": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}}}


@pytest.fixture(scope="module", params=[CHAT, TOOLS_QWEN])
def served(request) -> tuple[str, str]:
    """(base url, model): SmolLM2 with its own template, and with Qwen2.5's."""
    url = request.getfixturevalue("url" if request.param == CHAT else "tools_url")
    return url, request.param


def post(served, path: str, body: dict) -> requests.Response:
    url, model = served
    return requests.post(url + path, json={"model": model, **body}, timeout=120)


@pytest.mark.parametrize("params", [NESTED, NESTED_07], ids=["$defs", "definitions"])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add_member"}}], ids=["required", "named"])
def test_chat_forced_call_with_nested_parameters(served, params, choice):
    tools = [{"type": "function", "function": {"name": "add_member", "parameters": params}},
             {"type": "function", "function": {"name": "set_boss", "parameters": OTHER}}]
    r = post(served, "/v1/chat/completions", {"messages": ASK, "tools": tools, "tool_choice": choice, "temperature": 0,
                                              "max_tokens": 120, "parallel_tool_calls": False})
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert c["finish_reason"] == "tool_calls", c
    (call,) = c["message"]["tool_calls"]
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}[call["function"]["name"]]
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


def test_responses_and_anthropic_forced_calls_with_nested_parameters(served):
    r = post(served, "/v1/responses", {"input": ASK, "tools": [{"type": "function", "name": "add_member", "parameters": NESTED_07}],
                                       "tool_choice": "required", "temperature": 0, "max_output_tokens": 120})
    assert r.status_code == 200, r.text
    (call,) = [o for o in r.json()["output"] if o["type"] == "function_call"]
    jsonschema.validate(json.loads(call["arguments"]), NESTED_07)
    r = post(served, "/v1/messages", {"messages": ASK, "tools": [{"name": "add_member", "input_schema": NESTED}],
                                      "tool_choice": {"type": "any", "disable_parallel_tool_use": True}, "max_tokens": 120,
                                      "temperature": 0})
    assert r.status_code == 200, r.text
    (use,) = [b for b in r.json()["content"] if b["type"] == "tool_use"]
    jsonschema.validate(use["input"], NESTED)


LONG = "hello " * 9000  # past SmolLM2's 8192 tokens


def test_context_overflow_in_each_dialects_words(served):
    for path, body in [("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}], "max_tokens": 5}),
                       ("/v1/responses", {"input": LONG, "max_output_tokens": 5}),
                       ("/v1/completions", {"prompt": "hi " * 9000, "max_tokens": 5})]:
        r = post(served, path, body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded", (path, error)
        assert error["message"].startswith("This model's maximum context length is 8192 tokens. However, "), error
    r = post(served, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 4000}], "max_tokens": 5000})
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded" and error["param"] == "max_tokens", r.text
    prompt = int(error["message"].split("tokens (")[1].split(" ")[0])
    assert error["message"] == (f"This model's maximum context length is 8192 tokens. However, you requested {prompt + 5000} "
                                f"tokens ({prompt} in the messages, 5000 in the completion). Please reduce the length of the "
                                "messages or completion.")
    r = post(served, "/v1/messages", {"messages": [{"role": "user", "content": "hi " * 9000}], "max_tokens": 5})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith("prompt is too long: "), error
    assert error["message"].endswith(" tokens > 8192 maximum"), error


# pydantic's set[str], bytes, Path and IPvAnyAddress
LENIENT = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "uniqueItems": True,
                                                     "maxItems": 3},
                                            "blob": {"type": "string", "format": "binary", "maxLength": 8},
                                            "path": {"type": "string", "format": "path", "maxLength": 8},
                                            "ip": {"type": "string", "format": "ipvanyaddress", "maxLength": 8}},
           "required": ["tags", "blob", "path", "ip"]}


def test_lenient_schemas_are_accepted(served):
    tools = [{"type": "function", "function": {"name": "tag", "parameters": LENIENT}}]
    r = post(served, "/v1/chat/completions", {"messages": ASK, "tools": tools, "tool_choice": "required", "max_tokens": 120,
                                              "temperature": 0, "parallel_tool_calls": False})
    assert r.status_code == 200, r.text
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    assert set(json.loads(call["function"]["arguments"])) == {"tags", "blob", "path", "ip"}
    r = post(served, "/v1/chat/completions", {"messages": ASK, "max_tokens": 120, "temperature": 0, "response_format": {
        "type": "json_schema", "json_schema": {"name": "tags", "schema": LENIENT}}})
    assert r.status_code == 200, r.text


def test_open_integers_stop_at_16_digits(served):
    """SmolLM2 copies a 20-digit number into an open integer unless the grammar stops the
    integer at 16 digits, as llama.cpp's does (and runs on to max_tokens when asked for a huge one)."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    for prompt in ("Count: 12345678901234567890", "give a huge number"):
        r = post(served, "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], "max_tokens": 40,
                                                  "temperature": 0, "response_format": {
                                                      "type": "json_schema", "json_schema": {"name": "n", "schema": schema}}})
        assert r.status_code == 200, r.text
        c = r.json()["choices"][0]
        assert c["finish_reason"] == "stop", c
        assert abs(json.loads(c["message"]["content"])["a"]) < 10 ** 16, c
