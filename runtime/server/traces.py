"""Request traces in OTLP JSON, as the native API's GET /traces returns them.

One trace per sampled request: an `inference_request` span with `prefill` and `decode`
children. Sampling is per request at `sample_rate`; the store keeps the newest `max_traces`
traces and drops the oldest."""

import base64
import os
import random
import threading
from collections import deque

from rfc.runtime.engine.engine import FAILED, RequestState
from rfc.runtime.server.config import SERVICE_NAME

SCOPE_NAME = "rocmforge.engine"
SPAN_KIND_SERVER = 2
STATUS_OK, STATUS_ERROR = 1, 2


class TraceStore:
    def __init__(self, sample_rate: float, max_traces: int, rng: random.Random | None = None):
        self._rate = sample_rate
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._traces: deque[list[dict]] = deque(maxlen=max_traces)

    def record(self, state: RequestState, model_id: str) -> None:
        """Called once per finished request (the engine lock may be held: keep it cheap)."""
        if self._rate <= 0 or self._rng.random() >= self._rate:
            return
        spans = _request_spans(state, model_id)
        with self._lock:
            self._traces.append(spans)

    def export(self, limit: int | None = None, clear: bool = False) -> dict:
        """The newest `limit` traces (all when None), oldest first, as one OTLP resource."""
        with self._lock:
            traces = list(self._traces)
            if clear:
                self._traces.clear()
        if limit is not None:
            traces = traces[-limit:] if limit > 0 else []
        return {
            "resource_spans": [
                {
                    "resource": {"attributes": [_attr("service.name", SERVICE_NAME)]},
                    "scope_spans": [{"scope": {"name": SCOPE_NAME}, "spans": [s for t in traces for s in t]}],
                }
            ]
        }


def _request_spans(state: RequestState, model_id: str) -> list[dict]:
    trace_id = _b64(os.urandom(16))
    root_id = _b64(os.urandom(8))
    end = state.finished_at or state.created_at
    status = STATUS_ERROR if state.finish_reason == FAILED else STATUS_OK
    attributes = [
        _attr("request_id", state.request_id),
        _attr("model", model_id),
        _attr("token_count", len(state.tokens)),
        _attr("prompt_tokens", state.prompt_tokens),
        _attr("max_tokens", state.request.max_tokens),
        _attr("finish_reason", state.finish_reason or ""),
    ]
    if state.error:
        attributes.append(_attr("error", state.error))
    spans = [_span(trace_id, root_id, "", "inference_request", state.created_at, end, attributes, status)]
    if state.first_token_at is not None:
        ids = [_attr("request_id", state.request_id)]
        spans.append(
            _span(
                trace_id,
                _b64(os.urandom(8)),
                root_id,
                "prefill",
                state.created_at,
                state.first_token_at,
                ids,
                STATUS_OK,
            )
        )
        spans.append(_span(trace_id, _b64(os.urandom(8)), root_id, "decode", state.first_token_at, end, ids, status))
    return spans


def _span(
    trace_id: str, span_id: str, parent: str, name: str, start: float, end: float, attributes: list, status: int
) -> dict:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": SPAN_KIND_SERVER,
        "start_time_unix_nano": int(start * 1e9),
        "end_time_unix_nano": int(end * 1e9),
        "attributes": attributes,
        "status": {"status": status},
    }


def _attr(key: str, value: str | int) -> dict:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # OTLP JSON: int64 as a string
    return {"key": key, "value": {"stringValue": value}}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
