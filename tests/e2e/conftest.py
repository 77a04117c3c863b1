"""Fixtures for the server tests: the demo bundle compiled once, `rfc serve` in a subprocess
on a 127.0.0.1 port of the kernel's choosing, and `rfc run` as the reference for greedy text."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DEMO_MODEL, rfc

READY_TIMEOUT_S = 60.0
# The shared server's admin key: /traces is the admin's (docs/security.md).
ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The server's line once bound (plain or JSON logs alike): the port it got.
LISTENING = re.compile(r"listening on http://(?:\[[^\]]*\]|[^:/\s]+):(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BIND_ATTEMPTS = 3  # starts of a program given ports from free_port(), should another process take them first


def start_on_free_ports(start, answers, log, what: str) -> subprocess.Popen:
    """A program that binds the ports it is given (no port 0: docker-registry, vllm-router), up:
    start() launches it on ports from free_port(); answers(proc) waits for it to answer (False once
    it has ended); log() its output. Should another process take a port first, the program exits
    saying so ("address already in use") and starts again, BIND_ATTEMPTS times at most; one up but
    silent is stopped. Raises with the log when it never answers."""
    for _attempt in range(BIND_ATTEMPTS):
        proc = start()
        if answers(proc):
            return proc
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if "already in use" not in log().lower():
            break
    raise AssertionError(f"{what} did not answer:\n" + log())


def answers_within(proc: subprocess.Popen, url: str, statuses: tuple[int, ...], seconds: float) -> bool:
    """Whether GET url answers one of `statuses` within `seconds` while proc runs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(url, timeout=1).status_code in statuses:
                return True
        except requests.RequestException:  # not up yet, or another process's socket that says nothing
            pass
        time.sleep(0.05)
    return False


class ServerProcess:
    """`rfc serve BUNDLE` as a user starts it; `url` once the port accepts connections."""

    def __init__(self, bundle: Path | None, *args: str, env: dict[str, str] | None = None, log_dir: Path | None = None):
        """`bundle` None: the models come from `args` alone (`--models-dir`). The server binds
        a port of the kernel's choosing (`--port 0`) and says which in its log: a port picked
        here and passed on could be taken meanwhile by another test's server (one compiling a
        GGUF first binds seconds later), and then that server would answer this test."""
        fd, log_name = tempfile.mkstemp(prefix="serve-", suffix=".log", dir=log_dir or bundle.parent)
        os.close(fd)
        self.log_path = Path(log_name)
        self._log = open(self.log_path, "wb")
        self._port: int | None = None
        cmd = [
            sys.executable,
            "-c",
            "from rfc.cli.main import main; main()",
            "serve",
            *([str(bundle)] if bundle else []),
            "--port",
            "0",
            "--device",
            "auto",
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    @property
    def port(self) -> int:
        """The port the server bound, once it says so (waits for it)."""
        if self._port is None:
            self.wait_listening()
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._port is None:
                bound = LISTENING.search(self.log())
                if bound is None:
                    if self.proc.poll() is not None:
                        raise AssertionError(f"rfc serve exited with {self.proc.returncode}:\n{self.log()}")
                    time.sleep(0.01)
                    continue
                self._port = int(bound.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"rfc serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self._port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.01)
        raise AssertionError(f"rfc serve did not listen within {timeout} s:\n{self.log()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "ServerProcess":
        self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if requests.get(self.url + "/ready", timeout=5).status_code == 200:
                return self
            time.sleep(0.02)
        raise AssertionError(f"/ready never returned 200:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "stories260K"
    rfc("compile", DEMO_MODEL, "-o", out, "-q", check=True)
    return out


@pytest.fixture(scope="session")
def server(demo_bundle):
    """The shared server: every request traced, default limits, an admin key for /traces."""
    proc = ServerProcess(
        demo_bundle, "--trace-sample-rate", "1.0", "--log-format", "json", "--admin-api-key", ADMIN_KEY
    )
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def rfc_run(demo_bundle):
    """Greedy text of `rfc run BUNDLE -p PROMPT --temperature 0 -n N`, cached per call."""
    cache: dict[tuple[str, int], str] = {}

    def run(prompt: str, n: int) -> str:
        if (prompt, n) not in cache:
            # The bounded OpenMP spin `rfc serve` uses: unbounded spinning crawls on a busy 2-core box.
            env = {"GOMP_SPINCOUNT": "20000", **os.environ}
            out = rfc(
                "run",
                demo_bundle,
                "-p",
                prompt,
                "--temperature",
                "0",
                "-n",
                str(n),
                "--device",
                "auto",
                check=True,
                env=env,
            ).stdout
            assert out.endswith("\n")
            cache[(prompt, n)] = out[:-1]
        return cache[(prompt, n)]

    return run


def sse_events(response: requests.Response):
    """Parse an SSE body as SSE (event blocks separated by blank lines), yielding the data."""
    data: list[str] = []
    for raw in response.iter_lines(decode_unicode=False):
        line = raw.decode("utf-8")
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def sse_json(response: requests.Response):
    for data in sse_events(response):
        if data == "[DONE]":
            return
        yield json.loads(data)
