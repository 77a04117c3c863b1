"""--ctx-size (--max-model-len): `rfc serve` and `rfc run` serving 64 tokens of the demo model's
512-token context. Every API refuses a prompt past 64 with a 400 naming the numbers, lets a
generation stop at 64 with finish reason "length", and reports 64 where it describes what the
server serves (the trained 512 stays in the model's metadata)."""

import re

import pytest
import requests

from tests.conftest import rfc
from tests.e2e.conftest import ServerProcess

CTX = 64
TRAINED = 512  # stories260K's llama.context_length
LONG_TEXT = "Once upon a time there was a little girl. " * 8  # well over 64 tokens


@pytest.fixture(scope="module")
def capped(demo_bundle, tmp_path_factory):
    proc = ServerProcess(demo_bundle, "--ctx-size", str(CTX), log_dir=tmp_path_factory.mktemp("ctx"))
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def _model_id(capped) -> str:
    return requests.get(capped.url + "/v1/models", timeout=10).json()["data"][0]["id"]


def test_models_report_the_served_context_and_keep_the_trained_one(capped):
    card = requests.get(capped.url + "/v1/models", timeout=10).json()["data"][0]
    assert card["context_length"] == CTX and card["trained_context_length"] == TRAINED
    native = requests.get(capped.url + "/models", timeout=10).json()["models"][0]
    assert native["context_length"] == CTX and native["metadata"]["llama.context_length"] == TRAINED
    show = requests.post(capped.url + "/api/show", json={"model": card["id"]}, timeout=10).json()
    assert show["parameters"] == f"num_ctx {CTX}" and show["model_info"]["llama.context_length"] == TRAINED
    ps = requests.get(capped.url + "/api/ps", timeout=10).json()["models"][0]
    assert ps["context_length"] == CTX


def test_a_prompt_past_the_cap_is_400_naming_the_numbers(capped):
    model = _model_id(capped)
    ids = list(range(10, 80))  # 70 token ids
    r = requests.post(capped.url + "/v1/completions", json={"model": model, "prompt": ids, "max_tokens": 1}, timeout=10)
    assert r.status_code == 400, r.text
    assert f"maximum context length is {CTX} tokens" in r.json()["error"]["message"]
    assert "your prompt resulted in 70 tokens" in r.json()["error"]["message"]
    for path, body in (
        ("/generate", {"prompt": LONG_TEXT}),
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": LONG_TEXT}]}),
        ("/api/generate", {"model": model, "prompt": LONG_TEXT, "stream": False}),
        ("/v1/messages", {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": LONG_TEXT}]}),
    ):
        r = requests.post(capped.url + path, json=body, timeout=10)
        assert r.status_code == 400, (path, r.text)
        assert re.search(rf"\b{CTX} tokens\b", r.text), (path, r.text)
        assert f"(--ctx-size; the model's is {TRAINED})" in r.text, (path, r.text)


def test_max_tokens_past_the_cap_is_400(capped):
    model = _model_id(capped)
    r = requests.post(
        capped.url + "/v1/completions", json={"model": model, "prompt": "Once", "max_tokens": CTX}, timeout=10
    )
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded"
    assert error["message"].startswith(
        f"This model's maximum context length is {CTX} tokens (--ctx-size; the model's is {TRAINED})"
    )
    r = requests.post(
        capped.url + "/v1/messages",
        timeout=10,
        json={"model": model, "max_tokens": CTX, "messages": [{"role": "user", "content": "Once"}]},
    )
    assert r.status_code == 400 and f" + {CTX} > {CTX}, decrease input length or `max_tokens`" in r.text


def test_generation_stops_at_the_cap(capped):
    model = _model_id(capped)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Once upon a time"}],
        "temperature": 0,
        "ignore_eos": True,
    }
    r = requests.post(capped.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] == CTX
    # Ollama's num_predict past the context stops at it too
    r = requests.post(
        capped.url + "/api/generate",
        timeout=60,
        json={
            "model": model,
            "prompt": "Once upon a time",
            "stream": False,
            "options": {"num_predict": 1000, "temperature": 0},
        },
    )
    r = r.json()
    assert r["done_reason"] == "length" and r["prompt_eval_count"] + r["eval_count"] == CTX


def test_serve_refuses_a_cap_above_the_model(demo_bundle, tmp_path):
    proc = ServerProcess(demo_bundle, "--max-model-len", str(TRAINED + 1), log_dir=tmp_path)
    try:
        assert proc.proc.wait(timeout=60) == 2
    finally:
        proc.stop()
    lines = proc.log_path.read_text().strip().splitlines()
    assert lines == [
        f"rfc: error: --ctx-size {TRAINED + 1} is larger than the context length of the model "
        f"stories260K ({TRAINED} tokens)"
    ]


def test_run_serves_the_cap(demo_bundle):
    out = rfc(
        "run",
        demo_bundle,
        "-p",
        "Once upon a time",
        "-n",
        "1000",
        "--ignore-eos",
        "--temperature",
        "0",
        "--ctx-size",
        str(CTX),
        check=True,
    )
    stats = re.search(r"prompt: (\d+) tokens.*generation: (\d+) tokens.*finish: (\w+)", out.stderr)
    assert stats and int(stats[1]) + int(stats[2]) == CTX and stats[3] == "length", out.stderr
    out = rfc("run", demo_bundle, "-p", LONG_TEXT, "--ctx-size", str(CTX))
    assert out.returncode == 2 and f"fills the context ({CTX} tokens)" in out.stderr
    out = rfc("run", demo_bundle, "-p", "Hi", "--ctx-size", str(TRAINED + 1))
    assert out.returncode == 2 and out.stderr.strip() == (
        f"rfc: error: --ctx-size {TRAINED + 1} is larger than the context length of the model stories260K ({TRAINED} "
        f"tokens)"
    )
