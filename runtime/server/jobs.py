"""An HTTP request's work on the engine thread beside generation (embeddings, prompt logprobs:
runtime/engine/jobs.py runs it in pieces between generation steps), with the request's deadline
and each way it can fail mapped to a 503 that says why."""

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

from rfc.runtime.engine.engine import Engine, QueueFull
from rfc.runtime.engine.jobs import MAX_JOBS, JobExpired
from rfc.runtime.engine.kv_cache import KVCacheFull
from rfc.runtime.server.errors import ApiError, unavailable


class Deadline:
    """One request's deadline (time.monotonic()), for all its jobs together; `what` names the
    work in the 503 that ends it ("the embeddings of 8 inputs")."""

    def __init__(self, seconds: float, what: str):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.what = what

    def missed(self, done: str) -> ApiError:
        return unavailable(
            f"{self.what} did not finish within the request's deadline of {self.seconds:g} s "
            f"({done}); the server is busy or the input too long for it: send fewer or shorter "
            f"inputs, or retry later",
            5,
        )


def run_job(engine: Engine, fn: Callable[[], Any], deadline: Deadline, done: Callable[[], str]) -> Any:
    """Runs `fn` as an engine job (Engine.start_job) within `deadline`; its result. `done` says
    how far the request got, for the 503 of a missed deadline."""
    try:
        job = engine.start_job(fn, deadline.at)
    except QueueFull:
        raise unavailable(
            f"the engine already has {MAX_JOBS} jobs (embeddings, prompt logprobs) waiting; retry later"
        ) from None
    except RuntimeError:
        raise unavailable(
            "the engine is not running (the model is being replaced or the server stops); retry later", 5
        ) from None
    try:
        return job.result(timeout=max(0.0, deadline.at - time.monotonic()))
    except KVCacheFull:
        raise unavailable("the KV cache is full; retry when running requests finish") from None
    except (JobExpired, concurrent.futures.TimeoutError):
        job.cancel()  # a running job stops at its next piece, its KV pages freed
        if time.monotonic() >= deadline.at:
            raise deadline.missed(done()) from None
        raise unavailable(
            "the engine stopped before the work was done (the model is being replaced or the "
            "server stops); retry later",
            5,
        ) from None
    except concurrent.futures.CancelledError:
        raise unavailable(
            "the engine stopped before the work was done (the model is being replaced or the "
            "server stops); retry later",
            5,
        ) from None
