"""rfc replicas behind an existing router: two `rfc serve` replicas behind
SGLang's router (`sglang-router launch --policy cache_aware`, the pip package, started here on
127.0.0.1), with no router of ours. 32 requests sharing 4 long prefixes are all answered, each
prefix's requests go to one replica, and that replica's /metrics (vLLM's names) counts the
shared prefix as prefix-cache hits.

(vllm-router 0.1.17, the issue's first choice, forwards to rfc but its cache_aware policy does
not route rfc replicas by prefix: docs/deploy.md, "Behind an existing router".)

The replicas serve two builds of the demo that differ only in their chat template:
/v1/completions answers alike on both, and X-Model-Version (the bundle id, which the router
passes on) says which replica answered."""

import importlib.util
import json
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DEMO_MODEL, rfc
from tests.e2e.conftest import ServerProcess, answers_within, free_port, start_on_free_ports

# sglang-router's own command, run by this interpreter (its script may not be on PATH in a venv)
ROUTER = [sys.executable, "-c", "import sys; from sglang_router.cli import main; sys.exit(main())"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("sglang_router") is None,
        reason="sglang-router not installed (pip install sglang-router)",
    ),
]
# Four openings of about 140 tokens (the demo's context is 512), then a question of its own per request.
# The openings differ from their first character on: the router's tree matches text prefixes.
PREFIXES = [
    " ".join(
        f"{animal} was happy. It liked {thing}."
        for thing in ("the sun", "the rain", "a red ball", "the big tree", "cake", "the park", "a song", "the sea")
    )
    for animal in ("A cat", "Ben the dog", "The bird", "Four fish")
]
PER_PREFIX = 8


def metric(text: str, name: str) -> float:
    return sum(float(m[1]) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    root = tmp_path_factory.mktemp("router")
    procs = []
    for name, tail in (("a", ""), ("b", "\n")):
        (root / f"{name}.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}" + tail)
        rfc("compile", DEMO_MODEL, "-o", root / name, "-q", "--chat-template", root / f"{name}.jinja", check=True)
        procs.append(ServerProcess(root / name, "--public-metrics", log_dir=root))
    try:
        yield (
            [p.wait_ready() for p in procs],
            [json.loads((root / n / "manifest.json").read_text())["bundle_id"] for n in "ab"],
        )
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def router(replicas, tmp_path_factory):
    """vllm-router in front of the replicas. It binds the ports it is given (no port 0): should another
    process take one first, the router exits on the bind and starts again on others (up to 3 times)."""
    servers, _ = replicas
    log_path = tmp_path_factory.mktemp("router-log") / "router.log"
    urls = []

    def start() -> subprocess.Popen:
        proc, url = _start_router(servers, log_path)
        urls.append(url)
        return proc

    proc = start_on_free_ports(
        start,
        lambda p: answers_within(p, urls[-1] + "/health", (200,), 60),
        lambda: log_path.read_text(errors="replace"),
        "the router",
    )
    url = urls[-1]
    try:
        yield url
    finally:
        proc.terminate()  # stopped by its own PID
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_router(servers, log_path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *ROUTER,
                "launch",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--policy",
                "cache_aware",
                "--prometheus-port",
                str(free_port()),
                "--worker-urls",
                *[s.url for s in servers],
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


def complete(url: str, prefix: int, n: int, max_tokens: int = 4) -> tuple[int, int, str | None]:
    body = {
        "model": "stories260K",
        "prompt": f"{PREFIXES[prefix]} Question {n}: what did it like?",
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    r = requests.post(url + "/v1/completions", json=body, timeout=120)
    return prefix, r.status_code, r.headers.get("X-Model-Version")


def test_cache_aware_router_keeps_each_prefix_on_one_replica(replicas, router):
    servers, versions = replicas
    before = [requests.get(s.url + "/metrics", timeout=30).text for s in servers]
    # each prefix's first request, the four at once and long enough to overlap (a new prefix
    # goes to the least loaded replica), then the other 28 at once, in random order
    rest = [(p, n) for p in range(len(PREFIXES)) for n in range(1, PER_PREFIX)]
    random.Random(0).shuffle(rest)
    with ThreadPoolExecutor(len(rest)) as pool:
        results = list(pool.map(lambda p: complete(router, p, 0, 200), range(len(PREFIXES))))
        results += pool.map(lambda pn: complete(router, *pn), rest)
    assert len(results) == 32 and all(status == 200 for _, status, _ in results), results

    home = {}
    for p in range(len(PREFIXES)):
        served_by = {v for q, _, v in results if q == p}
        assert len(served_by) == 1, f"prefix {p} was spread over replicas: {[(q, v[:4]) for q, _, v in results]}"
        home[p] = versions.index(served_by.pop())
    assert set(home.values()) == {0, 1}, f"every prefix went to one replica: {home}"

    for i, server in enumerate(servers):
        text = requests.get(server.url + "/metrics", timeout=30).text
        mine = [p for p in home if home[p] == i]
        hits = metric(text, "vllm:gpu_prefix_cache_hits_total") - metric(before[i], "vllm:gpu_prefix_cache_hits_total")
        queries = metric(text, "vllm:gpu_prefix_cache_queries_total") - metric(
            before[i], "vllm:gpu_prefix_cache_queries_total"
        )
        # the 7 followers of each of its prefixes find most of the ~140 shared tokens cached
        assert hits >= 7 * len(mine) * 100, (i, hits, queries)
        assert hits / queries >= 0.6, (i, hits, queries)
