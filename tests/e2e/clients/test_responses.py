"""The Responses API with tools, `text.format` and stored responses
(`previous_response_id`, GET / DELETE, `input_items`), through openai-python's
`responses.create` and `responses.stream`; stored responses belong to the API key that made
them. (The AI SDK's default `openai(id)` provider: tests/node/responses.mjs.)"""

import json

import jsonschema
import openai
import pytest

from tests.e2e.clients.conftest import RESPONSES_KEYS, TOOLS_QWEN

pytestmark = [pytest.mark.shared, pytest.mark.slow]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER,
        "strict": True,
    }
]
CAT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
FORMAT = {"format": {"type": "json_schema", "name": "cat", "schema": CAT, "strict": True}}


def client(url: str, key: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=RESPONSES_KEYS[key], max_retries=0)


def test_tool_round_trip_by_previous_response_id(responses_url):
    c = client(responses_url)
    first = c.responses.create(
        model=TOOLS_QWEN,
        input="What is the weather in Paris?",
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_output_tokens=80,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and len(calls) >= 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    second = c.responses.create(
        model=TOOLS_QWEN,
        previous_response_id=first.id,
        tools=TOOLS,
        temperature=0,
        max_output_tokens=16,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"celsius": 21}'}],
    )
    assert second.previous_response_id == first.id and second.output_text
    # the conversation so far: the first turn's input, its call and the result in the prompt
    assert second.usage.input_tokens > first.usage.input_tokens
    # stored, the caller's own
    assert c.responses.retrieve(first.id).output[0].id == first.output[0].id
    items = c.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]
    other = client(responses_url, 1)
    for ask in (
        lambda: other.responses.retrieve(first.id),
        lambda: other.responses.input_items.list(first.id),
        lambda: other.responses.delete(first.id),
        lambda: other.responses.create(
            model=TOOLS_QWEN, input="hi", previous_response_id=first.id, max_output_tokens=16
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            ask()
    c.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(first.id)


def test_store_false_is_not_kept(responses_url):
    c = client(responses_url)
    kept = c.responses.create(model=TOOLS_QWEN, input="Say hi", max_output_tokens=16, temperature=0)
    assert kept.store is True and c.responses.retrieve(kept.id).id == kept.id
    r = c.responses.create(model=TOOLS_QWEN, input="Say hi", store=False, max_output_tokens=16, temperature=0)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=TOOLS_QWEN, input="And again?", previous_response_id=r.id, max_output_tokens=16)


def test_text_format_json_schema(responses_url):
    r = client(responses_url).responses.create(
        model=TOOLS_QWEN, input="Describe a cat as JSON.", text=FORMAT, temperature=0, max_output_tokens=80
    )
    jsonschema.validate(json.loads(r.output_text), CAT)
    assert r.text.format.type == "json_schema"


def test_stream_with_tools_and_text_format(responses_url):
    c = client(responses_url)
    with c.responses.stream(
        model=TOOLS_QWEN,
        input="What is the weather in Paris?",
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_output_tokens=80,
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments)["unit"] in ("C", "F")
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    whole = c.responses.create(
        model=TOOLS_QWEN,
        input="What is the weather in Paris?",
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_output_tokens=80,
    )
    assert [(i.name, i.arguments) for i in whole.output if i.type == "function_call"] == [
        (i.name, i.arguments) for i in calls
    ]
    with c.responses.stream(
        model=TOOLS_QWEN, input="Describe a cat as JSON.", text=FORMAT, temperature=0, max_output_tokens=80
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text
    jsonschema.validate(json.loads(text), CAT)
    assert c.responses.retrieve(final.id).output_text == text


def test_the_store_keeps_at_most_max_stored_responses(demo_bundle, tmp_path):
    from tests.e2e.conftest import ServerProcess

    proc = ServerProcess(demo_bundle, "--max-stored-responses", "2", log_dir=tmp_path).wait_ready()
    try:
        c = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0)
        ids = [c.responses.create(model="stories260K", input=f"Story {i}", max_output_tokens=16).id for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(ids[0])  # the oldest went first
        assert [c.responses.retrieve(i).id for i in ids[1:]] == ids[1:]
    finally:
        proc.stop()
