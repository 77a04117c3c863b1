"""Work beside generation on the engine thread (an embedding's forward passes, a prompt's
logprobs), in pieces that take turns with the generation steps.

The device is not thread-safe, so such work runs on the engine thread, between two steps. A
job is a function; one that returns a generator runs in pieces: each engine iteration runs one
generation step (its decodes first, then prefill chunks, within the scheduler's
max_batch_tokens) and then one piece of the oldest job, up to its next `yield` — a job's
forward passes are cut at JOB_TOKENS tokens each (as vLLM's `max_num_batched_tokens` and
llama-server's `n_batch` cut a long prompt), so however long an input, a running generation
waits at most one piece for its next token. The generator's return value is the job's result.

Jobs run oldest first, one at a time: only the running one holds KV pages of its own. A job
that is cancelled, or whose deadline passes, stops at its next piece (its generator is
closed, so its `finally` and `with` blocks free what it holds) and fails with JobExpired.
"""

import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any

# Jobs waiting for the engine thread at most (then QueueFull).
MAX_JOBS = 32
# Tokens of one forward pass of a job, at most: what a running generation may wait for between
# two of its tokens. SmolLM2-135M on 2 busy cores: a 512-token pass near position 8,000 took
# 6-13 s; in 256-token pieces a completion's tokens came 1.5-3.5 s apart beside 8 inputs of
# 8,000 ids, and the embedding cost the same CPU time as in 512-token passes (within noise).
JOB_TOKENS = 256


class JobExpired(Exception):
    """A job ended before it finished: its deadline passed, or it was cancelled."""


class EngineJob:
    """A job queued for the engine thread: its Future, its deadline (time.monotonic()), and
    `cancel()`, which also stops it between two of its pieces once it has started."""

    def __init__(self, fn: Callable[[], Any], deadline: float | None = None):
        self.fn = fn
        self.deadline = deadline
        self.future: Future = Future()
        self.pieces = 0  # pieces run so far
        self._steps: Generator | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()
        self.future.cancel()  # one that has not started ends now

    def result(self, timeout: float | None = None) -> Any:
        return self.future.result(timeout=timeout)

    # -- the engine thread -----------------------------------------------------------------------
    def advance(self) -> bool:
        """Runs the job's next piece; True when the job is over (its Future done)."""
        if self._steps is None and not self.future.set_running_or_notify_cancel():
            return True  # cancelled before it began
        if self._cancelled.is_set() or (self.deadline is not None and time.monotonic() > self.deadline):
            why = "it was cancelled" if self._cancelled.is_set() else "its deadline passed"
            self.stop(JobExpired(f"the job stopped after {self.pieces} pieces: {why}"))
            return True
        try:
            if self._steps is None:
                out = self.fn()
                if not isinstance(out, Generator):
                    self.future.set_result(out)
                    return True
                self._steps = out
            next(self._steps)
            self.pieces += 1
            return False
        except StopIteration as e:
            self.future.set_result(e.value)
        except BaseException as e:  # noqa: BLE001 - the caller gets the job's own exception
            self.future.set_exception(e)
        return True

    def stop(self, error: Exception) -> None:
        """Ends the job with `error` (what it holds released); engine thread, or after it ended."""
        if self._steps is not None:
            try:
                self._steps.close()
            except Exception:  # noqa: BLE001 - its own cleanup failed: the error below still ends it
                pass
        if not self.future.done():
            if self.future.running():
                self.future.set_exception(error)
            else:
                self.future.cancel()


class JobQueue:
    """The engine's jobs, oldest first. `add` from any thread (under the engine's lock);
    `run_piece` and `stop_all` on the engine thread."""

    def __init__(self) -> None:
        self._jobs: deque[EngineJob] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: EngineJob) -> None:
        self._jobs.append(job)

    def head(self) -> EngineJob | None:
        return self._jobs[0] if self._jobs else None

    def pop_head(self, job: EngineJob) -> None:
        if self._jobs and self._jobs[0] is job:
            self._jobs.popleft()

    def all(self) -> list[EngineJob]:
        return list(self._jobs)

    def take_all(self) -> list[EngineJob]:
        jobs, self._jobs = list(self._jobs), deque()
        return jobs
