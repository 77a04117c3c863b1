"""--threads on run and serve: the count reaches the environment the kernels load under and
the startup log says it; the default is the affinity mask's cores."""

import os

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


def test_threads_reach_the_kernels_environment():
    from rfc.cli.threads import apply_threads

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    try:
        choice = apply_threads(3)
        assert choice.threads == 3 and os.environ["OMP_NUM_THREADS"] == "3" == os.environ["OPENBLAS_NUM_THREADS"]
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
