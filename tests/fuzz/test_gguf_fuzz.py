"""Fuzzing `rfc compile` with mutated GGUFs: every mutation either compiles or is
refused with a CompileError — one line, exit 2 — never a traceback, a hang or a runaway
allocation. The default run is small enough for CI (fixed seed); run longer by hand:

    pytest tests/fuzz/test_gguf_fuzz.py --fuzz-cases 5000
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_MODEL, FIXTURES, rfc
from tests.fuzz.gguf_mutate import locate, mutate

MEMORY_LIMIT = 4 << 30
CASE_SECONDS = 20
SEEDS = {"stories260K": DEMO_MODEL, "tiny-qwen2-Q8_0": FIXTURES / "tiny-qwen2-Q8_0.gguf"}


def _run_worker(paths: list[Path]) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.gguf_worker", str(MEMORY_LIMIT), str(CASE_SECONDS)],
        input="\n".join(map(str, paths)) + "\n", capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[2], timeout=CASE_SECONDS * len(paths) + 120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.shared
@pytest.mark.parametrize("model", sorted(SEEDS))
def test_mutated_ggufs_compile_or_are_refused(model, tmp_path, fuzz_cases):
    src = SEEDS[model]
    if not src.is_file():
        pytest.skip(f"{src} not found")
    data = src.read_bytes()
    fields = locate(data)
    cases = {}
    for seed in range(fuzz_cases(120)):
        mutated, what = mutate(data, fields, seed)
        path = tmp_path / f"case-{seed}.gguf"
        path.write_bytes(mutated)
        cases[str(path)] = (seed, what)
    results = _run_worker([Path(p) for p in cases])
    assert len(results) == len(cases)
    bad = [(cases[r["file"]], r["outcome"], r["detail"]) for r in results if r["outcome"] not in ("ok", "refused")]
    assert not bad, "\n".join(f"seed {s} ({what}): {outcome}\n{detail}" for (s, what), outcome, detail in bad[:5])
    multi_line = [(cases[r["file"]], r["detail"]) for r in results if r["outcome"] == "refused" and "\n" in r["detail"]]
    assert not multi_line, multi_line[:3]
    refused = sum(r["outcome"] == "refused" for r in results)
    assert refused > len(results) // 4, "the mutations should mostly break the file"


@pytest.mark.shared
def test_refusals_through_the_command_line_are_one_line_and_leave_nothing(tmp_path):
    """A few mutations end to end: exit 2, one line on stderr, nothing in the output folder."""
    data = DEMO_MODEL.read_bytes()
    fields = locate(data)
    out = tmp_path / "out"
    out.mkdir()
    checked = 0
    for seed in range(40):
        mutated, what = mutate(data, fields, 10_000 + seed)
        path = tmp_path / "case.gguf"
        path.write_bytes(mutated)
        proc = rfc("compile", path, "-o", out / "bundle", "-q", "--no-cache")
        if proc.returncode == 0:
            import shutil

            shutil.rmtree(out / "bundle")
            continue
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (what, proc.stderr)
        assert "Traceback" not in proc.stderr and list(out.iterdir()) == [], what
        checked += 1
        if checked == 8:
            break
    assert checked == 8
