"""Prometheus metrics of the seed API (`rocmforge_*`), plus KV-cache gauges.

A custom collector on the app's own CollectorRegistry (never the global one): it exposes
exactly the seed's names and types, without the `_created` series that prometheus-client's
Counter and Histogram objects add. Request metrics are fed by the engine's Observer hooks;
gauges are read from the engine at scrape time."""

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from rfc.runtime.engine import CANCELLED, FAILED, RequestState

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
THROUGHPUT_WINDOW_S = 10.0

_COUNTERS = {
    "requests_started": "Total number of inference requests started",
    "requests_completed": "Total number of inference requests completed",
    "requests_failed": "Total number of inference requests failed",
    "requests_cancelled": "Total number of inference requests cancelled",
    "tokens_generated": "Total number of tokens generated",
}
_HISTOGRAMS = {
    "prefill_duration_seconds": "Prefill phase duration in seconds (from first scheduling, queueing excluded, to the first token)",
    "decode_duration_seconds": "Decode phase duration in seconds (first token to the end)",
    "total_duration_seconds": "Total inference duration in seconds",
    "ttft_seconds": "Time to first token in seconds",
}
PREFIX = "rocmforge_"


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        i = next((i for i, bound in enumerate(BUCKETS) if value <= bound), len(BUCKETS))
        self.counts[i] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip([*map(_fmt, BUCKETS), "+Inf"], self.counts):
            total += n
            out.append((bound, total))
        return out


class ServerMetrics(Collector):
    """`engine_counts` returns Engine.counts(), or None while no engine is loaded."""

    def __init__(self, engine_counts: Callable[[], dict[str, int] | None]):
        self._engine_counts = engine_counts
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._histograms = {name: Histogram() for name in _HISTOGRAMS}
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) for tokens_per_second

    # -- fed by the engine's observer (the engine lock may be held: no engine calls here) --
    def request_started(self) -> None:
        with self._lock:
            self._counters["requests_started"] += 1

    def tokens_sampled(self, n: int) -> None:
        if n:
            with self._lock:
                self._recent.append((time.monotonic(), n))

    def request_finished(self, state: RequestState) -> None:
        outcome = {CANCELLED: "requests_cancelled", FAILED: "requests_failed"}.get(state.finish_reason, "requests_completed")
        end = state.finished_at or time.time()
        with self._lock:
            self._counters[outcome] += 1
            self._counters["tokens_generated"] += len(state.tokens)
            self._histograms["total_duration_seconds"].observe(end - state.created_at)
            if state.first_token_at is not None:
                ttft = state.first_token_at - state.created_at
                self._histograms["ttft_seconds"].observe(ttft)
                self._histograms["prefill_duration_seconds"].observe(state.first_token_at - (state.admitted_at or state.created_at))
                self._histograms["decode_duration_seconds"].observe(end - state.first_token_at)

    # -- scraped by prometheus-client --------------------------------------------------------
    def collect(self) -> Iterator:
        counts = self._engine_counts() or {}
        with self._lock:
            counters = dict(self._counters)
            histograms = {name: (h.cumulative(), h.sum) for name, h in self._histograms.items()}
            throughput = self._throughput()
        for name, help_text in _COUNTERS.items():
            yield CounterMetricFamily(PREFIX + name, help_text, value=counters[name])
        for name, help_text in _HISTOGRAMS.items():
            buckets, total = histograms[name]
            yield HistogramMetricFamily(PREFIX + name, help_text, buckets=buckets, sum_value=total)
        yield _gauge("queue_length", "Current number of requests in queue", counts.get("waiting", 0))
        yield _gauge("active_requests", "Current number of active requests", counts.get("running", 0))
        yield _gauge("tokens_per_second", f"Tokens generated per second (over the last {THROUGHPUT_WINDOW_S:g} s)", throughput)
        yield _gauge("kv_cache_pages_used", "KV-cache pages in use", counts.get("pages_used", 0))
        yield _gauge("kv_cache_pages_free", "KV-cache pages free", counts.get("pages_free", 0))
        yield _gauge("kv_cache_pages_total", "KV-cache pages in the pool", counts.get("pages_total", 0))
        yield _gauge("kv_cache_active_sequences", "Sequences holding KV-cache pages", counts.get("sequences", 0))

    def _throughput(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / THROUGHPUT_WINDOW_S


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def _fmt(bound: float) -> str:
    return f"{bound:g}"
