"""Every error is JSON with the right status: docs/native-api.md's shape on native routes, OpenAI's on
/v1. A failing request leaves the engine and other requests running."""

import falcon.testing
import pytest
import requests

from rfc.runtime.engine.assemble import LoadOptions
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.runtime.server import EngineHandle, ServerConfig, create_app, load_served_model
from rfc.runtime.server.telemetry import build_telemetry

JSON = {"Content-Type": "application/json"}


def _native_error(r: requests.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == "error" and body["error"]
    return body["error"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "temperature": 3.0}, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
        ({"prompt": "x", "top_k": True}, "top_k"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "Once upon a time", "max_tokens": 510}, "max_tokens"),  # beyond the 512-token context
    ],
)
@pytest.mark.parametrize("route", ["/generate", "/generate/stream"])
def test_bad_fields_are_400_naming_the_field(server, route, body, field):
    assert field in _native_error(requests.post(server.url + route, json=body, timeout=10), 400)


def test_malformed_json_is_400(server):
    for data in (b"{not json", b"[1, 2]", b""):
        _native_error(requests.post(server.url + "/generate", data=data, headers=JSON, timeout=10), 400)


def test_body_over_the_limit_is_413(server):
    body = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
    _native_error(requests.post(server.url + "/generate", data=body, headers=JSON, timeout=30), 413)
    r = requests.post(server.url + "/v1/completions", data=body, headers=JSON, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_request_id_is_404(server):
    _native_error(requests.get(server.url + "/status/987654321", timeout=10), 404)
    _native_error(requests.post(server.url + "/cancel/987654321", timeout=10), 404)
    _native_error(requests.get(server.url + "/status/not-a-number", timeout=10), 404)


def test_unknown_route_and_method_are_json(server):
    _native_error(requests.get(server.url + "/nope", timeout=10), 404)
    _native_error(requests.get(server.url + "/generate", timeout=10), 405)
    r = requests.get(server.url + "/v1/nope", timeout=10)
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_the_server_survives_bad_requests(server):
    requests.post(server.url + "/generate", data=b"\xff\xfe garbage", timeout=10)
    r = requests.post(server.url + "/generate", json={"prompt": "Still alive", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["finished"] is True


# -- in process: what no real request can trigger ------------------------------------------
class _BrokenHandle(EngineHandle):
    def require(self, model=None, any_name_if_single=False):
        raise RuntimeError("boom")


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_an_unexpected_exception_is_a_json_500(path):
    client = falcon.testing.TestClient(create_app(_BrokenHandle(), ServerConfig()))
    r = client.simulate_post(path, json={"prompt": "x"})
    assert r.status_code == 500 and r.headers["Content-Type"].startswith("application/json")
    body = r.json
    if path.startswith("/v1/"):
        assert body["error"]["type"] == "server_error"
    else:
        assert body == {"error": "internal error: RuntimeError", "status": "error"}


def test_a_failing_step_fails_its_request_only(demo_bundle):
    handle = EngineHandle()
    config = ServerConfig()
    telemetry = build_telemetry(handle, config)
    served = load_served_model(demo_bundle, LoadOptions(device="auto"), SchedulerConfig(), telemetry)
    handle.attach(served)
    try:
        client = falcon.testing.TestClient(create_app(handle, config, telemetry))
        forward = served.model.executor.forward
        calls = {"n": 0}

        def flaky(batch):
            calls["n"] += 1
            if calls["n"] == 1:
                raise FloatingPointError("injected")
            return forward(batch)

        served.model.executor.forward = flaky
        failed = client.simulate_post("/generate", json={"prompt": "x", "max_tokens": 3})
        assert failed.status_code == 500 and "injected" in failed.json["error"]
        ok = client.simulate_post("/generate", json={"prompt": "x", "max_tokens": 3})
        assert ok.status_code == 200 and ok.json["finish_reason"] == "length"
        metrics = client.simulate_get("/metrics").text
        assert 'rocmforge_requests_failed_total{model="stories260K"} 1.0' in metrics
    finally:
        served.engine.stop()


def test_an_engine_step_that_raises_fails_its_requests_not_the_server(demo_bundle):
    handle = EngineHandle()
    served = load_served_model(
        demo_bundle, LoadOptions(device="auto"), SchedulerConfig(), build_telemetry(handle, ServerConfig())
    )
    handle.attach(served)
    client = falcon.testing.TestClient(create_app(handle, ServerConfig()))
    step = served.engine.step

    def crash():
        raise RuntimeError("injected engine crash")

    served.engine.step = crash  # every step raises outside the forward pass
    try:
        r = client.simulate_post("/generate", json={"prompt": "x", "max_tokens": 3})
        assert r.status_code == 500 and r.json["status"] == "error" and "injected" in r.json["error"]
        assert served.engine.blocks.num_used() == 0  # its KV pages went back
        served.engine.step = step
        ok = client.simulate_post("/generate", json={"prompt": "x", "max_tokens": 3})
        assert ok.status_code == 200 and ok.json["finish_reason"] == "length"
        assert client.simulate_get("/health").json["status"] == "healthy"
    finally:
        served.engine.stop()
