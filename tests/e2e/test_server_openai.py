"""The OpenAI-compatible API through the official `openai` client against `rfc serve`:
greedy text equals `rfc run` for the same (rendered) prompt, streamed or not."""

import openai
import pytest
import requests

from tests.e2e.conftest import sse_json

PROMPT = "Once upon a time"
MESSAGES = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me a story."}]
# stories260K has no chat template: the ChatML fallback renders the messages.
RENDERED = (
    "<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nTell me a "
    "story.<|im_end|>\n<|im_start|>assistant\n"
)
N = 48


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["stories260K"]
    assert client.models.retrieve("stories260K").id == "stories260K"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"


def test_completion_matches_rfc_run(client, rfc_run):
    r = client.completions.create(model="any-name", prompt=PROMPT, max_tokens=N, temperature=0)
    assert r.model == "stories260K" and r.object == "text_completion"
    assert r.choices[0].text == rfc_run(PROMPT, N)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == N and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + N


def test_streamed_completion_matches_rfc_run(client, rfc_run):
    chunks = list(
        client.completions.create(
            model="x", prompt=PROMPT, max_tokens=N, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == rfc_run(PROMPT, N)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == N
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_matches_rfc_run_on_the_rendered_prompt(client, rfc_run):
    r = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=N, temperature=0)
    expected = rfc_run(RENDERED, N)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= N


def test_streamed_chat_matches_rfc_run(client, rfc_run):
    chunks = list(
        client.chat.completions.create(
            model="x", messages=MESSAGES, max_completion_tokens=N, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == rfc_run(RENDERED, N)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_raw_stream_ends_with_done(server):
    with requests.post(
        server.url + "/v1/chat/completions",
        json={"messages": MESSAGES, "max_tokens": 5, "stream": True},
        stream=True,
        timeout=60,
    ) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = r.content.decode()
    assert raw.endswith("data: [DONE]\n\n")


def test_stop_string_finishes_with_stop(client, rfc_run):
    full = rfc_run(PROMPT, N)
    stop = " Lily"
    assert stop in full
    r = client.completions.create(model="x", prompt=PROMPT, max_tokens=N, temperature=0, stop=[stop, "zzz"])
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_completion_logprobs_shape(client):
    r = client.completions.create(model="x", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) <= 3
        assert top[token] == pytest.approx(logprob)  # greedy: the chosen token is the most likely
        assert max(top.values()) == pytest.approx(logprob)


def test_chat_logprobs_shape(client):
    r = client.chat.completions.create(
        model="x", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert 0 < len(content) <= 5
    for entry in content:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_seeded_sampling_is_reproducible(client):
    kwargs = dict(model="x", prompt=PROMPT, max_tokens=20, temperature=1.0, top_p=0.95, seed=1234)
    a = client.completions.create(**kwargs).choices[0].text
    b = client.completions.create(**kwargs).choices[0].text
    assert a == b


def test_extras_and_penalties_are_accepted(client):
    r = client.completions.create(
        model="x",
        prompt=PROMPT,
        max_tokens=8,
        temperature=0.7,
        seed=1,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"432": -100},
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert r.usage.completion_tokens == 8
    assert not r.choices[0].text.startswith(",")  # token 432 (",") banned; greedy would start with it


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(n=65), "n"),
        (dict(temperature=5), "temperature"),
        (dict(logit_bias={"not-an-id": 1}), "logit_bias"),
        (dict(logit_bias={"99999": 1}), "logit_bias"),
        (dict(top_p=0), "top_p"),
        (dict(max_tokens=600), "max_tokens"),
        (dict(prompt=["a"] * 65), "prompt"),
        (dict(extra_body={"best_of": 2}), "best_of"),
    ],
)
def test_bad_completion_parameters_are_400(client, kwargs, param):
    kwargs = {"model": "x", "prompt": PROMPT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**kwargs)
    err = e.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    if param == "n":
        assert "64" in err["message"]


def test_openai_error_shape_on_bad_json(server):
    r = requests.post(
        server.url + "/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"


def test_chat_requires_messages(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[])
    assert e.value.body["param"] == "messages"


def test_streamed_chat_with_usage(server):
    body = {
        "messages": MESSAGES,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        chunks = list(sse_json(r))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 6
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
