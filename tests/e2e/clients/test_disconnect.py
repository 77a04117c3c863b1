"""A non-streamed request whose client goes away is cancelled while it is
still producing tokens (the disconnect probe used to run only after 0.25 s without a token,
so a request that kept producing ran to max_tokens). Clients as users run them: the openai
package with a 1 s timeout on /v1/completions and /v1/chat/completions, `rfc generate`
interrupted with Ctrl-C (SIGINT) on /generate; SmolLM2 (~50 tok/s on 2 cores) is still
generating when they leave."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

from tests.e2e.clients.conftest import CHAT

pytestmark = [pytest.mark.shared, pytest.mark.slow]
LONG = 2000  # tokens: tens of seconds of SmolLM2, far more than the client waits
LEAVE_AFTER_S = 1.0
CANCEL_WITHIN_S = 0.5


def cancelled_total(url: str, counter: str = "cancelled") -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    match = re.search(rf'^rocmforge_requests_{counter}_total\{{model="' + re.escape(CHAT) + r'"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_cancelled(url: str, before: float, count: int, timeout: float) -> float:
    """Seconds until `count` more requests were cancelled; fails past `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout + 5:
        if cancelled_total(url) >= before + count:
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(
        f"{count} cancellations not counted within {timeout + 5} s (now {cancelled_total(url) - before})"
    )


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=LEAVE_AFTER_S)


def leave_completion(url: str) -> None:
    with pytest.raises(openai.APITimeoutError):
        openai_client(url).completions.create(model=CHAT, prompt="Once upon a time", max_tokens=LONG, temperature=0)


def leave_chat(url: str) -> None:
    with pytest.raises(openai.APITimeoutError):
        openai_client(url).chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
            max_tokens=LONG,
            temperature=1.0,
            extra_body={"ignore_eos": True},
        )


def leave_generate(url: str) -> None:
    """`rfc generate` without --stream, interrupted by Ctrl-C (SIGINT) after a second (greedy: the
    server's default temperature 1 may sample an end within the second)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from rfc.cli.main import main; main()",
            "generate",
            "Once upon a time",
            "--model",
            CHAT,
            "-n",
            str(LONG),
            "--temperature",
            "0",
            "--url",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C's default, as at a terminal: a suite started as a background job of a shell
        # without job control passes SIGINT on ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(LEAVE_AFTER_S + 0.5)  # the interpreter's start, then a second of generation
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130


@pytest.mark.parametrize(
    "route, leave",
    [("/v1/completions", leave_completion), ("/v1/chat/completions", leave_chat), ("/generate", leave_generate)],
)
def test_a_non_streamed_request_is_cancelled_when_its_client_leaves(clients_server, route, leave):
    url = clients_server.url
    before = cancelled_total(url)
    leave(url)
    assert wait_cancelled(url, before, 1, CANCEL_WITHIN_S) <= CANCEL_WITHIN_S
    # the request's log line: cancelled (499, nginx's "client closed request") a moment after the client left
    lines = [
        line
        for line in Path(clients_server.log_path).read_text().splitlines()
        if f"method=POST route={route} status=499" in line
    ]
    assert lines, clients_server.log()[-3000:]
    duration = float(re.search(r"duration_ms=([\d.]+)", lines[-1]).group(1)) / 1000
    assert duration < LEAVE_AFTER_S + 2.0


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_64_clients_leaving_at_once_leave_no_kv_page_or_thread(clients_server):
    url = clients_server.url
    health = requests.get(url + "/health", timeout=10).json()["checks"]["models"][CHAT]
    assert health["requests"] == {"active": 0, "queued": 0}
    threads = _threads(clients_server.proc.pid)
    before = {c: cancelled_total(url, c) for c in ("cancelled", "started", "completed")}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with pytest.raises(openai.APITimeoutError):
                openai_client(url).completions.create(
                    model=CHAT,
                    prompt=f"Story number {i}:",
                    max_tokens=LONG,
                    temperature=1.0,
                    # a sampled end would answer in time
                    extra_body={"ignore_eos": True},
                )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:3]
    # every request the server took is cancelled (on a loaded machine a client may give up before
    # its request reaches the engine: then there is nothing to cancel), none runs to its end
    started = cancelled_total(url, "started") - before["started"]
    assert started >= 48
    wait_cancelled(url, before["cancelled"], started, 3.0)
    assert cancelled_total(url, "completed") == before["completed"]
    deadline = time.monotonic() + 10
    while True:
        health = requests.get(url + "/health", timeout=10).json()["checks"]["models"][CHAT]
        if health["cache"]["pages_used"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert health["requests"] == {"active": 0, "queued": 0}
    assert health["cache"]["pages_used"] == 0 and health["cache"]["active_sequences"] == 0
    assert _threads(clients_server.proc.pid) <= threads
