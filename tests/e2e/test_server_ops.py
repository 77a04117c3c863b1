"""/metrics (Prometheus text, the names and types of docs/native-api.md) and /traces (OTLP JSON)."""

import base64

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ADMIN

SEED_METRICS = {
    "rocmforge_requests_started": "counter",
    "rocmforge_requests_completed": "counter",
    "rocmforge_requests_failed": "counter",
    "rocmforge_requests_cancelled": "counter",
    "rocmforge_tokens_generated": "counter",
    "rocmforge_prefill_duration_seconds": "histogram",
    "rocmforge_decode_duration_seconds": "histogram",
    "rocmforge_total_duration_seconds": "histogram",
    "rocmforge_ttft_seconds": "histogram",
    "rocmforge_queue_length": "gauge",
    "rocmforge_active_requests": "gauge",
    "rocmforge_tokens_per_second": "gauge",
}
KV_GAUGES = ["rocmforge_kv_cache_pages_used", "rocmforge_kv_cache_pages_free", "rocmforge_kv_cache_pages_total"]


def _scrape(url: str) -> tuple[dict[str, str], dict[str, float]]:
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    types, samples = {}, {}
    for family in text_string_to_metric_families(r.text):
        types[family.name] = family.type
        for s in family.samples:
            key = s.name + (
                "" if not s.labels else "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            )
            samples[key] = s.value
    return types, samples


def test_metrics_have_the_seed_names_and_types(server):
    types, samples = _scrape(server.url)
    for name, kind in SEED_METRICS.items():
        assert types.get(name) == kind, name
    for gauge in KV_GAUGES:
        assert types.get(gauge) == "gauge"
    assert samples["rocmforge_kv_cache_pages_total{model=stories260K}"] > 0
    assert "rocmforge_ttft_seconds_bucket{le=+Inf,model=stories260K}" in samples
    assert not any(k.endswith("_created") for k in samples)


def test_counters_move_as_requests_run(server):
    _, before = _scrape(server.url)
    for max_tokens in (5, 7):
        requests.post(
            server.url + "/generate",
            json={"prompt": "Counting", "max_tokens": max_tokens, "temperature": 0},
            timeout=60,
        )
    _, after = _scrape(server.url)
    model = "{model=stories260K}"  # every series carries the model's label
    assert after["rocmforge_requests_started_total" + model] == before["rocmforge_requests_started_total" + model] + 2
    assert (
        after["rocmforge_requests_completed_total" + model] == before["rocmforge_requests_completed_total" + model] + 2
    )
    assert after["rocmforge_tokens_generated_total" + model] >= before["rocmforge_tokens_generated_total" + model] + 2
    for hist in ("ttft_seconds", "total_duration_seconds", "prefill_duration_seconds", "decode_duration_seconds"):
        assert after[f"rocmforge_{hist}_count" + model] == before[f"rocmforge_{hist}_count" + model] + 2
    assert after["rocmforge_tokens_per_second" + model] > 0


def test_traces_hold_spans_of_sampled_requests(server):
    requests.get(server.url + "/traces?clear=true", headers=ADMIN, timeout=10)
    rid = requests.post(
        server.url + "/generate", json={"prompt": "Trace me", "max_tokens": 6, "temperature": 0}, timeout=60
    ).json()["request_id"]
    body = requests.get(server.url + "/traces", headers=ADMIN, timeout=10).json()
    (resource,) = body["resource_spans"]
    assert resource["resource"]["attributes"] == [{"key": "service.name", "value": {"stringValue": "rocmforge"}}]
    (scope,) = resource["scope_spans"]
    assert scope["scope"] == {"name": "rocmforge.engine"}
    spans = scope["spans"]
    root = next(s for s in spans if s["name"] == "inference_request")
    attrs = {a["key"]: a["value"] for a in root["attributes"]}
    assert attrs["request_id"] == {"intValue": str(rid)} and attrs["token_count"] == {"intValue": "6"}
    assert set(root) == {
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "attributes",
        "status",
    }
    assert len(base64.b64decode(root["trace_id"])) == 16 and len(base64.b64decode(root["span_id"])) == 8
    assert root["kind"] == 2 and root["status"] == {"status": 1}
    assert root["start_time_unix_nano"] <= root["end_time_unix_nano"]
    children = [s for s in spans if s["parent_span_id"] == root["span_id"]]
    assert {c["name"] for c in children} == {"prefill", "decode"}
    assert all(c["trace_id"] == root["trace_id"] for c in children)


def test_traces_limit_and_clear(server):
    for i in range(3):
        requests.post(server.url + "/generate", json={"prompt": f"Trace {i}", "max_tokens": 2}, timeout=60)
    limited = requests.get(server.url + "/traces?limit=1", headers=ADMIN, timeout=10).json()
    roots = [s for s in limited["resource_spans"][0]["scope_spans"][0]["spans"] if s["name"] == "inference_request"]
    assert len(roots) == 1
    requests.get(server.url + "/traces?clear=true", headers=ADMIN, timeout=10)
    assert (
        requests.get(server.url + "/traces", headers=ADMIN, timeout=10).json()["resource_spans"][0]["scope_spans"][0][
            "spans"
        ]
        == []
    )
    bad = requests.get(server.url + "/traces?limit=minus", headers=ADMIN, timeout=10)
    assert bad.status_code == 400 and bad.json()["status"] == "error"
