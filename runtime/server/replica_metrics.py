"""The gauges that routers and autoscalers outside rfc read from a replica's /metrics, under
their own names, and the loaded models' memory.

Routers that pick a replica by its load scrape vLLM's names, so rfc exposes its queue, its
running requests, its KV-cache usage and its prefix-cache counts under them too (labelled
`model_name`, as vLLM labels them), beside its own `rocmforge_*` series:

- llm-d's inference scheduler (the endpoint picker of an `InferencePool`) reads, by default,
  `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`,
  `vllm:lora_requests_info` and `vllm:cache_config_info` (labels `block_size`,
  `num_gpu_blocks`): llm-d/llm-d-inference-scheduler, pkg/epp/server/options.go (NewOptions:
  TotalQueuedRequestsMetric ... CacheInfoMetric) and
  pkg/epp/framework/plugins/datalayer/extractor/metrics/factories.go (defaultEngineConfigs,
  "vllm"). A missing family is an error on every scrape there, so the LoRA one is exposed
  with no adapters.
- vLLM's production-stack router reads `vllm:num_requests_running`,
  `vllm:num_requests_waiting`, `vllm:gpu_prefix_cache_hit_rate`,
  `vllm:gpu_prefix_cache_hits_total`, `vllm:gpu_prefix_cache_queries_total` and
  `vllm:gpu_cache_usage_perc`: vllm-project/production-stack,
  src/vllm_router/stats/engine_stats.py (EngineStats.from_vllm_scrape).

Both assume one model per replica (the scheduler takes one series of a family); a replica
serving several models exposes one series per model. vLLM's "gpu" names carry the KV cache's
figures whatever the device (rfc's cpu device included): the routers only compare them."""

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rfc.runtime.server.served_models import EngineHandle
from rfc.runtime.server.model_manager import ModelManager, memory_bytes

VLLM_LABEL = "model_name"


class ReplicaMetrics(Collector):
    def __init__(self, handle: EngineHandle, models: ModelManager):
        self._handle = handle
        self._models = models
        self._started = time.time()  # vllm:lora_requests_info's value: when its label set began

    def collect(self) -> Iterator:
        served = self._handle.all_served()
        counts = {s.model_id: s.engine.counts() for s in served}
        yield from self._vllm(counts, {s.model_id: s.model.kv_pool.block_size for s in served})
        yield from self._memory(served)

    def _vllm(self, counts: dict[str, dict[str, int]], block_sizes: dict[str, int]) -> Iterator:
        def gauge(name: str, help_text: str, value) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_text, labels=[VLLM_LABEL])
            for model, c in counts.items():
                family.add_metric([model], value(c))
            return family

        def usage(c: dict[str, int]) -> float:
            return c["pages_used"] / c["pages_total"] if c["pages_total"] else 0.0

        def queries(c: dict[str, int]) -> int:
            return c.get("prefix_hit_tokens", 0) + c.get("prefix_miss_tokens", 0)

        yield gauge(
            "vllm:num_requests_running", "Requests being decoded (rocmforge_active_requests)", lambda c: c["running"]
        )
        yield gauge(
            "vllm:num_requests_waiting",
            "Requests waiting for a batch slot (rocmforge_queue_length)",
            lambda c: c["waiting"],
        )
        yield gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache pages in use (1 = full)", usage)
        yield gauge("vllm:gpu_cache_usage_perc", "Fraction of KV-cache pages in use (1 = full), on any device", usage)
        yield gauge(
            "vllm:gpu_prefix_cache_hit_rate",
            "Prompt tokens found in the prefix cache over those looked up",
            lambda c: c.get("prefix_hit_tokens", 0) / queries(c) if queries(c) else 0.0,
        )
        for name, help_text, value in (
            (
                "vllm:gpu_prefix_cache_hits",
                "Prompt tokens found in the prefix cache",
                lambda c: c.get("prefix_hit_tokens", 0),
            ),
            ("vllm:gpu_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", queries),
        ):
            family = CounterMetricFamily(name, help_text, labels=[VLLM_LABEL])
            for model, c in counts.items():
                family.add_metric([model], value(c))
            yield family
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "The KV cache's shape: pages of block_size tokens",
            labels=[VLLM_LABEL, "block_size", "num_gpu_blocks"],
        )
        for model, c in counts.items():
            info.add_metric([model, str(block_sizes[model]), str(c["pages_total"])], 1)
        yield info
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "LoRA adapters running and waiting (rfc serves none)",
            labels=[VLLM_LABEL, "running_lora_adapters", "waiting_lora_adapters", "max_lora"],
        )
        for model in counts:
            lora.add_metric([model, "", "", "0"], self._started)
        yield lora

    def _memory(self, served: list) -> Iterator:
        loaded = GaugeMetricFamily("rocmforge_models_loaded", "Model versions loaded and serving new requests")
        loaded.add_metric([], len(served))
        yield loaded
        memory = GaugeMetricFamily(
            "rocmforge_model_memory_bytes",
            "Weights and KV pool of each loaded version; "
            "state retiring: replaced or unloaded, finishing its requests before it is freed",
            labels=["model", "version", "state"],
        )
        for s in served:
            memory.add_metric([s.model_id, s.version, "serving"], memory_bytes(s))
        for r in self._models.retiring():
            memory.add_metric([r.model_id, r.version, "retiring"], r.memory_bytes)
        yield memory
        events = self._models.event_counts()
        for event, help_text in (
            ("loads", "Model versions loaded (at startup, on demand or by a swap)"),
            ("unloads", "Models unloaded (keep-alive, room for another, keep_alive 0)"),
            ("swaps", "Versions replaced by a newer one under the same id"),
            ("leaks", "Retired versions still referenced after they stopped (their memory not freed)"),
        ):
            family = CounterMetricFamily(f"rocmforge_model_{event}", help_text, labels=["model"])
            for (name, model), n in sorted(events.items()):
                if name == event:
                    family.add_metric([model], n)
            yield family
