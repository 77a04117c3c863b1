"""Bounded pools for expensive work a request asks for: grammar
compilation, tokenizing long inputs. A pool has a fixed number of threads, a queue of at most
`max_pending` jobs (one more: `Busy`, which the server answers with 503 and `Retry-After`) and
a deadline for the request waiting on a job. So a burst of costly requests waits its turn or
is turned away; it cannot take every HTTP thread, every core or unbounded memory at once."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")


class Busy(RuntimeError):
    """The pool's queue is full, or the job overran its deadline: retry later (503)."""


class WorkPool:
    """`run(fn)` runs `fn` on one of the pool's threads and returns its result (or raises its
    exception). A job past its deadline keeps its thread until it returns (Python cannot stop
    a thread): the work each job may do must be bounded by its own limits."""

    def __init__(
        self,
        name: str,
        threads: int = 2,
        max_pending: int = 32,
        timeout_s: float = 10.0,
        stack_bytes: int | None = None,
    ):
        if threads < 1 or max_pending < 1 or timeout_s <= 0:
            raise ValueError("a work pool needs a thread, a queue slot and a positive deadline")
        self.name = name
        self.timeout_s = timeout_s
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._threads: list[threading.Thread] = []
        previous = threading.stack_size()
        if stack_bytes is not None:
            threading.stack_size(stack_bytes)
        try:
            for i in range(threads):
                t = threading.Thread(target=self._loop, name=f"rfc-{name}-{i}", daemon=True)
                t.start()
                self._threads.append(t)
        finally:
            threading.stack_size(previous)

    def run(self, fn: Callable[[], T]) -> T:
        future: Future = Future()
        try:
            self._jobs.put_nowait((fn, future))
        except queue.Full:
            raise Busy(f"{self.name} is at capacity") from None
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise Busy(f"{self.name} took longer than {self.timeout_s:g} s") from None

    def close(self) -> None:
        for _ in self._threads:
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                break

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - the waiting request gets the job's own error
                future.set_exception(e)
