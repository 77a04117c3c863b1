"""Per-request token streams: the HTTP side of RequestState.events.

HTTP threads never run the model: they wait on the request's event queue, which the engine
thread fills. A stream closed before its final event means the client went away (waitress
closes the response iterator when a write fails, or the disconnect probe fires), and the
request is cancelled so its KV pages return to the pool at once."""

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from rfc.runtime.engine.engine import Engine, RequestState, TokenEvent
from rfc.runtime.server.errors import unavailable

log = logging.getLogger("rfc.server")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_CONTENT_TYPE = "text/event-stream"
NDJSON_CONTENT_TYPE = "application/x-ndjson"  # Ollama's streams: one JSON object per line


@dataclass(frozen=True)
class StreamMedia:
    """How a stream is sent: its content type and headers."""

    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


SSE_MEDIA = StreamMedia(SSE_CONTENT_TYPE, SSE_HEADERS)
NDJSON_MEDIA = StreamMedia(NDJSON_CONTENT_TYPE)
_POLL_S = 0.25  # how often a waiting stream checks whether its client is still there
_MANY_WAIT_S = 0.005  # several requests: how long to wait on one before looking at the others


class TokenStream:
    """The events of one request, or of several generated together (OpenAI's `n`, several
    prompts): each request's events in order, the requests' interleaved as they come."""

    def __init__(
        self,
        engine: Engine,
        states: "RequestState | Sequence[RequestState]",
        client_gone: Callable[[], bool] | None = None,
    ):
        self.engine = engine
        self.states = [states] if isinstance(states, RequestState) else list(states)
        self.state = self.states[0]
        self._client_gone = client_gone
        self._live = list(self.states)  # not yet finished
        self.abandoned = False  # closed before its final event

    def __iter__(self) -> Iterator[TokenEvent]:
        # The client is asked after every _POLL_S, whether or not events came meanwhile: a
        # request that keeps producing tokens for a reply nobody waits for must stop too.
        probed = time.monotonic()
        while self._live:
            event = self._next()
            if event is None and not self.engine.is_running:  # its thread died: no event will ever come
                self._live = []
                self.abandoned = True
                raise unavailable("the engine has stopped; see the server log", 5)
            if event is not None and event.finished:
                self._live = [s for s in self._live if s.request_id != event.request_id]
                yield event
                continue
            now = time.monotonic()
            if now - probed >= _POLL_S:
                probed = now
                if self.client_left():
                    self.close()
                    return
            if event is not None:
                yield event

    def _next(self) -> TokenEvent | None:
        """The next event of any live request; None after a while without one."""
        if len(self._live) == 1:
            try:
                return self._live[0].events.get(timeout=_POLL_S)
            except queue.Empty:
                return None
        for state in self._live:  # several: whichever has one, else a short wait on the first
            try:
                return state.events.get_nowait()
            except queue.Empty:
                continue
        try:
            return self._live[0].events.get(timeout=_MANY_WAIT_S)
        except queue.Empty:
            return None

    def client_left(self) -> bool:
        return self._client_gone is not None and self._client_gone()

    def close(self) -> None:
        """Cancels the requests that have not ended."""
        live, self._live = self._live, []
        if live:
            self.abandoned = True
        for state in live:
            self.engine.cancel(state.request_id)


class SseRenderer:
    """One API's bytes for a request's events (SSE events or NDJSON lines), and for the end of
    a stream that was not abandoned (OpenAI's [DONE]; nothing for most)."""

    def event(self, event: TokenEvent) -> list[bytes]:
        raise NotImplementedError

    def end(self) -> list[bytes]:
        return []


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + data.encode("utf-8") + b"\n\n"


class _Body:
    """The response iterable of a stream. waitress calls `close()` when the response ends
    however it ends; a generator that never started would skip its `finally` there, so the
    end of the stream (cancel, log, the drain's count) is run here as well, once."""

    def __init__(self, chunks: Iterator[bytes], on_end: Callable[[], None]):
        self._chunks = chunks
        self._on_end = on_end

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        try:
            self._chunks.close()
        finally:
            self._on_end()


def sse_body(stream: TokenStream, renderer: SseRenderer, on_close: Callable[[], None]) -> _Body:
    """The response iterable: one SSE chunk per event, each written (and flushed) on its own."""
    ended = threading.Event()

    def end() -> None:
        if not ended.is_set():
            ended.set()
            stream.close()
            on_close()

    def chunks() -> Iterator[bytes]:
        try:
            for event in stream:
                yield from renderer.event(event)
            if not stream.abandoned:
                yield from renderer.end()
        except GeneratorExit:
            raise
        except Exception:  # headers are gone: the best we can do is log and end the stream
            log.exception("stream of request %d failed", stream.state.request_id)
        finally:
            end()

    return _Body(chunks(), end)


def sse_event(event: str, payload: dict) -> bytes:
    """An SSE event with a name (`event:` line), as the Responses and Anthropic streams send them."""
    return b"event: " + event.encode("ascii") + b"\n" + sse(payload)
