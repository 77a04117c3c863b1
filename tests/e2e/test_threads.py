"""--threads on run and serve: the count reaches the cpu step program as a value, and the
startup log says it; the default is the affinity mask's cores."""

import os
import subprocess
import sys

from tests.conftest import rfc
from tests.e2e.conftest import ServerProcess


def test_run_logs_the_thread_count_and_defaults_to_the_affinity_mask(demo_bundle):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = rfc("run", demo_bundle, "-p", "Once", "-n", "4", "--temperature", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    cores = len(os.sched_getaffinity(0))
    assert f"{cores} compute thread" in proc.stderr and "affinity mask" in proc.stderr
    proc = rfc("run", demo_bundle, "-p", "Once", "-n", "4", "--temperature", "0", "--threads", "1", env=env)
    assert proc.returncode == 0 and "1 compute thread (--threads" in proc.stderr
    assert rfc("run", demo_bundle, "--threads", "0").returncode == 2  # a usage error, not a crash


# Loads the bundle on the cpu device with LoadOptions(threads=N), runs one step and prints the
# device's count and the process's threads (libgomp starts a team's other N - 1 threads on its
# first parallel region and keeps them).
_TEAM = """
import os, sys
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.assemble import LoadOptions, load_model
model = load_model(sys.argv[1], LoadOptions(device="cpu", threads=int(sys.argv[2])))
blocks = model.kv_pool.manager()
blocks.allocate(0, 4)
before = len(os.listdir("/proc/self/task"))
model.executor.forward(build_batch([ScheduledChunk(0, 0, (1, 2, 3, 4))], blocks))
print(model.device.n_threads, len(os.listdir("/proc/self/task")) - before)
"""


def _team(bundle, threads: int, env: dict) -> tuple[int, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _TEAM, str(bundle), str(threads)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    device, started = proc.stdout.split()
    return int(device), int(started)


def test_threads_is_a_value_the_step_program_runs_with(demo_bundle):
    """--threads reaches the device as a value (LoadOptions), not through OMP_NUM_THREADS: a
    user's OMP_NUM_THREADS=4 changes nothing when the command asks for 1 or 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    assert _team(demo_bundle, 1, env) == (1, 0)
    assert _team(demo_bundle, 2, env) == (2, 1)


def test_the_command_passes_its_choice_and_numpys_blas_its_variables():
    from rfc.cli.threads import apply_threads

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    try:
        os.environ.pop("OMP_NUM_THREADS", None)
        choice = apply_threads(3)
        assert choice.threads == 3 and os.environ["OPENBLAS_NUM_THREADS"] == "3" and "OMP_NUM_THREADS" not in os.environ
        os.environ["OMP_NUM_THREADS"] = "2"
        assert apply_threads(None).threads == 2  # the user's own setting wins over the default
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_serve_logs_the_thread_count(demo_bundle, tmp_path):
    server = ServerProcess(demo_bundle, "--threads", "2", "--http-threads", "8", log_dir=tmp_path)
    try:
        server.wait_ready()
        assert "2 compute threads (--threads" in server.log()
        assert "8 HTTP threads" in server.log()
    finally:
        server.stop()
