"""The engine Observers of the server: one per served model, feeding the metrics and the
trace store under that model's label."""

from rfc.runtime.engine.engine import Observer, RequestState
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.served_models import EngineHandle
from rfc.runtime.server.metrics import ServerMetrics
from rfc.runtime.server.traces import TraceStore


class ModelObserver(Observer):
    def __init__(self, model_id: str, metrics: ServerMetrics, traces: TraceStore):
        self.model_id = model_id
        self._metrics = metrics
        self._traces = traces
        metrics.add_model(model_id)

    def on_start(self, state: RequestState) -> None:
        self._metrics.request_started(self.model_id)

    def on_first_token(self, state: RequestState) -> None:
        self._metrics.tokens_sampled(self.model_id, 1)

    def on_step(self, prefill_tokens: int, decode_tokens: int, seconds: float) -> None:
        self._metrics.tokens_sampled(self.model_id, decode_tokens)

    def on_finish(self, state: RequestState) -> None:
        self._metrics.request_finished(self.model_id, state)
        self._traces.record(state, self.model_id)


class Telemetry:
    def __init__(self, metrics: ServerMetrics, traces: TraceStore):
        self.metrics = metrics
        self.traces = traces

    def for_model(self, model_id: str) -> ModelObserver:
        """The observer to hand the engine of `model_id`."""
        return ModelObserver(model_id, self.metrics, self.traces)


def build_telemetry(handle: EngineHandle, config: ServerConfig) -> Telemetry:
    """Metrics that read the handle's engines at scrape time, and a trace store per config."""

    def engine_counts() -> dict[str, dict[str, int]]:
        return {
            served.model_id: {**served.engine.counts(), "kv_bytes_per_token": served.model.kv_bytes_per_token}
            for served in handle.all_served()
        }

    return Telemetry(ServerMetrics(engine_counts), TraceStore(config.trace_sample_rate, config.max_traces))
