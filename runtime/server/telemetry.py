"""The engine Observer of the server: feeds the metrics and the trace store."""

from rfc.runtime.engine import Observer, RequestState
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.host import EngineHandle
from rfc.runtime.server.metrics import ServerMetrics
from rfc.runtime.server.traces import TraceStore


class Telemetry(Observer):
    def __init__(self, metrics: ServerMetrics, traces: TraceStore):
        self.metrics = metrics
        self.traces = traces

    def on_start(self, state: RequestState) -> None:
        self.metrics.request_started()

    def on_first_token(self, state: RequestState) -> None:
        self.metrics.tokens_sampled(1)

    def on_step(self, prefill_tokens: int, decode_tokens: int, seconds: float) -> None:
        self.metrics.tokens_sampled(decode_tokens)

    def on_finish(self, state: RequestState) -> None:
        self.metrics.request_finished(state)
        self.traces.record(state)


def build_telemetry(handle: EngineHandle, config: ServerConfig) -> Telemetry:
    """Metrics that read the handle's engine at scrape time, and a trace store per config."""

    def engine_counts() -> dict[str, int] | None:
        served = handle.served
        return served.engine.counts() if served is not None else None

    return Telemetry(ServerMetrics(engine_counts), TraceStore(config.trace_sample_rate, config.max_traces))
