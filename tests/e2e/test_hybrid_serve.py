"""Serving a hybrid model (the lfm2 fixture on the cpu target): 16 streams at once, some
clients gone mid-stream, then no KV page or state slot left held (/metrics); a repeated long
prompt resumes from its cached blocks and state checkpoint with the logprobs of its first run."""

import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import FIXTURES
from tests.e2e.conftest import ServerProcess, sse_json

pytestmark = [
    pytest.mark.shared,
    pytest.mark.toolchain,
    pytest.mark.skipif(shutil.which("cc") is None, reason="the cpu target needs a C compiler ('cc' not found)"),
]

SUBJECTS = [
    "a cat",
    "a dog",
    "the sun",
    "a big tree",
    "Tom",
    "Lily",
    "a red ball",
    "the park",
    "a bird",
    "the sea",
    "a small boy",
    "the moon",
    "a toy car",
    "Mom",
    "a fish",
    "the rain",
]
GONE = {3, 7, 11, 15}  # clients that read two events and hang up


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^rocmforge_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _stream(url: str, i: int, start: threading.Barrier) -> str:
    body = {"prompt": f"Once upon a time there was {SUBJECTS[i]}", "max_tokens": 40, "temperature": 0}
    start.wait()
    with requests.post(url + "/generate/stream", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        events = []
        for event in sse_json(r):
            events.append(event)
            if i in GONE and len(events) == 2:
                return "gone"  # the connection closes with the response
    assert events[-1]["finished"] is True
    return "".join(e["text"] for e in events)


def test_sixteen_streams_with_disconnects_leave_no_pages_or_slots_and_a_prefix_resumes(bundle_cache):
    bundle = bundle_cache(FIXTURES / "tiny-lfm2-Q8_0.gguf")
    server = ServerProcess(bundle, "--max-batch", "8")
    try:
        server.wait_ready()
        url = server.url
        start = threading.Barrier(len(SUBJECTS))
        with ThreadPoolExecutor(max_workers=len(SUBJECTS)) as pool:
            texts = list(pool.map(lambda i: _stream(url, i, start), range(len(SUBJECTS))))
        assert sum(t == "gone" for t in texts) == len(GONE) and all(texts[i] for i in range(16) if i not in GONE)
        deadline = time.monotonic() + 20
        while True:  # the server notices a closed connection at its next write
            metrics = requests.get(url + "/metrics", timeout=10).text
            held = _metric(metrics, "state_slots_used"), _metric(metrics, "kv_cache_pages_used")
            if held == (0, 0) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert held == (0, 0), held
        assert _metric(metrics, "state_slots_total") == 8

        prompt = " ".join(f"Once upon a time there was {s}." for s in SUBJECTS[:6])
        body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 3}
        first = requests.post(url + "/v1/completions", json=body, timeout=60).json()
        between = _metric(requests.get(url + "/metrics", timeout=10).text, "prefix_cache_hit_tokens_total")
        again = requests.post(url + "/v1/completions", json=body, timeout=60).json()
        after = _metric(requests.get(url + "/metrics", timeout=10).text, "prefix_cache_hit_tokens_total")
        n = first["usage"]["prompt_tokens"]
        # every whole block before the last token, and its state
        assert n > 32 and after - between == (n - 1) // 16 * 16
        a, b = first["choices"][0], again["choices"][0]
        assert (b["text"], b["logprobs"]) == (a["text"], a["logprobs"])
    finally:
        server.stop()
