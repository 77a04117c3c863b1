"""The output stage: sampled tokens in, text and events out, off the engine thread (vLLM v1's
output processor beside `update_from_output`).

The engine thread samples each step's tokens and the scheduler appends them and decides the
ends it can see (an end-of-generation token, max_tokens); the step's `SampledToken`s then wait
here while the next step runs. This stage detokenizes, matches stop strings, and puts each
request's events; a stop string is found here, so the engine may run up to `max_lag` steps past
the token that completed it: `finish_sequence` ends the sequence then (its KV freed at once)
and drops the tokens sampled after it, none of which ever reached the client.

Events of one request leave in order, its final one last: every ending (a cancel, a failure,
the drain) goes through `end`, which first delivers what the engine queued before it. Without
a thread (`rfc run`, tests stepping the engine) the engine calls `flush` after each step.

Locks: `_lock` is held while records are processed (it may take the engine's lock, through
`finish_sequence`); `_cond` guards the queue and is never held while calling out. The engine
never holds its own lock while taking `_lock`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from rfc.runtime.engine.requests import FinishReason, Observer, RequestState, TokenEvent

log = logging.getLogger("rfc.engine")

# Steps queued at most before the engine waits for this stage: the engine schedules a step
# only while fewer are queued, so it runs at most this many steps past a stop string.
MAX_LAG = 1


@dataclass(frozen=True)
class SampledToken:
    """What one step made of one request: its token, or the end the engine decided."""

    state: RequestState
    token: int | None  # None: an end without a token (a failed sampling)
    index: int  # the token's position among the request's output tokens (a stop string cuts there)
    finish: FinishReason | None  # the end the scheduler decided (EOS: `token` is the end-of-generation token, not kept)
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()
    first: bool = False  # the request's first sampled token
    error: str | None = None  # why it failed (finish FAILED)
    error_field: str | None = None  # the request field that made it fail (a grammar): the client's mistake


class OutputStage:
    def __init__(
        self, observer: Observer, finish_sequence: Callable[[RequestState, int | None], None], max_lag: int = MAX_LAG
    ):
        """`finish_sequence(state, num_tokens)` ends a request's sequence in the engine (KV
        freed) and keeps its first `num_tokens` output tokens (None: all)."""
        self._observer = observer
        self._finish_sequence = finish_sequence
        self._max_lag = max_lag
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: deque[list[SampledToken]] = deque()
        self._unfinished = 0  # steps queued or being processed
        self._running = False
        self._thread: threading.Thread | None = None

    # -- the engine's side ------------------------------------------------------------------
    def put(self, step: list[SampledToken]) -> None:
        """Queues one step's records (never waits: the engine may hold its lock)."""
        if not step:
            return
        with self._cond:
            self._queue.append(step)
            self._unfinished += 1
            self._cond.notify_all()

    def wait_for_room(self) -> None:
        """Waits while `max_lag` steps are queued (the engine, before it schedules a step)."""
        with self._cond:
            while self._running and len(self._queue) >= self._max_lag:
                self._cond.wait()

    def flush(self) -> None:
        """Processes everything queued, in this thread."""
        with self._lock:
            self._drain()

    def end(self, state: RequestState, reason: FinishReason, error: str | None = None) -> None:
        """Ends `state` with `reason` (and `error`) and its final event, unless it has ended:
        after delivering whatever was queued before. The engine finished its sequence first."""
        with self._lock:
            self._drain()
            if not state.finished:
                self._end(state, reason, None, error=error)

    def is_idle(self) -> bool:
        with self._cond:
            return self._unfinished == 0

    # -- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="rfc-output", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Delivers what is queued, then ends the thread."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._queue:
                    self._cond.wait()
                if not self._running:
                    return
            self.flush()

    # -- processing (`_lock` held) --------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    return
                step = self._queue.popleft()
                self._cond.notify_all()  # room for the engine
            try:
                for out in step:
                    self._process(out)
            finally:
                with self._cond:
                    self._unfinished -= 1
                    self._cond.notify_all()

    def _process(self, out: SampledToken) -> None:
        state = out.state
        if out.first:
            self._observer.on_first_token(state)
        if state.finished:
            return  # ended already (a stop string, a cancel): what the engine sampled since is dropped
        try:
            self._emit(out)
        except Exception as e:  # a bug here fails this request alone, never the stage
            log.exception("output of request %d failed", state.request_id)
            if not state.finished:
                self._finish_sequence(state, None)
                self._end(state, FinishReason.FAILED, None, error=f"{type(e).__name__}: {e}")

    def _emit(self, out: SampledToken) -> None:
        state, token = out.state, out.token
        if token is None:
            self._end(state, out.finish or FinishReason.FAILED, None, error=out.error, error_field=out.error_field)
            return
        if out.finish is FinishReason.EOS:
            self._end(state, FinishReason.EOS, token, _flush(state), out.logprob, out.top)
            return
        text, stopped = state.stopper.push(state.detok.push(token))
        if stopped:
            self._finish_sequence(state, out.index + 1)
            self._end(state, FinishReason.STOP, token, text, out.logprob, out.top)
        elif out.finish is FinishReason.LENGTH:
            self._end(state, FinishReason.LENGTH, token, text + _flush(state), out.logprob, out.top)
        else:
            state.text += text
            state.events.put(TokenEvent(state.request_id, token, text, False, None, out.logprob, out.top))

    def _end(
        self,
        state: RequestState,
        reason: FinishReason,
        token: int | None,
        text: str = "",
        logprob: float | None = None,
        top: tuple = (),
        error: str | None = None,
        error_field: str | None = None,
    ) -> None:
        """The final event; `finish_reason` is set last of the state, so a reader that sees it
        finished sees its final text."""
        state.text += text
        if error is not None:
            state.error = error
            state.error_field = error_field
        state.finished_at = time.time()
        state.finish_reason = reason
        # metrics and traces first: a client that has its last event may ask /traces or
        # /metrics at once, and must find this request there
        try:
            self._observer.on_finish(state)
        finally:
            state.events.put(TokenEvent(state.request_id, token, text, True, reason, logprob, top))


def _flush(state: RequestState) -> str:
    """The text held back at the end of a stream that no stop string ended."""
    return state.stopper.push(state.detok.flush())[0] + state.stopper.flush()
