"""Jobs beside generation (runtime/engine/jobs.py): a generator job runs one piece per call,
its return value its result; a deadline or a cancel stops it between pieces, its cleanup run."""

import time
from concurrent.futures import CancelledError

import pytest

from rfc.runtime.engine.jobs import EngineJob, JobExpired


def _pieces(n: int, log: list[str]):
    try:
        for i in range(n):
            log.append(f"piece {i}")
            yield
        return "done"
    finally:
        log.append("released")


def test_a_generator_job_runs_one_piece_per_advance():
    log: list[str] = []
    job = EngineJob(lambda: _pieces(3, log))
    assert [job.advance() for _ in range(3)] == [False, False, False]
    assert log == ["piece 0", "piece 1", "piece 2"] and not job.future.done()
    assert job.advance() is True and job.result(0) == "done" and log[-1] == "released"


def test_a_plain_job_is_one_piece():
    job = EngineJob(lambda: 42)
    assert job.advance() is True and job.result(0) == 42


def test_a_job_past_its_deadline_stops_at_its_next_piece_and_releases_what_it_holds():
    log: list[str] = []
    job = EngineJob(lambda: _pieces(100, log), deadline=time.monotonic() + 0.05)
    assert job.advance() is False
    time.sleep(0.06)
    assert job.advance() is True
    assert log == ["piece 0", "released"]
    with pytest.raises(JobExpired, match="deadline"):
        job.result(0)


def test_a_cancelled_job_stops_between_pieces():
    log: list[str] = []
    job = EngineJob(lambda: _pieces(100, log))
    job.advance()
    job.cancel()  # running: only the flag can stop it
    assert job.advance() is True and log == ["piece 0", "released"]
    with pytest.raises(JobExpired, match="cancelled"):
        job.result(0)
    waiting = EngineJob(lambda: _pieces(1, log))
    waiting.cancel()  # not started: it never runs
    assert waiting.advance() is True
    with pytest.raises(CancelledError):
        waiting.result(0)


def test_a_failing_piece_fails_the_job_with_its_own_error():
    def broken():
        yield
        raise ValueError("bad piece")

    job = EngineJob(broken)
    assert job.advance() is False and job.advance() is True
    with pytest.raises(ValueError, match="bad piece"):
        job.result(0)
