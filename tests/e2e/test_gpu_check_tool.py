"""tools/gpu_check.py, the one command run when a GPU is lent (rarely: the first was on
2026-11-25), in its dry run on the cpu device (`--target cpu`): the whole tool but the GPU's own
checks runs in CI, so it still works on the day a GPU comes. Offline, as on the lent machine:
`--fixtures` names the fixtures and nothing is fetched."""

import subprocess
import sys

from tests.conftest import DEMO_MODEL, FIXTURES, ROOT


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "gpu_check.py"),
            "--target",
            "cpu",
            "--fixtures",
            str(FIXTURES),
            "--out",
            str(tmp_path),
            "--prompt",
            "16",
            "--decode",
            "4",
            str(DEMO_MODEL),
            str(FIXTURES / "tiny-llama-Q8_0.gguf"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {
        line.split()[0]: line
        for line in proc.stdout.splitlines()
        if line.split()[:1] in (["stories260K"], ["llama-Q8_0"])
    }
    assert "greedy-from-bos same, greedy-dragon same" in rows["stories260K"]
    assert rows["stories260K"].count("spec ngram same") == 2, rows["stories260K"]
    assert "q8_0 cache vs ref q8_0 llama-Q8_0" in rows["llama-Q8_0"], rows["llama-Q8_0"]
