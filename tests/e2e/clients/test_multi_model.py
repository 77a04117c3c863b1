"""Two models in one server: each request picks one by `model`; KV pages split by the stated
policy; metrics, traces and /health tell the models apart; integrations say what runs them."""

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.clients.conftest import CHAT, DEMO, KV_PAGES

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def _samples(url: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if "model" in s.labels and "le" not in s.labels:
                out[(s.name, s.labels["model"])] = s.value
    return out


def test_native_routes_take_an_optional_model(url):
    default = requests.post(
        url + "/generate", json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}, timeout=60
    ).json()
    demo = requests.post(
        url + "/generate",
        json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "model": DEMO},
        timeout=60,
    ).json()
    chat = requests.post(
        url + "/generate",
        json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "model": CHAT},
        timeout=60,
    ).json()
    assert default["text"] == demo["text"] != chat["text"]  # the first bundle named is the default
    status = requests.get(f"{url}/status/{chat['request_id']}", timeout=10).json()
    assert status["text"] == chat["text"]  # request ids are unique across the models
    unknown = requests.post(url + "/generate", json={"prompt": "x", "model": "llama3"}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["status"] == "error" and CHAT in unknown.json()["error"]


def test_kv_pages_are_split_evenly(url):
    models = requests.get(url + "/health", timeout=10).json()["checks"]["models"]
    assert models[DEMO]["cache"]["pages_total"] == models[CHAT]["cache"]["pages_total"] == KV_PAGES // 2


def test_metrics_and_traces_carry_the_model(url):
    before = _samples(url)
    requests.get(url + "/traces?clear=true", timeout=10)
    requests.post(url + "/generate", json={"prompt": "Hi", "max_tokens": 2, "model": CHAT}, timeout=60)
    after = _samples(url)
    assert (
        after[("rocmforge_requests_completed_total", CHAT)] == before[("rocmforge_requests_completed_total", CHAT)] + 1
    )
    assert after[("rocmforge_requests_completed_total", DEMO)] == before[("rocmforge_requests_completed_total", DEMO)]
    assert after[("rocmforge_kv_cache_pages_total", CHAT)] == KV_PAGES // 2
    spans = requests.get(url + "/traces", timeout=10).json()["resource_spans"][0]["scope_spans"][0]["spans"]
    root = next(s for s in spans if s["name"] == "inference_request")
    assert {"key": "model", "value": {"stringValue": CHAT}} in root["attributes"]


def test_integrations_in_seed_003_shapes(url):
    listing = requests.get(url + "/v1/integrations", timeout=10).json()
    assert listing["integrations"] == ["hip", "cuda", "cpu", "reference"] and "reference" in listing["available"]
    health = requests.get(url + "/v1/integrations/health", timeout=10).json()
    for backend in listing["integrations"]:
        assert {"available", "version", "status", "models"} <= set(health[backend])
    serving = [b for b in listing["integrations"] if set(health[b]["models"]) == {DEMO, CHAT}]
    assert serving and health[serving[0]]["status"] == "healthy" and health[serving[0]]["available"]
    assert health["hip"]["available"] is False and health["hip"]["reason"]  # no bundle here is compiled for gfx*


def test_tokenize_detokenize_apply_template(url):
    tokens = requests.post(url + "/tokenize", json={"model": CHAT, "content": "Hello world"}, timeout=10).json()[
        "tokens"
    ]
    assert tokens and all(isinstance(t, int) for t in tokens)
    pieces = requests.post(
        url + "/tokenize", json={"model": CHAT, "content": "Hello world", "with_pieces": True}, timeout=10
    ).json()
    assert "".join(p["piece"] for p in pieces["tokens"]) == "Hello world"
    assert requests.post(url + "/detokenize", json={"model": CHAT, "tokens": tokens}, timeout=10).json() == {
        "content": "Hello world",  # llama.cpp's name
        "prompt": "Hello world",  # vLLM's
    }
    prompt = requests.post(
        url + "/apply-template", json={"model": CHAT, "messages": [{"role": "user", "content": "Hi"}]}, timeout=10
    ).json()["prompt"]
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    bad = requests.post(url + "/detokenize", json={"model": CHAT, "tokens": [10**9]}, timeout=10)
    assert bad.status_code == 400 and "tokens" in bad.json()["error"]
