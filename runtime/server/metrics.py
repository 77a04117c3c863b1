"""Prometheus metrics of the native API (`rocmforge_*`, docs/native-api.md), plus KV-cache gauges, each series
labelled with the `model` it counts (a server may serve several).

A custom collector on the app's own CollectorRegistry (never the global one): it exposes
exactly the native API's names and types, without the `_created` series that prometheus-client's
Counter and Histogram objects add. Request metrics are fed by the engine's Observer hooks;
gauges are read from the engine at scrape time."""

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from rfc.runtime.engine.engine import CANCELLED, FAILED, RequestState

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
    "prefill_duration_seconds": "Prefill phase duration in seconds (from first scheduling, queueing excluded, to the "
    "first token)",
    "decode_duration_seconds": "Decode phase duration in seconds (first token to the end)",
    "total_duration_seconds": "Total inference duration in seconds",
    "ttft_seconds": "Time to first token in seconds",
}
_GAUGES = (
    ("queue_length", "waiting", "Current number of requests in queue"),
    ("active_requests", "running", "Current number of active requests"),
    ("engine_jobs", "jobs", "Jobs beside generation (embeddings, prompt logprobs) running or waiting for the engine"),
    ("tokens_per_second", "throughput", f"Tokens generated per second (over the last {THROUGHPUT_WINDOW_S:g} s)"),
    ("kv_cache_pages_used", "pages_used", "KV-cache pages in use"),
    ("kv_cache_pages_free", "pages_free", "KV-cache pages free"),
    ("kv_cache_pages_total", "pages_total", "KV-cache pages in the pool"),
    ("kv_cache_active_sequences", "sequences", "Sequences holding KV-cache pages"),
    ("kv_cache_pages_cached", "pages_cached", "Free KV-cache pages that still hold a cached prefix"),
    (
        "kv_cache_bytes_per_token",
        "kv_bytes_per_token",
        "Bytes one cached token takes: K and V of every layer in the --cache-type-k/-v types",
    ),
    ("state_slots_used", "state_slots_used", "Recurrent-state slots held by sequences (hybrid models)"),
    (
        "state_slots_total",
        "state_slots_total",
        "Recurrent-state slots in the pool (hybrid models; 0: the model has none)",
    ),
)
# Counters the engine keeps itself (read at scrape time, like the gauges).
_ENGINE_COUNTERS = (
    ("prefix_cache_hit_tokens", "prefix_hit_tokens", "Prompt tokens whose KV came from the prefix cache"),
    ("prefix_cache_miss_tokens", "prefix_miss_tokens", "Prompt tokens that had to be computed (prefix cache misses)"),
    ("prefix_cache_evictions", "prefix_evictions", "Cached KV-cache pages evicted for reuse"),
    ("spec_draft_tokens", "spec_drafted", "Draft tokens verified (speculative decoding)"),
    ("spec_accepted_tokens", "spec_accepted", "Draft tokens the target accepted (speculative decoding)"),
)
# Gauges worked out from the engine's counts.
_SPEC_RATE = (
    "spec_acceptance_rate",
    "Accepted / verified draft tokens since start (speculative decoding; 0 before any)",
)
PREFIX = "rocmforge_"
MODEL_LABEL = "model"


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


class _ModelSeries:
    """One model's counters, histograms and recent sampling, under the metrics lock."""

    def __init__(self) -> None:
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self.histograms = {name: Histogram() for name in _HISTOGRAMS}
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) for tokens_per_second

    def throughput(self, now: float) -> float:
        while self.recent and self.recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / THROUGHPUT_WINDOW_S


class ServerMetrics(Collector):
    """Every series carries a `model` label (the served model's id). `engine_counts` returns
    {model id: Engine.counts()} for the models loaded so far."""

    def __init__(self, engine_counts: Callable[[], dict[str, dict[str, int]]]):
        self._engine_counts = engine_counts
        self._lock = threading.Lock()
        self._models: dict[str, _ModelSeries] = {}

    def add_model(self, model: str) -> None:
        """Starts the model's series at zero, so they exist before its first request."""
        with self._lock:
            self._models.setdefault(model, _ModelSeries())

    def _series(self, model: str) -> _ModelSeries:
        series = self._models.get(model)
        if series is None:
            series = self._models[model] = _ModelSeries()
        return series

    # -- fed by the engine's observer (the engine lock may be held: no engine calls here) --
    def request_started(self, model: str) -> None:
        with self._lock:
            self._series(model).counters["requests_started"] += 1

    def tokens_sampled(self, model: str, n: int) -> None:
        if n:
            with self._lock:
                self._series(model).recent.append((time.monotonic(), n))

    def request_finished(self, model: str, state: RequestState) -> None:
        outcome = {CANCELLED: "requests_cancelled", FAILED: "requests_failed"}.get(
            state.finish_reason, "requests_completed"
        )
        end = state.finished_at or time.time()
        with self._lock:
            series = self._series(model)
            series.counters[outcome] += 1
            series.counters["tokens_generated"] += len(state.tokens)
            series.histograms["total_duration_seconds"].observe(end - state.created_at)
            if state.first_token_at is not None:
                ttft = state.first_token_at - state.created_at
                series.histograms["ttft_seconds"].observe(ttft)
                prefill = state.first_token_at - (state.admitted_at or state.created_at)
                series.histograms["prefill_duration_seconds"].observe(prefill)
                series.histograms["decode_duration_seconds"].observe(end - state.first_token_at)

    # -- scraped by prometheus-client --------------------------------------------------------
    def collect(self) -> Iterator:
        counts = self._engine_counts() or {}
        now = time.monotonic()
        with self._lock:
            snapshot = {
                model: (
                    dict(s.counters),
                    {n: (h.cumulative(), h.sum) for n, h in s.histograms.items()},
                    s.throughput(now),
                )
                for model, s in self._models.items()
            }
        for name, help_text in _COUNTERS.items():
            family = CounterMetricFamily(PREFIX + name, help_text, labels=[MODEL_LABEL])
            for model, (counters, _, _) in snapshot.items():
                family.add_metric([model], counters[name])
            yield family
        for name, help_text in _HISTOGRAMS.items():
            family = HistogramMetricFamily(PREFIX + name, help_text, labels=[MODEL_LABEL])
            for model, (_, histograms, _) in snapshot.items():
                buckets, total = histograms[name]
                family.add_metric([model], buckets, total)
            yield family
        for name, key, help_text in _ENGINE_COUNTERS:
            family = CounterMetricFamily(PREFIX + name, help_text, labels=[MODEL_LABEL])
            for model, values in counts.items():
                family.add_metric([model], values.get(key, 0))
            yield family
        gauges = {model: {**c, "throughput": snapshot.get(model, (0, 0, 0.0))[2]} for model, c in counts.items()}
        for name, key, help_text in _GAUGES:
            family = GaugeMetricFamily(PREFIX + name, help_text, labels=[MODEL_LABEL])
            for model, values in gauges.items():
                family.add_metric([model], values.get(key, 0))
            yield family
        family = GaugeMetricFamily(PREFIX + _SPEC_RATE[0], _SPEC_RATE[1], labels=[MODEL_LABEL])
        for model, values in counts.items():
            drafted = values.get("spec_drafted", 0)
            family.add_metric([model], values.get("spec_accepted", 0) / drafted if drafted else 0.0)
        yield family


def _fmt(bound: float) -> str:
    return f"{bound:g}"
