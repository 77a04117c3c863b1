"""The native API (docs/native-api.md) against a real `rfc serve`: /generate, SSE streaming,
/status, /cancel (explicit and by disconnect), /models, /health."""

import json
import time

import requests

from tests.e2e.conftest import sse_json

SSE_FIELDS = {"request_id", "token", "text", "finished", "finish_reason"}
STATE_FIELDS = {"request_id", "text", "tokens", "finished", "finish_reason"}
LONG = {"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0}


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def _pages_freed(url: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        cache = requests.get(url + "/health", timeout=10).json()["checks"]["cache"]
        if cache["pages_used"] == 0 or time.monotonic() > deadline:
            return cache
        time.sleep(0.02)


def test_generate_matches_rfc_run(server, rfc_run):
    r = requests.post(
        server.url + "/generate", json={"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}, timeout=60
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == STATE_FIELDS | {"system_fingerprint"}  # the replay receipt (docs/determinism.md)
    assert body["system_fingerprint"] == r.headers["X-System-Fingerprint"]
    assert isinstance(body["request_id"], int) and body["finished"] is True
    assert body["text"] == rfc_run("Once upon a time", 40)
    assert len(body["tokens"]) == 40 and body["finish_reason"] == "length"


def test_stream_events_follow_the_seed(server):
    prompt = {"prompt": "The little dog", "max_tokens": 30, "temperature": 0}
    whole = requests.post(server.url + "/generate", json=prompt, timeout=60).json()
    with requests.post(server.url + "/generate/stream", json=prompt, stream=True, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = list(sse_json(r))
    assert all(set(e) == SSE_FIELDS for e in events)
    assert len({e["request_id"] for e in events}) == 1
    assert [e["finished"] for e in events] == [False] * (len(events) - 1) + [True]
    assert all(e["finish_reason"] is None for e in events[:-1])
    assert events[-1]["finish_reason"] == whole["finish_reason"]
    assert "".join(e["text"] for e in events) == whole["text"]
    assert [e["token"] for e in events if e["token"] is not None][: len(whole["tokens"])] == whole["tokens"]


def test_first_event_arrives_before_generation_ends(server):
    started = time.monotonic()
    with requests.post(server.url + "/generate/stream", json=LONG, stream=True, timeout=60) as r:
        events = sse_json(r)
        first = next(events)
        first_at = time.monotonic() - started
        status = requests.get(f"{server.url}/status/{first['request_id']}", timeout=10).json()
        assert set(status) == STATE_FIELDS
        assert status["finished"] is False  # the first token came while the rest was being generated
        rest = list(events)
        last_at = time.monotonic() - started
    assert rest[-1]["finished"] is True
    assert first_at < last_at / 2


def test_cancel_mid_stream_keeps_partial_text(server):
    cancelled_before = _metric(server.url, "rocmforge_requests_cancelled_total")
    with requests.post(server.url + "/generate/stream", json=LONG, stream=True, timeout=60) as r:
        events = sse_json(r)
        rid = next(events)["request_id"]
        c = requests.post(f"{server.url}/cancel/{rid}", timeout=10)
        assert c.status_code == 200
        body = c.json()
        assert set(body) == STATE_FIELDS
        assert body["finished"] is True and body["finish_reason"] == "cancelled"
        assert body["text"] and len(body["tokens"]) < LONG["max_tokens"]
        rest = list(events)
    assert rest[-1]["finished"] is True and rest[-1]["finish_reason"] == "cancelled" and rest[-1]["token"] is None
    status = requests.get(f"{server.url}/status/{rid}", timeout=10).json()
    assert status["finish_reason"] == "cancelled" and status["text"] == body["text"]
    assert _pages_freed(server.url)["pages_used"] == 0
    assert _metric(server.url, "rocmforge_requests_cancelled_total") == cancelled_before + 1


def test_closing_the_connection_cancels(server):
    cancelled_before = _metric(server.url, "rocmforge_requests_cancelled_total")
    r = requests.post(server.url + "/generate/stream", json=LONG, stream=True, timeout=60)
    rid = next(sse_json(r))["request_id"]
    r.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while (status := requests.get(f"{server.url}/status/{rid}", timeout=10).json())["finished"] is False:
        assert time.monotonic() < deadline, "the request kept running after its client left"
        time.sleep(0.02)
    assert status["finish_reason"] == "cancelled"
    assert len(status["tokens"]) < LONG["max_tokens"]
    assert _pages_freed(server.url)["pages_used"] == 0
    assert _metric(server.url, "rocmforge_requests_cancelled_total") == cancelled_before + 1


def test_status_and_cancel_of_a_finished_request(server):
    done = requests.post(
        server.url + "/generate", json={"prompt": "Hi", "max_tokens": 3, "temperature": 0}, timeout=60
    ).json()
    status = requests.get(f"{server.url}/status/{done['request_id']}", timeout=10).json()
    assert status == {k: v for k, v in done.items() if k != "system_fingerprint"}  # the state, as it ended
    again = requests.post(f"{server.url}/cancel/{done['request_id']}", timeout=10).json()
    assert again["finish_reason"] == "length"  # nothing to cancel: its state as it ended


def test_models_reports_the_bundle(server, demo_bundle):
    body = requests.get(server.url + "/models", timeout=10).json()
    assert set(body) == {"models", "tokenizer_cache"}
    (model,) = body["models"]
    assert {"path", "size", "metadata"} <= set(model)  # the native API's fields, then the model card's
    assert model["id"] == "stories260K" and model["parameter_size"] == "260K"
    # the model file it was compiled from, as recorded at compile; never the server's own directories
    assert model["path"] == "stories260K.gguf"
    assert str(demo_bundle.resolve()) not in json.dumps(body) and str(demo_bundle) not in json.dumps(body)
    assert model["size"] == sum(
        p.stat().st_size for p in demo_bundle.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    assert model["metadata"]["general.architecture"] == "llama"
    assert model["metadata"]["llama.context_length"] == 512
    cache = body["tokenizer_cache"]
    assert set(cache) == {"hits", "misses", "bytes"} and cache["misses"] >= 1


def test_prompt_cache_counts_hits(server):
    before = requests.get(server.url + "/models", timeout=10).json()["tokenizer_cache"]
    for _ in range(2):
        requests.post(server.url + "/generate", json={"prompt": "A cache test prompt", "max_tokens": 1}, timeout=60)
    after = requests.get(server.url + "/models", timeout=10).json()["tokenizer_cache"]
    assert after["hits"] >= before["hits"] + 1 and after["bytes"] >= before["bytes"]


def test_health_reports_engine_device_and_cache(server):
    body = requests.get(server.url + "/health", timeout=10).json()
    assert body["status"] == "healthy" and body["service"] == "rocmforge" and body["version"]
    checks = body["checks"]
    assert checks["engine"] == {"running": True, "model_loaded": True}
    assert checks["gpu"]["available"] is False and checks["gpu"]["device"] in ("ref", "cpu")
    assert set(checks["requests"]) == {"active", "queued"}
    cache = checks["cache"]
    assert set(cache) == {"pages_used", "pages_total", "pages_free", "active_sequences"}
    assert cache["pages_used"] + cache["pages_free"] == cache["pages_total"] > 0


def test_request_log_has_one_line_per_request(server):
    r = requests.post(
        server.url + "/generate", json={"prompt": "Log me", "max_tokens": 4, "temperature": 0}, timeout=60
    )
    rid = r.json()["request_id"]
    time.sleep(0.1)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    mine = [e for e in lines if e.get("msg") == "request" and e.get("id") == rid and e.get("route") == "/generate"]
    assert len(mine) == 1
    assert mine[0]["status"] == 200 and mine[0]["tokens"] == 4 and mine[0]["duration_ms"] >= 0
