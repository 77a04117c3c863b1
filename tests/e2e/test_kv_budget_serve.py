"""The KV pool from a memory budget, end to end on the cpu device: /health keeps the native API's
shape (no GPU: no memory block) with today's default pool for a small model, and a budget
that cannot hold one context stops `rfc serve` and `rfc run` with exit status 1 and one line."""

import requests

from rfc.artifacts.bundle import open_bundle
from rfc.runtime.engine.kv_budget import HOST_CONTEXTS
from tests.conftest import rfc
from tests.e2e.conftest import ServerProcess


def test_health_on_cpu_matches_the_seed(server, demo_bundle):
    checks = requests.get(server.url + "/health", timeout=10).json()["checks"]
    assert set(checks) >= {"engine", "gpu", "requests", "cache"}
    assert checks["gpu"]["available"] is False and "memory" not in checks["gpu"]
    assert set(checks["cache"]) == {"pages_used", "pages_total", "pages_free", "active_sequences"}
    context = open_bundle(demo_bundle, verify=False).plan.context_length
    assert checks["cache"]["pages_total"] == HOST_CONTEXTS * -(-context // 16)  # the default before budgets


def test_serve_refuses_a_budget_below_one_context(demo_bundle, tmp_path):
    proc = ServerProcess(demo_bundle, "--kv-memory", "1024", log_dir=tmp_path)
    try:
        assert proc.proc.wait(timeout=60) == 1
    finally:
        proc.stop()
    lines = [line for line in proc.log_path.read_text().splitlines() if "not enough memory for the KV cache" in line]
    assert (
        len(lines) == 1
        and "budget is 1.00 KiB (1024 bytes)" in lines[0]
        and "--kv-memory" in lines[0]
        and "--ctx-size" in lines[0]
    )


def test_run_refuses_a_budget_below_one_context(demo_bundle):
    out = rfc("run", demo_bundle, "-p", "Hi", "-n", "1", "--kv-memory", "1024")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(
        "rfc: error: not enough memory for the KV cache: one full context of 512 tokens needs "
    )
    assert "--ctx-size" in out.stderr  # the way out for a long-context model
