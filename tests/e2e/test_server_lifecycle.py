"""Startup (/ready 503 until loaded), configuration from RFC_* environment variables, API
keys, CORS, a full queue, and a bundle that fails to load."""

import shutil
import threading
import time

import openai
import pytest
import requests

from tests.e2e.conftest import ServerProcess, sse_json

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def guarded(demo_bundle, tmp_path_factory):
    """A server configured only through the environment: slow to load (test hook), with an
    API key, one sequence at a time and a queue of one. Yields it with what /ready, /health
    and /generate answered while it was loading."""
    env = {
        "RFC_LOAD_DELAY": "1.5",
        "RFC_API_KEY": KEY,
        "RFC_MAX_BATCH": "1",
        "RFC_MAX_QUEUE": "1",
        "RFC_CORS_ORIGIN": ORIGIN,
        "RFC_LOG_FORMAT": "json",
    }
    proc = ServerProcess(demo_bundle, env=env, log_dir=tmp_path_factory.mktemp("guarded"))
    seen = {"ready": [], "health": None, "generate": None}
    try:
        proc.wait_listening()
        while True:
            r = requests.get(proc.url + "/ready", timeout=10)
            seen["ready"].append((r.status_code, r.json()))
            if r.status_code == 200:
                break
            if seen["health"] is None:
                seen["health"] = requests.get(proc.url + "/health", timeout=10).json()
                seen["generate"] = requests.post(proc.url + "/generate", json={"prompt": "x"}, headers=AUTH, timeout=10)
            time.sleep(0.05)
        yield proc, seen
    finally:
        proc.stop()


def test_ready_is_503_until_loaded(guarded):
    _, seen = guarded
    statuses = [s for s, _ in seen["ready"]]
    assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses) == {503, 200}
    assert seen["ready"][0][1] == {"error": "Service Unavailable", "status": "error"}
    assert seen["ready"][-1][1] == {"ready": True, "service": "rocmforge"}


def test_health_answers_while_loading(guarded):
    _, seen = guarded
    assert seen["health"]["status"] == "unhealthy"
    assert seen["health"]["checks"]["engine"]["running"] is False
    assert seen["health"]["checks"]["gpu"]["available"] is False
    r = seen["generate"]
    assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["status"] == "error"


@pytest.mark.parametrize(
    "path, method",
    [("/generate", "post"), ("/metrics", "get"), ("/models", "get"), ("/traces", "get"), ("/status/1", "get")],
)
def test_api_key_is_required(guarded, path, method):
    proc, _ = guarded
    call = getattr(requests, method)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = call(proc.url + path, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["status"] == "error" and r.headers["WWW-Authenticate"] == "Bearer"


def test_api_key_opens_every_route_and_probes_need_none(guarded):
    proc, _ = guarded
    assert requests.get(proc.url + "/health", timeout=10).status_code == 200
    assert requests.get(proc.url + "/ready", timeout=10).status_code == 200
    assert requests.get(proc.url + "/metrics", headers=AUTH, timeout=10).status_code == 200
    r = requests.post(proc.url + "/generate", json={"prompt": "Hi", "max_tokens": 2}, headers=AUTH, timeout=60)
    assert r.status_code == 200
    v1 = requests.get(proc.url + "/v1/models", timeout=10)
    assert v1.status_code == 401 and v1.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=proc.url + "/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=proc.url + "/v1", api_key=KEY, max_retries=0)
    assert client.completions.create(model="x", prompt="Hi", max_tokens=2).usage.completion_tokens == 2


def test_cors_allows_the_configured_origin_only(guarded):
    proc, _ = guarded
    r = requests.get(proc.url + "/health", headers={"Origin": ORIGIN}, timeout=10)
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    r = requests.get(proc.url + "/health", headers={"Origin": "https://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in r.headers
    preflight = requests.options(
        proc.url + "/v1/chat/completions",
        timeout=10,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_full_queue_is_503_with_retry_after(guarded):
    proc, _ = guarded
    long = {"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0}
    running = requests.post(proc.url + "/generate/stream", json=long, headers=AUTH, stream=True, timeout=60)
    running_events = sse_json(running)  # kept: dropping the generator would close the connection
    first = next(running_events)  # running: the batch of one is full
    queued_events: list = []
    waiter = threading.Thread(
        target=lambda: queued_events.extend(
            sse_json(
                requests.post(
                    proc.url + "/generate/stream", json={**long, "max_tokens": 2}, headers=AUTH, stream=True, timeout=60
                )
            )
        )
    )
    waiter.start()
    deadline = time.monotonic() + 10
    while requests.get(proc.url + "/health", timeout=10).json()["checks"]["requests"]["queued"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = requests.post(proc.url + "/generate", json=long, headers=AUTH, timeout=10)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert "queue" in r.json()["error"] and r.json()["status"] == "error"
    requests.post(f"{proc.url}/cancel/{first['request_id']}", headers=AUTH, timeout=10)
    running.close()
    waiter.join(timeout=30)
    assert queued_events and queued_events[-1]["finished"] is True


def test_a_bundle_that_fails_to_load_stops_the_server(demo_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(demo_bundle, broken)
    with open(broken / "weights.bin", "r+b") as f:
        f.write(b"\x00" * 64)  # the hash no longer matches
    proc = ServerProcess(broken, log_dir=tmp_path)
    try:
        assert proc.proc.wait(timeout=60) == 1
        assert "failed verification" in proc.log()
    finally:
        proc.stop()
