"""schemathesis against `rfc serve`: every route of the server's own OpenAPI
document (`GET /openapi.json`), with bodies, parameters and methods generated from it, valid and
not. No answer may be a 5xx (Ollama's model management answers 501 by design), every answer must
match the document (status, media type, shape, each SSE event of a stream), every body the
document forbids must be refused with a 4xx, an API key must be asked for where the document
says so, and the server's log must hold no traceback.

The run is bounded for CI: a fixed seed, a few examples per operation (each phase of
tests/fuzz/schemathesis.toml), about a minute on a loaded 2-core machine. Longer runs by hand:
docs/security.md ("Regression tests (server)")."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProcess, demo_bundle  # noqa: F401 (the compiled demo model, a fixture)

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 29
CLIENT_KEY, ADMIN_KEY = "fuzz-client-key", "fuzz-admin-key"
# The run takes ~100 s alone on a 2-core machine; 240 s ran out twice with compiles beside it on the same cores.
RUN_TIMEOUT_S = 420


def test_every_route_answers_as_its_document_says(demo_bundle, tmp_path, fuzz_cases):
    # API keys on, so the document declares them and schemathesis checks that they are asked
    # for; the admin key lets it reach /traces as well.
    server = ServerProcess(demo_bundle, "--api-key", CLIENT_KEY, "--admin-api-key", ADMIN_KEY, log_dir=tmp_path)
    try:
        server.wait_ready()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(CONFIG),
                "--no-color",
                "run",
                server.url + "/openapi.json",
                "--header",
                f"Authorization: Bearer {ADMIN_KEY}",
                "--seed",
                str(SEED),
                "--max-examples",
                str(fuzz_cases(3)),
                "--workers",
                "1",
                "--request-timeout",
                "30",
                "--report",
                "junit",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            cwd=tmp_path,
        )
    finally:
        server.stop()
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-12000:]
    tested = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", out)
    assert tested and tested[1] == tested[2] == tested[3], out[-3000:]  # every operation of the document
    cases = re.search(r"(\d+) generated", out)
    assert cases and int(cases[1]) >= 300, out[-3000:]
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:4000]
