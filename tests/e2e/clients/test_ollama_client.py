"""The official `ollama` Python package against `rfc serve`, unchanged but for the host."""

import math

import ollama
import pytest
import requests

from tests.e2e.clients.conftest import CHAT, DEMO

pytestmark = [pytest.mark.shared, pytest.mark.slow]
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def client(url):
    return ollama.Client(host=url)


def test_list_show_and_ps_describe_both_models(client):
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {DEMO, CHAT}
    assert listed[CHAT].details.family == "llama" and listed[CHAT].details.quantization_level == "Q4_1"
    assert listed[CHAT].details.parameter_size == "135M" and listed[CHAT].size > 90_000_000
    assert listed[DEMO].details.parameter_size == "260K" and len(listed[DEMO].digest) == 64
    shown = client.show(CHAT)
    assert "<|im_start|>" in shown.template and "completion" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["llama.context_length"] == 8192
    assert client.show(DEMO).template == "{{ .Prompt }}"  # no template of its own: the prompt as it is
    running = {m.model: m for m in client.ps().models}
    assert set(running) == {DEMO, CHAT} and running[CHAT].context_length == 8192


def test_generate_streamed_equals_whole(client):
    whole = client.generate(model=DEMO, prompt="Once upon a time", options=GREEDY, stream=False)
    parts = list(client.generate(model=DEMO, prompt="Once upon a time", options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == whole.response and whole.response.startswith(", there was")
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    for final in (whole, parts[-1]):
        assert final.done_reason == "length" and final.eval_count == 24 and final.prompt_eval_count == 5
        assert isinstance(final.total_duration, int) and final.total_duration >= final.eval_duration > 0
        assert final.context[-24:] and len(final.context) == 5 + 24


def test_generate_through_the_template_unless_raw(client, url):
    templated = client.generate(
        model=CHAT, prompt="Hi", system="Be brief.", options={**GREEDY, "num_predict": 6}, stream=False
    )
    assert templated.prompt_eval_count > 10  # ChatML turns around the two words
    raw = client.generate(model=CHAT, prompt="Hi", raw=True, options={**GREEDY, "num_predict": 6}, stream=False)
    assert raw.prompt_eval_count == 1


def test_chat_streamed_equals_whole(client):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    whole = client.chat(model=CHAT, messages=messages, options=GREEDY, stream=False)
    parts = list(client.chat(model=CHAT, messages=messages, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content != ""
    assert whole.message.role == "assistant" and parts[-1].done and whole.done_reason in ("stop", "length")


def test_an_empty_chat_loads_the_model(client):
    reply = client.chat(model=CHAT, messages=[], stream=False)
    assert reply.done and reply.done_reason == "load"


def test_embed(client):
    one = client.embed(model=CHAT, input="The sky is blue")
    two = client.embed(model=CHAT, input=["The sky is blue", "Grass is green"])
    assert len(two.embeddings) == 2 and len(two.embeddings[0]) == 576  # SmolLM2's hidden size
    assert two.embeddings[0] == pytest.approx(one.embeddings[0], abs=1e-6)
    assert math.isclose(sum(x * x for x in two.embeddings[1]), 1.0, rel_tol=1e-5)
    assert two.prompt_eval_count > 0 and two.embeddings[0] != two.embeddings[1]
    short = client.embed(model=CHAT, input="The sky is blue", dimensions=64)
    assert len(short.embeddings[0]) == 64
    legacy = client.embeddings(model=DEMO, prompt="hello")
    assert len(legacy.embedding) == 64


def test_errors_are_ollama_shaped(client, url):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404 and DEMO in e.value.error and CHAT in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=DEMO, prompt="x", options={"temperature": "hot"})
    assert e.value.status_code == 400 and "options.temperature" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=DEMO, prompt="x", options={"mirostat": 2})
    assert e.value.status_code == 400 and "mirostat" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=CHAT, messages=[{"role": "user", "content": "what is this?", "images": ["aGVsbG8="]}])
    assert e.value.status_code == 400 and "images" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama3")  # model management is the operator's (tests/e2e/test_model_verbs.py)
    assert e.value.status_code == 403 and "admin key" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.push("llama3")
    assert e.value.status_code == 501 and "rfc compile" in e.value.error
    r = requests.post(
        url + "/api/generate", json={"model": DEMO, "prompt": "x", "options": {"num_predict": "many"}}, timeout=10
    )
    assert r.status_code == 400 and set(r.json()) == {"error"}
    assert requests.get(url + "/", timeout=10).text == "Ollama is running"
    assert requests.get(url + "/api/version", timeout=10).json()["version"]
