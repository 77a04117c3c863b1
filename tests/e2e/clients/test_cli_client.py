"""`rfc generate/status/cancel/models/health` (ROCmForge's CLI client) against the two-model
server; `rfc generate --stream` in a pseudo-terminal, interrupted with Ctrl-C."""

import json
import os
import pty
import re
import select
import signal
import sys
import time

import pytest
import requests

from tests.conftest import rfc
from tests.e2e.clients.conftest import CHAT, DEMO, SMOLLM2
from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.shared, pytest.mark.slow]
MAX_TOKENS = 300  # SmolLM2 makes ~50 tok/s here: seconds of generation to interrupt


def _read_until(fd: int, pattern: re.Pattern, timeout: float) -> tuple[re.Match, bytes]:
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            match = pattern.search(out)
            if match:
                return match, out
    raise AssertionError(f"no {pattern.pattern!r} within {timeout} s; the terminal showed {out!r}")


def test_generate_stream_shows_tokens_live_and_ctrl_c_cancels_on_the_server(url):
    args = [
        "generate",
        "Once upon a time",
        "--stream",
        "--model",
        CHAT,
        "--max-tokens",
        str(MAX_TOKENS),
        "--temperature",
        "0",
        "--url",
        url,
    ]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own with the pseudo-terminal as its terminal
        # Ctrl-C's default, as at a terminal: a suite started as a background job of a shell
        # without job control passes SIGINT on ignored, and Python then never raises KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(sys.executable, [sys.executable, "-c", "from rfc.cli.main import main; main()", *args])
    try:
        # the request id, then the first generated text after it
        match, _ = _read_until(fd, re.compile(rb"rfc: request (\d+)\r?\n(.*\S)"), timeout=60)
        request_id = int(match.group(1))
        live = requests.get(f"{url}/status/{request_id}", timeout=10).json()
        assert live["finished"] is False and len(live["tokens"]) < MAX_TOKENS  # shown before the last token exists
        os.write(fd, b"\x03")  # Ctrl-C, as the terminal's line discipline delivers it
        _read_until(fd, re.compile(rb"cancelled request " + match.group(1)), timeout=30)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 130
    final = requests.get(f"{url}/status/{request_id}", timeout=10).json()
    assert final["finished"] is True and final["finish_reason"] == "cancelled" and len(final["tokens"]) < MAX_TOKENS


def test_generate_prints_the_servers_text(url):
    out = rfc(
        "generate", "Once upon a time", "--max-tokens", "12", "--temperature", "0", "--url", url, check=True
    ).stdout
    expected = requests.post(
        url + "/generate", json={"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}, timeout=30
    ).json()
    assert out == expected["text"] + "\n"
    streamed = rfc(
        "generate", "Once upon a time", "--stream", "-n", "12", "--temperature", "0", "--url", url, check=True
    )
    assert streamed.stdout == out and re.match(r"rfc: request \d+\n", streamed.stderr)


def test_models_names_the_gguf_and_the_bundle(clients_server, clients_bundles):
    """`path` is the GGUF the bundle was compiled from, as recorded at compile
    (its file name: a response names no path of the serving machine), and `bundle` the bundle's
    directory, by name."""
    body = rfc("models", "--json", "--url", clients_server.url, check=True).stdout
    models = {m["id"]: m for m in json.loads(body)["models"]}
    demo, chat = clients_bundles
    assert models[DEMO]["path"] == "stories260K.gguf" and models[DEMO]["bundle"] == demo.name
    assert models[CHAT]["path"] == SMOLLM2.name and models[CHAT]["bundle"] == chat.name
    assert str(demo.parent) not in body and str(chat.parent) not in body and str(SMOLLM2.parent) not in body


def test_status_cancel_models_health(url):
    rid = requests.post(url + "/generate", json={"prompt": "Hi", "max_tokens": 3, "model": DEMO}, timeout=30).json()[
        "request_id"
    ]
    assert f'"request_id": {rid}' in rfc("status", str(rid), "--url", url, check=True).stdout
    # already done: unchanged
    assert '"finish_reason": "length"' in rfc("cancel", str(rid), "--url", url, check=True).stdout
    models = rfc("models", "--url", url, check=True).stdout
    assert DEMO in models and CHAT in models and "Q4_1" in models
    health = rfc("health", "--url", url)
    assert health.returncode == 0 and '"status": "healthy"' in health.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "hi"], "connection refused"),
        (["status", "1"], "connection refused"),
        (["health", "--timeout", "2"], "connection refused"),
    ],
)
def test_server_down_is_one_line(args, message):
    proc = rfc(*args, "--url", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 1 and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_http_errors_are_one_line(url):
    missing = rfc("status", "987654321", "--url", url)
    assert (
        missing.returncode == 1
        and missing.stderr == "rfc: error: HTTP 404 from GET /status/987654321: request 987654321 not found\n"
    )
    unknown = rfc("generate", "hi", "--model", "llama3", "--url", url)
    assert unknown.returncode == 1 and "HTTP 404" in unknown.stderr and CHAT in unknown.stderr
