"""/tokenize and /detokenize in both dialects on the real SmolLM2: llama.cpp's (`content`,
`with_pieces`) and vLLM's (`prompt` or `messages`, answered with `count`, `max_model_len`,
`tokens`, `token_strs`). vLLM's forms give the ids the generation routes feed: a chat's count
is the prompt_tokens /v1/chat/completions reports for the same messages."""

import pytest
import requests

from tests.e2e.clients.conftest import CHAT

pytestmark = pytest.mark.shared

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def _post(url: str, route: str, body: dict) -> requests.Response:
    return requests.post(url + route, json={"model": CHAT, **body}, timeout=30)


def test_vllm_prompt_and_messages_are_what_generation_feeds(url):
    llama = _post(url, "/tokenize", {"content": "Hello world", "add_special": True}).json()
    vllm = _post(url, "/tokenize", {"prompt": "Hello world", "return_token_strs": True}).json()
    assert vllm["tokens"] == llama["tokens"] and vllm["count"] == len(vllm["tokens"]) == 2
    assert vllm["token_strs"] == ["Hello", "Ġworld"] and vllm["max_model_len"] > 0
    completion = _post(url, "/v1/completions", {"prompt": "Hello world", "max_tokens": 1}).json()
    assert completion["usage"]["prompt_tokens"] == vllm["count"]

    chat = _post(url, "/tokenize", {"messages": MESSAGES}).json()
    usage = _post(url, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1}).json()["usage"]
    assert chat["count"] == usage["prompt_tokens"] and chat["token_strs"] is None
    prompt = _post(url, "/apply-template", {"messages": MESSAGES}).json()["prompt"]
    assert _post(url, "/detokenize", {"tokens": chat["tokens"]}).json() == {"content": prompt, "prompt": prompt}
    bare = _post(url, "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False}).json()
    assert bare["tokens"] == chat["tokens"][: bare["count"]] and bare["count"] < chat["count"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "content"),
        ({"content": "a", "prompt": "b"}, "prompt"),
        ({"prompt": "a", "messages": MESSAGES}, "messages"),
        ({"prompt": 5}, "prompt"),
        ({"messages": "hi"}, "messages"),
    ],
)
def test_a_tokenize_body_names_its_mistake(url, body, param):
    reply = _post(url, "/tokenize", body)
    assert reply.status_code == 400 and param in reply.json()["error"], reply.text
