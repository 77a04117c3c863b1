"""Mistral's templates (Nemo, Small 3.2) take only 9-character alphanumeric
tool-call ids. An agent loop's second turn (the call and its result sent back) used to be a
400 on every route: the server handed out `call_…` ids. Driven with the openai, anthropic and
ollama packages; the first turn's call is forced (`tool_choice`), so SmolLM2 makes one."""

import json
import re

import anthropic
import ollama
import openai
import pytest

from tests.e2e.clients.conftest import MISTRAL_NEMO, MISTRAL_SMALL

pytestmark = [pytest.mark.shared, pytest.mark.slow]
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER},
}
ASK = "What is the weather in Paris?"
MODELS = [MISTRAL_NEMO, MISTRAL_SMALL]


@pytest.mark.parametrize("model", MODELS)
def test_openai_agent_loop(mistral_url, model):
    client = openai.OpenAI(base_url=mistral_url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": ASK}]
    first = client.chat.completions.create(
        model=model, messages=messages, tools=[TOOL], tool_choice="required", temperature=0, max_tokens=60
    )
    call = first.choices[0].message.tool_calls[0]
    assert MISTRAL_ID.fullmatch(call.id), call.id
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21})},
    ]
    second = client.chat.completions.create(model=model, messages=messages, tools=[TOOL], temperature=0, max_tokens=8)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # streamed, the ids have the form too
    stream = client.chat.completions.create(
        model=model,
        messages=messages[:1],
        tools=[TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    ids = [tc.id for chunk in stream if chunk.choices for tc in chunk.choices[0].delta.tool_calls or [] if tc.id]
    assert ids and all(MISTRAL_ID.fullmatch(i) for i in ids)
    # another server's ids (call_…) in the history are mapped, the same on the call and its result
    other = [
        messages[0],
        {**messages[1], "tool_calls": [{**messages[1]["tool_calls"][0], "id": "call_abc123def456"}]},
        {**messages[2], "tool_call_id": "call_abc123def456"},
    ]
    assert client.chat.completions.create(model=model, messages=other, temperature=0, max_tokens=4).choices


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_agent_loop(mistral_url, model):
    client = anthropic.Anthropic(base_url=mistral_url, api_key="unused", max_retries=0)
    tool = {"name": "get_weather", "description": "Current weather in a city", "input_schema": WEATHER}
    messages = [{"role": "user", "content": ASK}]
    first = client.messages.create(
        model=model, max_tokens=60, messages=messages, tools=[tool], tool_choice={"type": "any"}
    )
    use = next(b for b in first.content if b.type == "tool_use")
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}]},
    ]
    second = client.messages.create(model=model, max_tokens=8, messages=messages, tools=[tool])
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")


@pytest.mark.parametrize("model", MODELS)
def test_ollama_agent_loop(mistral_url, model):
    """Ollama's histories carry no ids at all: the call and its result get matching ones."""
    client = ollama.Client(host=mistral_url)
    messages = [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "21 C", "tool_name": "get_weather"},
    ]
    reply = client.chat(model=model, messages=messages, tools=[TOOL], options={"temperature": 0, "num_predict": 8})
    assert reply.done and reply.message.role == "assistant"
