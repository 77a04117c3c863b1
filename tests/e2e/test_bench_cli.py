"""`rfc bench`: the table on the demo model, llama-bench interleaved when a llama.cpp build
is at hand (RFC_LLAMA_BENCH, or tools/build_llama_cpp.sh's default place)."""

import os
from pathlib import Path

import pytest

from tests.conftest import DEMO_MODEL, rfc

LLAMA_BENCH = Path(os.environ.get("RFC_LLAMA_BENCH", "/tmp/llama.cpp-build/build/bin/llama-bench"))
SMALL = ["--prefill", "16,32", "--batches", "1,2", "--gen", "2", "--repeat", "1", "--threads", "1"]


def test_bench_prints_every_figure(demo_bundle):
    proc = rfc(
        "bench",
        demo_bundle,
        *SMALL,
        "--device",
        "ref",
        env={k: v for k, v in os.environ.items() if k != "RFC_LLAMA_BENCH"},
    )
    assert proc.returncode == 0, proc.stderr
    for row in (
        "prefill 16 (tok/s)",
        "prefill 32 (tok/s)",
        "decode batch 1 (tok/s)",
        "decode batch 2, aggregate",
        "TTFT, 32-token prompt",
        "prefix cache",
        "load time",
        "peak RSS",
        "read bandwidth",
    ):
        assert row in proc.stdout, row
    assert "1 compute thread" in proc.stdout


def test_llama_bench_needs_the_gguf_of_a_bundle(demo_bundle, tmp_path):
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    proc = rfc("bench", demo_bundle, *SMALL, "--llama-bench", fake)
    assert proc.returncode == 2 and "--gguf" in proc.stderr


def test_a_failing_llama_bench_is_one_line(demo_bundle, tmp_path):
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\necho 'no such model' >&2\nexit 3\n")
    fake.chmod(0o755)
    proc = rfc("bench", demo_bundle, *SMALL, "--device", "ref", "--llama-bench", fake, "--gguf", DEMO_MODEL)
    assert proc.returncode == 1 and "exited with 3" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(
    not LLAMA_BENCH.exists(), reason=f"no llama-bench at {LLAMA_BENCH} (tools/build_llama_cpp.sh builds one)"
)
def test_llama_bench_ratios(demo_bundle):
    proc = rfc("bench", demo_bundle, *SMALL, "--device", "ref", "--llama-bench", LLAMA_BENCH, "--gguf", DEMO_MODEL)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| decode batch 1 "))
    rfc_tps, llama_tps, ratio = (cell.strip() for cell in row.strip("|").split("|")[1:4])
    # printed to 2 decimals
    assert float(llama_tps) > 0 and float(ratio) == pytest.approx(float(rfc_tps) / float(llama_tps), abs=0.006)


def test_llama_bench_runs_in_the_users_environment(demo_bundle, tmp_path):
    """rfc sets OMP_WAIT_POLICY=PASSIVE (and thread counts) for its own kernels; llama-bench
    inheriting them ran its decode at 60% speed, so the ratios favoured rfc unfairly."""
    fake = tmp_path / "llama-bench"
    fake.write_text(
        '#!/bin/sh\necho "policy=[${OMP_WAIT_POLICY:-unset}] spin=[${GOMP_SPINCOUNT:-unset}] '
        'omp=[${OMP_NUM_THREADS:-unset}]" >&2\nexit 3\n'
    )
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    proc = rfc("bench", demo_bundle, *SMALL, "--device", "cpu", "--llama-bench", fake, "--gguf", DEMO_MODEL, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "policy=[unset] spin=[unset] omp=[unset]" in proc.stderr


def test_llama_bench_stores_the_cache_rfc_stores(tmp_path):
    """rfc bench's --cache-type-k/-v reach llama-bench as its -ctk/-ctv, so both sides of a
    ratio store the same KV cache; the f16 default passes nothing (older builds lack the flags)."""
    from rfc.cli.llama_bench import LlamaBenchError, run_llama_bench

    fake = tmp_path / "llama-bench"
    fake.write_text('#!/bin/sh\necho "args=[$*]" >&2\nexit 3\n')
    fake.chmod(0o755)
    with pytest.raises(LlamaBenchError, match=r"-n 2 -ctk q8_0 -ctv q4_0\]"):
        run_llama_bench(fake, DEMO_MODEL, 1, (16,), 2, cache_types=("q8_0", "q4_0"))
    with pytest.raises(LlamaBenchError) as e:
        run_llama_bench(fake, DEMO_MODEL, 1, (16,), 2)
    assert "-n 2]" in str(e.value)


def test_an_sdist_build_is_named_by_build_llama_cpps_note(tmp_path):
    """llama-bench built from an sdist reports build_commit "unknown"; the line
    tools/build_llama_cpp.sh leaves beside it names the build instead."""
    from rfc.cli.llama_bench import run_llama_bench

    fake = tmp_path / "llama-bench"
    fake.write_text(
        '#!/bin/sh\necho \'[{"n_prompt": 16, "n_gen": 0, "avg_ts": 10.0, "build_commit": '
        '"unknown", "cpu_info": "CPU X"}, {"n_prompt": 0, "n_gen": 2, "avg_ts": 5.0, '
        '"build_commit": "unknown"}]\'\n'
    )
    fake.chmod(0o755)
    assert run_llama_bench(fake, DEMO_MODEL, 1, (16,), 2).build == "unknown build (CPU X)"
    (tmp_path / "LLAMA_CPP_VERSION").write_text("vendored in llama_cpp_python-0.3.36\n")
    figures = run_llama_bench(fake, DEMO_MODEL, 1, (16,), 2)
    assert figures.build == "vendored in llama_cpp_python-0.3.36 (CPU X)"
    assert figures.prefill == {16: 10.0} and figures.decode == 5.0
