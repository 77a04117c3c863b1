"""The Ollama routes read a JSON body whatever its content type says, as
Ollama does: litellm's `ollama/` and `ollama_chat/` providers send no `Content-Type`, Ollama's
README `curl -d` examples a form's. The cross-site protection holds by other means: a body
not declared JSON that a browser sent (it carries `Origin` or `Sec-Fetch-*`) is refused
before anything runs (docs/security.md, "Cross-site requests")."""

import json
import os
import shutil
import subprocess

import pytest
import requests

from tests.e2e.clients.conftest import CHAT, DEMO

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def test_litellm_ollama_providers(url):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of its price list
    litellm = pytest.importorskip("litellm")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    for provider, model in (("ollama", DEMO), ("ollama_chat", CHAT)):
        reply = litellm.completion(
            model=f"{provider}/{model}", api_base=url, messages=messages, max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.content, provider
        assert reply.usage.completion_tokens <= 8
    streamed = litellm.completion(
        model=f"ollama_chat/{CHAT}", api_base=url, messages=messages, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed)


def test_ollama_readme_curl_examples(url):
    """`curl URL/api/generate -d '{...}'` sends `application/x-www-form-urlencoded`."""
    body = json.dumps({"model": CHAT, "prompt": "Why is the sky blue?", "stream": False, "options": {"num_predict": 4}})
    if shutil.which("curl"):
        out = subprocess.run(
            ["curl", "-s", f"{url}/api/generate", "-d", body], capture_output=True, text=True, timeout=60
        ).stdout
        reply = json.loads(out)
    else:
        reply = requests.post(
            url + "/api/generate", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=60
        ).json()
    assert reply["done"] is True and reply["response"], reply
    chat = json.dumps(
        {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "stream": False, "options": {"num_predict": 4}}
    )
    r = requests.post(url + "/api/chat", data=chat, headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 200 and r.json()["message"]["role"] == "assistant"


def _started(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rocmforge_requests_started_total")
    )


@pytest.mark.parametrize(
    "browser",
    [
        {"Origin": "https://evil.example"},  # a cross-site form post or no-cors fetch
        # a form, Origin stripped
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors"},
    ],
)
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None]
)
def test_a_browsers_form_post_is_still_refused_before_anything_runs(url, browser, content_type):
    before = _started(url)
    headers = {**browser, **({"Content-Type": content_type} if content_type else {})}
    for route, body in (
        ("/api/generate", {"model": DEMO, "prompt": "Once", "stream": False}),
        ("/api/chat", {"model": CHAT, "messages": [{"role": "user", "content": "x"}], "stream": False}),
    ):
        r = requests.post(url + route, data=json.dumps(body), headers=headers, timeout=10)
        assert r.status_code == 415, (route, r.status_code, r.text)
        assert "Content-Type" in r.json()["error"]
    assert _started(url) == before  # nothing ran
