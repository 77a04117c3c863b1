"""Tool calling through real clients against SmolLM2 with real tool-capable templates
(Qwen2.5's hermes `<tool_call>` format, Llama 3.1's bare JSON): forced calls (`required`, a
named function) are valid every time, free output is parsed by the template family's parser,
streamed deltas reassemble to the whole reply, and a full round trip renders through the
template."""

import json

import jsonschema
import ollama
import openai
import pytest
import requests

from tests.e2e.clients.conftest import TOOLS_LLAMA, TOOLS_QWEN

pytestmark = [pytest.mark.shared, pytest.mark.slow]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}}, "required": ["timezone"]}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Current time in a timezone", "parameters": TIME},
    },
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Forces the hermes format on free output (tool_choice auto), so that the parser is tested on
# what the model streams, not only on strings.
HERMES_GRAMMAR = (
    r"""root ::= "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": """
    r'''{\"city\": \"" [A-Za-z]{1,12} "\", \"unit\": \"C\"}}\n</tool_call>"'''
)


@pytest.fixture(scope="module")
def client(tools_url):
    return openai.OpenAI(base_url=tools_url + "/v1", api_key="unused", max_retries=0)


def test_models_report_their_tool_call_format(client):
    caps = {m.id: m.model_dump()["capabilities"] for m in client.models.list().data}
    assert caps[TOOLS_QWEN]["tools"] and caps[TOOLS_QWEN]["tool_call_format"] == "hermes"
    assert caps[TOOLS_LLAMA]["tool_call_format"] == "llama3"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_calls_are_valid(client, choice, seed):
    reply = client.chat.completions.create(
        model=TOOLS_QWEN,
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        temperature=1.0,
        seed=seed,
        max_tokens=120,
        parallel_tool_calls=False,
    )
    c = reply.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    assert call.id and call.type == "function"


def _reassemble(chunks) -> tuple[str, list[dict], str]:
    content, calls, finish = "", {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += tc.id or ""
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tool_choice": "required"},
        {"tool_choice": "auto", "extra_body": {"grammar": HERMES_GRAMMAR}},  # parsed out of the template's own format
    ],
)
def test_streamed_deltas_reassemble_to_the_whole_reply(client, kwargs):
    args = dict(
        model=TOOLS_QWEN, messages=ASK, tools=TOOLS, temperature=0, max_tokens=120, parallel_tool_calls=False, **kwargs
    )
    whole = client.chat.completions.create(**args).choices[0]
    content, calls, finish = _reassemble(client.chat.completions.create(stream=True, **args))
    assert whole.finish_reason == finish == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls] == [
        (c["name"], json.loads(c["arguments"])) for c in calls
    ]
    assert (whole.message.content or "") == content == ""
    assert all(c["id"].startswith("call_") for c in calls)


def test_round_trip_renders_through_the_template(client, tools_url):
    first = (
        client.chat.completions.create(
            model=TOOLS_QWEN,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            temperature=0,
            max_tokens=120,
            parallel_tool_calls=False,
        )
        .choices[0]
        .message
    )
    call = first.tool_calls[0]
    history = ASK + [
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})},
    ]
    prompt = requests.post(
        tools_url + "/apply-template", json={"model": TOOLS_QWEN, "messages": history}, timeout=30
    ).json()["prompt"]
    args = json.loads(call.function.arguments)
    expected_call = json.dumps({"name": call.function.name, "arguments": args}, ensure_ascii=False)
    assert f"<tool_call>\n{expected_call}\n</tool_call>" in prompt  # arguments rendered as an object, not a string
    assert '<tool_response>\n{"temperature": 18, "sky": "clear"}\n</tool_response>' in prompt
    with_tools = requests.post(
        tools_url + "/apply-template", json={"model": TOOLS_QWEN, "messages": history, "tools": TOOLS}, timeout=30
    ).json()["prompt"]
    assert "<tools>" in with_tools and '"name": "get_time"' in with_tools and "<tools>" not in prompt
    final = client.chat.completions.create(
        model=TOOLS_QWEN, messages=history, tools=TOOLS, temperature=0, max_tokens=30
    )
    assert final.choices[0].message.content and final.choices[0].finish_reason in ("stop", "length")


def test_legacy_functions(client):
    reply = client.chat.completions.create(
        model=TOOLS_QWEN,
        messages=ASK,
        functions=[t["function"] for t in TOOLS],
        function_call={"name": "get_weather"},
        temperature=0,
        max_tokens=120,
    )
    c = reply.choices[0]
    assert c.finish_reason == "function_call" and c.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(c.message.function_call.arguments), WEATHER)


def test_bad_tools_are_400s(client):
    cases = [
        (dict(tools=[{"type": "code_interpreter"}]), "tools[0]"),
        (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (
            dict(
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "if": {}}}}],
                tool_choice="required",
            ),
            "tools[0].function.parameters",
        ),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=TOOLS_QWEN, messages=ASK, max_tokens=5, **kwargs)
        assert e.value.body["param"] == param


def test_ollama_client_tools(tools_url):
    """Ollama has no tool_choice: a `format` schema shaped like Llama 3.1's call makes the model
    write one, which the llama3 parser turns into `tool_calls`; then the round trip."""
    client = ollama.Client(host=tools_url)
    call_schema = {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "parameters": WEATHER},
        "required": ["name", "parameters"],
    }
    reply = client.chat(
        model=TOOLS_LLAMA, messages=ASK, tools=TOOLS, format=call_schema, options={"temperature": 0, "num_predict": 80}
    )
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather" and reply.message.content == ""
    jsonschema.validate(dict(call.function.arguments), WEATHER)
    streamed = list(
        client.chat(
            model=TOOLS_LLAMA,
            messages=ASK,
            tools=TOOLS,
            format=call_schema,
            stream=True,
            options={"temperature": 0, "num_predict": 80},
        )
    )
    calls = [tc for part in streamed for tc in (part.message.tool_calls or [])]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        (call.function.name, dict(call.function.arguments))
    ]
    history = ASK + [reply.message, {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}]
    final = client.chat(model=TOOLS_QWEN, messages=history, tools=TOOLS, options={"temperature": 0, "num_predict": 20})
    assert final.message.content


def test_anthropic_tool_use(tools_url):
    import anthropic

    client = anthropic.Anthropic(base_url=tools_url, api_key="unused", max_retries=0)
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"]["description"],
            "input_schema": t["function"]["parameters"],
        }
        for t in TOOLS
    ]
    msg = client.messages.create(
        model=TOOLS_QWEN,
        max_tokens=120,
        messages=ASK,
        tools=tools,
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    )
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    with client.messages.stream(
        model=TOOLS_QWEN,
        max_tokens=120,
        messages=ASK,
        tools=tools,
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    ) as stream:
        streamed = stream.get_final_message()
    assert [(b.name, b.input) for b in streamed.content if b.type == "tool_use"] == [(use.name, use.input)]
    history = ASK + [
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}]},
    ]
    final = client.messages.create(
        model=TOOLS_QWEN, max_tokens=20, messages=history, tools=tools, extra_body={"temperature": 0}
    )
    assert final.content[0].type == "text"
