"""The server's life after it starts: the HTTP responses in flight, and the drain that SIGTERM
begins (so that SIGTERM lets streams finish rather than cutting them mid-chunk).

Kubernetes sends SIGTERM on every rollout and waits `terminationGracePeriodSeconds` (30 s by
default) before SIGKILL. So on the first SIGTERM (or SIGINT) the server stops taking work
(`/ready` 503 at once, so the endpoint leaves the load balancer; new requests 503 with
Retry-After), lets the requests in flight finish for up to the shutdown timeout, then ends
the ones still running with a final event (finish reason `cancelled`, saying why), waits for
their last bytes to be written, and exits 0. A second signal exits at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("rfc.server")

# After the last request was ended, how long its response may take to reach the client.
_FLUSH_S = 5.0


class Lifecycle:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._tickets = 0  # responses started so far; each one's number is its ticket
        self._open: set[int] = set()  # the tickets of the responses in flight
        self.draining = False
        self.drained = False

    # -- HTTP responses (the request-log middleware counts them) ----------------------------
    def response_started(self) -> int:
        """Counts a response in flight; returns its ticket, for `response_done`."""
        with self._cond:
            self._active += 1
            self._tickets += 1
            self._open.add(self._tickets)
            return self._tickets

    def response_done(self, ticket: int = 0) -> None:
        with self._cond:
            self._active -= 1
            self._open.discard(ticket)
            self._cond.notify_all()

    def mark(self) -> int:
        """The ticket of the latest response started: any later one started after this call.
        A model replaced before the mark can only be held by responses up to it (they took
        their model after they started), so `wait_started_by(mark)` lets the old one go."""
        with self._cond:
            return self._tickets

    def wait_started_by(self, mark: int, timeout_s: float | None = None) -> bool:
        """Waits until every response that started by `mark` has ended; False at the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while any(t <= mark for t in self._open):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            return True

    @property
    def active(self) -> int:
        with self._cond:
            return self._active

    def wait_responses(self, deadline: float, keep: int = 0) -> bool:
        """Waits until at most `keep` responses are in flight (the caller's own, if it is one);
        False at the deadline."""
        with self._cond:
            while self._active > keep:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    # -- the drain ---------------------------------------------------------------------------
    def begin_drain(self) -> bool:
        """True the first time: the caller runs the drain."""
        with self._cond:
            if self.draining:
                return False
            self.draining = True
            return True

    def drain(self, engines: Callable[[], list], timeout_s: float) -> dict:
        """Lets running requests finish for `timeout_s`, ends the rest, waits for their
        responses to be written. Returns what happened, for the log."""
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline and any(not e.is_idle() for e in engines()):
            time.sleep(0.05)
        ended = 0
        for engine in engines():
            ended += engine.abort_all("the server is shutting down")
        # responses not tied to a generation (an embedding, a slow reader) keep the grace period
        self.wait_responses((time.monotonic() if ended else max(deadline, time.monotonic())) + _FLUSH_S)
        self.drained = True
        return {"seconds": round(time.monotonic() - started, 2), "ended": ended, "unfinished_responses": self.active}
