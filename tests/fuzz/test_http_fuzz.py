"""Fuzzing the HTTP API with hostile JSON: whatever a client sends, the answer is a
4xx or a 2xx — never a 5xx, never a traceback in the log — and the server keeps serving. The
app runs in process on the real engine (the demo bundle on its best device). The default run
is CI-sized with a fixed seed; run longer by hand:

    pytest tests/fuzz/test_http_fuzz.py --fuzz-cases 20000
"""

import logging
import random

import falcon.testing
import pytest

from rfc.runtime.engine.assemble import LoadOptions
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.runtime.server import EngineHandle, ServerConfig, create_app, load_served_model
from rfc.runtime.server.telemetry import build_telemetry
from tests.conftest import DEMO_MODEL, rfc
from tests.fuzz.http_mutate import VALID, mutate


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("http-fuzz") / "stories260K"
    rfc("compile", DEMO_MODEL, "-o", bundle, "-q", check=True)
    handle = EngineHandle()
    config = ServerConfig()
    telemetry = build_telemetry(handle, config)
    served = load_served_model(bundle, LoadOptions(device="auto"), SchedulerConfig(), telemetry)
    handle.attach(served)
    try:
        yield falcon.testing.TestClient(create_app(handle, config, telemetry))
    finally:
        served.engine.stop()


def test_hostile_json_never_gets_a_5xx(client, fuzz_cases, caplog):
    rng = random.Random(8)
    routes = sorted(VALID)
    failures = []
    caplog.set_level(logging.WARNING)
    for case in range(fuzz_cases(400)):
        route = routes[case % len(routes)]
        body = mutate(route, rng)
        r = client.simulate_post(route, body=body, headers={"Content-Type": "application/json"})
        if r.status_code >= 500:
            failures.append((route, body[:300], r.status_code, r.text[:300]))
    tracebacks = [rec.getMessage() for rec in caplog.records if rec.exc_info]
    assert not failures, failures[:5]
    assert not tracebacks, tracebacks[:3]
    # and it still serves
    ok = client.simulate_post("/generate", json=VALID["/generate"])
    assert ok.status_code == 200 and ok.json["tokens"]
