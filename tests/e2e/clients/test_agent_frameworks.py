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
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
# A pydantic model with a nested model, as pydantic writes it (and draft-07's `definitions`)
NESTED = {
    "type": "object",
    "properties": {"who": {"$ref": "#/$defs/Person"}},
    "required": ["who"],
    "$defs": {"Person": PERSON},
}
NESTED_07 = {
    "type": "object",
    "properties": {"who": {"$ref": "#/definitions/Person"}},
    "required": ["who"],
    "definitions": {"Person": PERSON},
}
# A second tool whose `Person` is another schema: renamed, not merged
OTHER = {
    "type": "object",
    "properties": {"boss": {"$ref": "#/$defs/Person"}},
    "required": ["boss"],
    "$defs": {"Person": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
}


@pytest.fixture(scope="module", params=[CHAT, TOOLS_QWEN])
def served(request) -> tuple[str, str]:
    """(base url, model): SmolLM2 with its own template, and with Qwen2.5's."""
    url = request.getfixturevalue("url" if request.param == CHAT else "tools_url")
    return url, request.param


def post(served, path: str, body: dict) -> requests.Response:
    url, model = served
    return requests.post(url + path, json={"model": model, **body}, timeout=120)


@pytest.mark.parametrize("params", [NESTED, NESTED_07], ids=["$defs", "definitions"])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "add_member"}}], ids=["required", "named"]
)
def test_chat_forced_call_with_nested_parameters(served, params, choice):
    tools = [
        {"type": "function", "function": {"name": "add_member", "parameters": params}},
        {"type": "function", "function": {"name": "set_boss", "parameters": OTHER}},
    ]
    r = post(
        served,
        "/v1/chat/completions",
        {
            "messages": ASK,
            "tools": tools,
            "tool_choice": choice,
            "temperature": 0,
            "max_tokens": 120,
            "parallel_tool_calls": False,
        },
    )
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert c["finish_reason"] == "tool_calls", c
    (call,) = c["message"]["tool_calls"]
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}[call["function"]["name"]]
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


def test_responses_and_anthropic_forced_calls_with_nested_parameters(served):
    r = post(
        served,
        "/v1/responses",
        {
            "input": ASK,
            "tools": [{"type": "function", "name": "add_member", "parameters": NESTED_07}],
            "tool_choice": "required",
            "temperature": 0,
            "max_output_tokens": 120,
        },
    )
    assert r.status_code == 200, r.text
    (call,) = [o for o in r.json()["output"] if o["type"] == "function_call"]
    jsonschema.validate(json.loads(call["arguments"]), NESTED_07)
    r = post(
        served,
        "/v1/messages",
        {
            "messages": ASK,
            "tools": [{"name": "add_member", "input_schema": NESTED}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "max_tokens": 120,
            "temperature": 0,
        },
    )
    assert r.status_code == 200, r.text
    (use,) = [b for b in r.json()["content"] if b["type"] == "tool_use"]
    jsonschema.validate(use["input"], NESTED)


LONG = "hello " * 9000  # past SmolLM2's 8192 tokens


def test_context_overflow_in_each_dialects_words(served):
    for path, body in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}], "max_tokens": 5}),
        ("/v1/responses", {"input": LONG, "max_output_tokens": 16}),
        ("/v1/completions", {"prompt": "hi " * 9000, "max_tokens": 5}),
    ]:
        r = post(served, path, body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded", (path, error)
        assert error["message"].startswith("This model's maximum context length is 8192 tokens. However, "), error
    r = post(
        served, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 4000}], "max_tokens": 5000}
    )
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded" and error["param"] == "max_tokens", (
        r.text
    )
    prompt = int(error["message"].split("tokens (")[1].split(" ")[0])
    assert error["message"] == (
        f"This model's maximum context length is 8192 tokens. However, you requested "
        f"{prompt + 5000} tokens ({prompt} in the messages, 5000 in the completion). Please "
        f"reduce the length of the "
        "messages or completion."
    )
    r = post(served, "/v1/messages", {"messages": [{"role": "user", "content": "hi " * 9000}], "max_tokens": 5})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith("prompt is too long: "), error
    assert error["message"].endswith(" tokens > 8192 maximum"), error


# pydantic's set[str], bytes, Path and IPvAnyAddress
LENIENT = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "uniqueItems": True, "maxItems": 3},
        "blob": {"type": "string", "format": "binary", "maxLength": 8},
        "path": {"type": "string", "format": "path", "maxLength": 8},
        "ip": {"type": "string", "format": "ipvanyaddress", "maxLength": 8},
    },
    "required": ["tags", "blob", "path", "ip"],
}


