"""16 streaming clients at once: all finish, and batching changes no greedy result."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.e2e.conftest import sse_json

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


def _requests() -> list[dict]:
    return [
        {"prompt": f"Once upon a time there was {subject}", "max_tokens": 16 + 7 * i, "temperature": 0}
        for i, subject in enumerate(SUBJECTS)
    ]


def _stream(url: str, body: dict, start: threading.Barrier) -> tuple[str, str, int, tuple[float, float]]:
    start.wait()
    with requests.post(url + "/generate/stream", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        events, first = [], None
        for event in sse_json(r):
            first = first or time.monotonic()
            events.append(event)
    assert events[-1]["finished"] is True
    text = "".join(e["text"] for e in events)
    return text, events[-1]["finish_reason"], events[0]["request_id"], (first, time.monotonic())


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


def test_sixteen_concurrent_streams_match_solo_runs(server):
    bodies = _requests()
    start = threading.Barrier(len(bodies))
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        together = list(pool.map(lambda b: _stream(server.url, b, start), bodies))
    assert len({rid for _, _, rid, _ in together}) == len(bodies)
    assert _most_at_once([span for *_, span in together]) >= 8  # they really ran side by side
    for body, (text, reason, _, _) in zip(bodies, together):
        alone = requests.post(server.url + "/generate", json=body, timeout=120).json()
        assert (text, reason) == (alone["text"], alone["finish_reason"]), body["prompt"]
    health = requests.get(server.url + "/health", timeout=10).json()["checks"]
    assert health["requests"] == {"active": 0, "queued": 0}
    assert health["cache"]["pages_used"] == 0
