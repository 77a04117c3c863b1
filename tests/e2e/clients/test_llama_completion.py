"""llama-server's /completion on the real SmolLM2, as its users call it: its sampling options,
llama.cpp's logit_bias forms, grammar and json_schema, n_probs against /v1/completions'
logprobs, stop words, and every option rfc does not implement refused by name. (llama.cpp's
greedy tokens through /completion: tests/e2e/test_smollm2.py.)"""

import json
import math

import pytest
import requests

from tests.e2e.clients.conftest import CHAT

pytestmark = pytest.mark.shared

PROMPT = "The capital of France is"


def _complete(url: str, route: str = "/completion", **body) -> requests.Response:
    return requests.post(url + route, json={"model": CHAT, "prompt": PROMPT, "temperature": 0, **body}, timeout=60)


def test_stop_words_logit_bias_and_the_alias(url):
    free = _complete(url, n_predict=8).json()
    first = free["content"].split()[0]  # " Paris." greedy
    stopped = _complete(url, n_predict=8, stop=[first]).json()
    before = free["content"][: free["content"].index(first)]
    assert (stopped["content"], stopped["stop_type"], stopped["stopping_word"]) == (before, "word", first)
    assert free["stop_type"] == "limit" and free["tokens_predicted"] == 8 and free["timings"]["predicted_n"] == 8
    settings = free["generation_settings"]
    assert (settings["top_k"], settings["top_p"], settings["min_p"], settings["n_predict"]) == (40, 0.95, 0.05, 8)
    banned = _complete(url, n_predict=1, return_tokens=True).json()["tokens"][0]
    for bias in ([[banned, False]], {str(banned): -100}, [[_text(url, banned), False]]):
        reply = _complete(url, "/completions", n_predict=1, return_tokens=True, logit_bias=bias).json()
        assert reply["tokens"] and reply["tokens"][0] != banned, bias


def _text(url: str, token: int) -> str:
    return requests.post(url + "/detokenize", json={"model": CHAT, "tokens": [token]}, timeout=10).json()["content"]


def test_n_probs_are_the_openai_routes_logprobs(url):
    reply = _complete(url, n_predict=3, n_probs=2).json()
    openai = requests.post(
        url + "/v1/completions",
        json={"model": CHAT, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "logprobs": 2},
        timeout=60,
    ).json()["choices"][0]["logprobs"]
    probs = reply["completion_probabilities"]
    assert [p["token"] for p in probs] == openai["tokens"]
    assert all(math.isclose(p["logprob"], lp, abs_tol=1e-6) for p, lp in zip(probs, openai["token_logprobs"]))
    for p, top in zip(probs, openai["top_logprobs"]):
        assert {t["token"]: t["logprob"] for t in p["top_logprobs"]} == pytest.approx(top, abs=1e-6)
        assert bytes(p["bytes"]).decode() == p["token"] and len(p["top_logprobs"]) == 2


def test_grammar_and_json_schema(url):
    reply = _complete(url, prompt="Colour:", n_predict=8, grammar='root ::= " red" | " blue"').json()
    assert reply["content"] in (" red", " blue") and reply["stop_type"] == "eos"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = _complete(url, n_predict=40, json_schema=schema).json()
    assert isinstance(json.loads(reply["content"])["n"], int)


def test_streamed_pieces_carry_their_tokens_and_probabilities(url):
    r = _complete(url, n_predict=4, n_probs=1, stream=True)
    events = [json.loads(line[6:]) for line in r.iter_lines() if line]
    pieces, last = events[:-1], events[-1]
    assert len(pieces) == 4 and all(len(e["tokens"]) == 1 and len(e["completion_probabilities"]) == 1 for e in pieces)
    assert last["stop"] and last["tokens_predicted"] == 4 and "timings" in last


@pytest.mark.parametrize(
    "body, param",
    [
        ({"mirostat": 2}, "mirostat"),
        ({"typical_p": 0.5}, "typical_p"),
        ({"dynatemp_range": 0.5}, "dynatemp_range"),
        ({"samplers": ["top_k", "temperature"]}, "samplers"),
        ({"n_probs": 21}, "n_probs"),
        ({"n_predict": 0}, "n_predict"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),
        ({"logit_bias": [[1, "x"]]}, "logit_bias"),
        ({"grammar": 'root ::= "a"', "json_schema": {}}, "json_schema"),
        ({"grammar": "root ::= ("}, "grammar"),
        ({"ignore_eos": True, "json_schema": {}}, "ignore_eos"),
    ],
)
def test_what_it_cannot_honour_is_a_400_naming_the_field(url, body, param):
    reply = _complete(url, **body)
    assert reply.status_code == 400 and param in reply.json()["error"], reply.text


def test_props_give_the_context_defaults_and_template(url):
    props = requests.get(url + "/props", params={"model": CHAT}, timeout=10).json()
    settings = props["default_generation_settings"]
    ctx = requests.post(url + "/tokenize", json={"model": CHAT, "prompt": "x"}, timeout=10).json()["max_model_len"]
    assert settings["n_ctx"] == ctx and settings["model"] == CHAT
    assert {k: settings["params"][k] for k in ("temperature", "top_k", "top_p", "min_p", "n_predict", "seed")} == {
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
        "n_predict": -1,
        "seed": -1,
    }
    assert "<|im_start|>" in props["chat_template"] and props["model_path"].endswith(".gguf")
    assert props["total_slots"] >= 1 and props["modalities"] == {"vision": False, "audio": False}
    assert requests.get(url + "/props", params={"model": "no-such-model"}, timeout=10).status_code == 404


def test_llama_servers_embedding_is_the_openai_routes_vector(url):
    texts = ["The sky is blue", "Grass is green"]
    openai_reply = requests.post(url + "/v1/embeddings", json={"model": CHAT, "input": texts}, timeout=60).json()
    for route, body in (("/embedding", {"content": texts}), ("/embeddings", {"input": texts})):
        reply = requests.post(url + route, json={"model": CHAT, **body}, timeout=60).json()
        assert [r["index"] for r in reply] == [0, 1]
        assert [r["embedding"] for r in reply] == [[d["embedding"]] for d in openai_reply["data"]]
    refused = requests.post(url + "/embedding", json={"model": CHAT, "content": "x", "embd_normalize": -1}, timeout=10)
    assert refused.status_code == 400 and "embd_normalize" in refused.json()["error"]
