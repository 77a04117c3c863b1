"""Replacing a model's version without dropping a request, and the gauges
that routers and autoscalers read (item 7), against `rfc serve` on 127.0.0.1 over real HTTP.

Two builds of the demo differ in their chat template, so in their bundle id (the version
every reply names in X-Model-Version). 16 streaming clients run while /admin/swap replaces
version A by B: none fails or is cut short, each names the version that served it (A, as it
started before the swap), requests after the swap get B, and A is freed once its requests
end (one version's memory left). SIGHUP re-reads --models-dir the same way."""

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DEMO_MODEL, rfc
from tests.e2e.conftest import ServerProcess, sse_json

ADMIN_KEY, CLIENT_KEY = "swap-admin", "swap-client"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
CLIENTS = 16
MAX_TOKENS = 400  # (the demo's context is 512) long enough that the swap lands mid-stream


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    """--models-dir holding version A as `demo`, version B in versions/b (not served by itself:
    only a bundle directly inside --models-dir is)."""
    root = tmp_path_factory.mktemp("swap")
    out = {"dir": root / "models"}
    for name, tail in (("a", ""), ("b", "\n")):
        template = root / f"{name}.jinja"
        template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}" + tail)
        out[name] = root / "models" / ("demo" if name == "a" else "versions/b")
        rfc("compile", DEMO_MODEL, "-o", out[name], "-q", "--chat-template", template, check=True)
    return out


def bundle_id(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["bundle_id"]


def stream(url: str, results: list, started: threading.Semaphore | None = None) -> None:
    """One streamed completion; `started` is released at its first event (once)."""
    body = {
        "model": "stories260K",
        "prompt": "Once upon a time",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        with requests.post(url + "/v1/completions", json=body, headers=CLIENT, stream=True, timeout=120) as r:
            version, tokens, finish = r.headers.get("X-Model-Version"), 0, None
            for event in sse_json(r):
                if started is not None:
                    started.release()
                    started = None
                if event["choices"]:
                    finish = event["choices"][0].get("finish_reason") or finish
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
            results.append((r.status_code, version, tokens, finish))
    except Exception as e:  # noqa: BLE001 - counted as a failure below
        results.append((type(e).__name__, None, 0, None))


def metric(text: str, name: str, **labels: str) -> list[float]:
    found = []
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if m and all(f'{k}="{v}"' in (m[1] or "") for k, v in labels.items()):
            found.append(float(m[2]))
    return found


def test_swap_under_load_drops_no_request(versions, tmp_path):
    a, b = bundle_id(versions["a"]), bundle_id(versions["b"])
    assert a != b
    server = ServerProcess(
        None,
        "--models-dir",
        str(versions["dir"]),
        "--admin-api-key",
        ADMIN_KEY,
        "--api-key",
        CLIENT_KEY,
        "--max-batch",
        "32",
        "--public-metrics",
        log_dir=tmp_path,
    )
    try:
        server.wait_ready()
        before, started = [], threading.Semaphore(0)
        threads = [threading.Thread(target=stream, args=(server.url, before, started)) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for _ in range(CLIENTS):  # every one streaming before the swap (on a busy machine some start late)
            assert started.acquire(timeout=60)
        scraped = requests.get(server.url + "/metrics", timeout=30)  # no key: --public-metrics
        assert scraped.status_code == 200
        assert sum(metric(scraped.text, "vllm:num_requests_running", model_name="stories260K")) >= 1
        for name in (
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "vllm:gpu_prefix_cache_hit_rate",
            "vllm:gpu_prefix_cache_queries_total",
            "vllm:cache_config_info",
        ):
            assert metric(scraped.text, name, model_name="stories260K"), name
        assert 0 < metric(scraped.text, "vllm:kv_cache_usage_perc", model_name="stories260K")[0] <= 1

        swap = requests.post(
            server.url + "/admin/swap", json={"model": "stories260K", "source": "versions/b"}, headers=ADMIN, timeout=60
        )
        assert swap.status_code == 200, swap.text
        assert swap.json()["version"] == b and swap.json()["previous"] == a and swap.json()["loaded"] is True
        in_flight = sum(t.is_alive() for t in threads)
        after: list = []
        later = [threading.Thread(target=stream, args=(server.url, after)) for _ in range(4)]
        for t in later:
            t.start()
        for t in threads + later:
            t.join(120)
        assert in_flight > 0, "every request ended before the swap: it proved nothing"
        assert before == [(200, a, MAX_TOKENS, "length")] * CLIENTS or _explain(before, a)
        assert after == [(200, b, MAX_TOKENS, "length")] * 4 or _explain(after, b)

        # version A is freed once its requests have ended: one version's memory is left
        deadline = time.monotonic() + 30
        while requests.get(server.url + "/admin/models", headers=ADMIN, timeout=30).json()["retiring"]:
            assert time.monotonic() < deadline, "the old version was never freed"
            time.sleep(0.1)
        text = requests.get(server.url + "/metrics", timeout=30).text
        assert metric(text, "rocmforge_models_loaded") == [1.0]
        (memory,) = metric(text, "rocmforge_model_memory_bytes", model="stories260K")
        assert memory > 0 and metric(text, "rocmforge_model_memory_bytes", version=b, state="serving") == [memory]
        assert metric(text, "rocmforge_model_swaps_total", model="stories260K") == [1.0]
        assert not metric(text, "rocmforge_model_leaks_total")
        assert "freed stories260K version " + a in server.log()
    finally:
        server.stop()


def _explain(results: list, version: str) -> bool:
    raise AssertionError(f"expected every response whole from version {version}: {results}")


def test_sighup_rereads_models_dir(versions, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "demo").symlink_to(versions["a"])
    server = ServerProcess(None, "--models-dir", str(models), log_dir=tmp_path)
    try:
        server.wait_ready()

        def served():
            return requests.post(
                server.url + "/v1/completions",
                json={"model": "stories260K", "prompt": "Once", "max_tokens": 2},
                timeout=30,
            ).headers["X-Model-Version"]

        assert served() == bundle_id(versions["a"])
        (models / "demo").unlink()
        (models / "demo").symlink_to(versions["b"])  # a new version under the same directory name
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while served() != bundle_id(versions["b"]):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0