def test_lenient_schemas_are_accepted(served):
    tools = [{"type": "function", "function": {"name": "tag", "parameters": LENIENT}}]
    r = post(
        served,
        "/v1/chat/completions",
        {
            "messages": ASK,
            "tools": tools,
            "tool_choice": "required",
            "max_tokens": 120,
            "temperature": 0,
            "parallel_tool_calls": False,
        },
    )
    assert r.status_code == 200, r.text
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    assert set(json.loads(call["function"]["arguments"])) == {"tags", "blob", "path", "ip"}
    r = post(
        served,
        "/v1/chat/completions",
        {
            "messages": ASK,
            "max_tokens": 120,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "tags", "schema": LENIENT}},
        },
    )
    assert r.status_code == 200, r.text


def test_open_integers_stop_at_16_digits(served):
    """SmolLM2 copies a 20-digit number into an open integer unless the grammar stops the
    integer at 16 digits, as llama.cpp's does (and runs on to max_tokens when asked for a huge one)."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    for prompt in ("Count: 12345678901234567890", "give a huge number"):
        r = post(
            served,
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 40,
                "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
            },
        )
        assert r.status_code == 200, r.text
        c = r.json()["choices"][0]
        assert c["finish_reason"] == "stop", c
        assert abs(json.loads(c["message"]["content"])["a"]) < 10**16, c


WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
]


def _sse(r: requests.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def test_a_forced_call_cut_off_is_a_partial_tool_call(served):
    body = {
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": WEATHER,
        "tool_choice": "required",
        "max_tokens": 14,
        "temperature": 0,
        "parallel_tool_calls": False,
    }
    c = post(served, "/v1/chat/completions", body).json()["choices"][0]
    assert c["finish_reason"] == "length" and not c["message"]["content"], c
    (call,) = c["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["function"]["arguments"].startswith('{"city'), call
    chunks = _sse(post(served, "/v1/chat/completions", {**body, "stream": True}))
    deltas = [ch["choices"][0]["delta"] for ch in chunks if ch["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == ""
    streamed = [tc for d in deltas for tc in d.get("tool_calls") or []]
    assert [(tc["function"]["name"], tc["function"]["arguments"]) for tc in streamed] == [
        (call["function"]["name"], call["function"]["arguments"])
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    r = post(
        served,
        "/v1/responses",
        {
            "input": "Weather in Paris?",
            "tools": [{"type": "function", **WEATHER[0]["function"]}],
            "tool_choice": "required",
            "max_output_tokens": 16,
            "temperature": 0,
        },
    ).json()
    assert r["status"] == "incomplete" and [(o["type"], o["status"]) for o in r["output"]] == [
        ("function_call", "incomplete")
    ], r
    r = post(
        served,
        "/v1/messages",
        {
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "max_tokens": 12,
            "tools": [{"name": "get_weather", "input_schema": WEATHER[0]["function"]["parameters"]}],
            "tool_choice": {"type": "any"},
            "temperature": 0,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["stop_reason"] == "max_tokens" and [b["type"] for b in r.json()["content"]] == ["tool_use"], r.text


ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 30}}, "required": ["answer"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]


def _call_or_answer(message: dict, fmt: dict | None) -> str:
    """'call' for a valid call of get_weather, 'answer' for content (valid under `fmt`)."""
    if message.get("tool_calls"):
        (call,) = message["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER[0]["function"]["parameters"])
        assert not message["content"]
        return "call"
    assert message["content"] and not message["content"].startswith('{"response"'), message
    if fmt is not None:
        jsonschema.validate(json.loads(message["content"]), fmt)
    return "answer"


def test_format_and_tools_together(served):
    """A forced call ignores the format; with auto the format constrains the answer and the
    tools stay callable (SmolLM2 with Qwen2.5's template calls the tool here)."""
    r = post(
        served,
        "/v1/chat/completions",
        {
            "messages": PARIS,
            "tools": WEATHER,
            "tool_choice": "required",
            "response_format": FORMAT,
            "max_tokens": 60,
            "temperature": 0,
            "parallel_tool_calls": False,
        },
    )
    assert r.status_code == 200, r.text
    assert _call_or_answer(r.json()["choices"][0]["message"], None) == "call"
    body = {
        "messages": PARIS,
        "tools": WEATHER,
        "response_format": FORMAT,
        "max_tokens": 60,
        "temperature": 0,
        "parallel_tool_calls": False,
    }
    r = post(served, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    kind = _call_or_answer(c["message"], ANSWER)
    assert c["finish_reason"] == ("tool_calls" if kind == "call" else "stop"), c
    if served[1] == TOOLS_QWEN:
        assert kind == "call"
    chunks = _sse(post(served, "/v1/chat/completions", {**body, "stream": True}))
    deltas = [ch["choices"][0]["delta"] for ch in chunks if ch["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == (c["message"]["content"] or "")
    assert [tc["function"]["arguments"] for d in deltas for tc in d.get("tool_calls") or []] == [
        tc["function"]["arguments"] for tc in c["message"].get("tool_calls") or []
    ]
    r = post(
        served,
        "/v1/responses",
        {
            "input": PARIS,
            "tools": [{"type": "function", **WEATHER[0]["function"]}],
            "max_output_tokens": 60,
            "temperature": 0,
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER}},
        },
    )
    assert r.status_code == 200 and r.json()["output"], r.text


def test_tools_on_a_template_without_tool_calling(url):
    """SmolLM2's own template renders no tools: /v1 describes them in a system message and
    reads llama-server's generic JSON back; Ollama's /api/chat refuses them as Ollama does."""
    served = (url, CHAT)
    models = {m["id"]: m for m in requests.get(url + "/v1/models", timeout=30).json()["data"]}
    assert (
        models[CHAT]["capabilities"]["tools"] is False and models[CHAT]["capabilities"]["tool_call_format"] == "generic"
    )
    prompt = post(served, "/apply-template", {"messages": PARIS, "tools": WEATHER}).json()["prompt"]
    assert "You can call any of the following tools" in prompt and '"name": "get_weather"' in prompt
    assert "Respond in JSON format, either with `tool_calls`" in prompt
    for choice in ("auto", "required"):
        r = post(
            served,
            "/v1/chat/completions",
            {
                "messages": PARIS,
                "tools": WEATHER,
                "tool_choice": choice,
                "max_tokens": 60,
                "temperature": 0,
                "parallel_tool_calls": False,
            },
        )
        assert r.status_code == 200, r.text
        kind = _call_or_answer(r.json()["choices"][0]["message"], None)
        assert choice == "auto" or kind == "call"
    r = post(served, "/api/chat", {"messages": PARIS, "tools": WEATHER, "stream": False})
    assert r.status_code == 400 and r.json()["error"] == f"{CHAT} does not support tools", r.text
    show = post(served, "/api/show", {}).json()
    assert "tools" not in show["capabilities"]


def test_ollama_generic_tools_switch(demo_bundle, tmp_path):
    from tests.e2e.conftest import ServerProcess

    proc = ServerProcess(demo_bundle, "--ollama-generic-tools", log_dir=tmp_path).wait_ready()
    try:
        model = requests.get(proc.url + "/v1/models", timeout=30).json()["data"][0]["id"]
        assert (
            "tools" in requests.post(proc.url + "/api/show", json={"model": model}, timeout=30).json()["capabilities"]
        )
        tiny = [{"type": "function", "function": {"name": "f"}}]  # the demo model's context is 512 tokens
        r = requests.post(
            proc.url + "/api/chat",
            json={
                "model": model,
                "messages": PARIS,
                "tools": tiny,
                "stream": False,
                "options": {"num_predict": 30, "temperature": 0},
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["message"]["content"] or r.json()["message"]["tool_calls"]
    finally:
        proc.stop()


def test_ollama_chat_past_the_context_trims_as_ollama_does(url):
    """The demo model (512 tokens of context): /api/chat leaves out the oldest messages, then
    the start of the latest, where /v1 answers context_length_exceeded."""
    from tests.e2e.clients.conftest import DEMO

    long = "once upon a time there was a little dog " * 30  # ~300 tokens
    history = [{"role": "system", "content": "Tell stories."}]
    for i in range(4):
        history += [{"role": "user", "content": f"{i} {long}"}, {"role": "assistant", "content": "ok"}]
    for messages in (
        history + [{"role": "user", "content": "The end?"}],
        history[:1] + [{"role": "user", "content": long * 3 + " THE END"}],
    ):
        r = requests.post(
            url + "/api/chat",
            json={
                "model": DEMO,
                "messages": messages,
                "stream": False,
                "options": {"num_predict": 2, "temperature": 0},
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert 400 < r.json()["prompt_eval_count"] < 512, r.json()  # as much as fits was kept
        r = requests.post(
            url + "/v1/chat/completions", json={"model": DEMO, "messages": messages, "max_tokens": 2}, timeout=60
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


def test_audio_output_is_refused_not_ignored(url):
    body = {"model": CHAT, "messages": ASK, "max_tokens": 2}
    for extra, param in (
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ):
        r = requests.post(url + "/v1/chat/completions", json={**body, **extra}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert (
        requests.post(url + "/v1/chat/completions", json={**body, "modalities": ["text"]}, timeout=60).status_code
        == 200
    )
