"""The server facing hostile clients and hostile chat templates.

Each test reproduces one finding against `rfc serve` in a subprocess (the real listener, the
real template workers) and fails on the code before the fix (801efaf)."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DEMO_MODEL, rfc
from tests.e2e.conftest import ServerProcess

JSON = {"Content-Type": "application/json"}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _no_traceback(proc: ServerProcess) -> None:
    log = proc.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def big_body_server(demo_bundle, tmp_path_factory):
    proc = ServerProcess(demo_bundle, "--max-body-bytes", str(4 << 20), log_dir=tmp_path_factory.mktemp("sec-server"))
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


# -- finding 6: the prompt cache ------------------------------------------------------------


def test_refused_megabyte_prompts_are_neither_tokenized_nor_cached(big_body_server):
    """96 distinct 1 MiB prompts took RSS from 64 MB to 3.9 GB; each is now refused after a
    bounded amount of work and none is cached."""
    url = big_body_server.url
    before = _rss_bytes(big_body_server.proc.pid)
    started = time.monotonic()
    for i in range(48):
        prompt = f"{i} " + "lorem ipsum dolor sit amet " * 40_000  # ~1.1 MB
        r = requests.post(
            url + "/generate", data=json.dumps({"prompt": prompt, "max_tokens": 1}), headers=JSON, timeout=60
        )
        assert r.status_code == 400 and "prompt" in r.json()["error"], r.text
    per_prompt = (time.monotonic() - started) / 48
    growth = _rss_bytes(big_body_server.proc.pid) - before
    cache = requests.get(url + "/models", timeout=10).json()["tokenizer_cache"]
    assert cache["bytes"] == 0, cache  # refused prompts are not cached
    assert growth < 128 << 20, f"RSS grew by {growth >> 20} MiB"
    assert per_prompt < 0.5, f"{per_prompt:.2f} s per refused prompt"
    _no_traceback(big_body_server)


def test_prompt_cache_counts_real_bytes(demo_bundle):
    """Its own accounting was 8-13x low; now what it reports is what it holds."""
    import tracemalloc

    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.server.prompt_cache import PromptCache

    model = load_model(demo_bundle, LoadOptions(device="ref"))
    cache = PromptCache(model, max_bytes=256 << 10)
    texts = [f"{i} " + "Once upon a time there was a little girl. " * 8 for i in range(2000)]
    tracemalloc.start()
    for text in texts[:200]:
        cache.encode(text)
    held, _ = tracemalloc.get_traced_memory()
    reported = cache.stats()["bytes"]
    assert held / 2 <= reported <= held * 2, (held, reported)
    for text in texts:
        cache.encode(text)
    tracemalloc.stop()
    assert cache.stats()["bytes"] <= 256 << 10  # the bound holds in bytes


# -- finding 7: slow clients ----------------------------------------------------------------


def test_probes_answer_under_500_slow_connections(server):
    """168 connections trickling header bytes used to leave /health unanswered."""
    socks = []
    try:
        for _ in range(500):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)
        for path in ("/health", "/ready"):
            started = time.monotonic()
            r = requests.get(server.url + path, timeout=5)
            assert r.status_code == 200 and time.monotonic() - started < 1.0, (path, time.monotonic() - started)
        r = requests.post(
            server.url + "/generate", json={"prompt": "Once", "max_tokens": 4, "temperature": 0}, timeout=10
        )
        assert r.status_code == 200
    finally:
        for s in socks:
            s.close()


def test_a_request_that_trickles_past_its_deadline_is_dropped(demo_bundle, tmp_path):
    proc = ServerProcess(demo_bundle, "--request-timeout", "1", log_dir=tmp_path).wait_ready()
    try:
        s = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 8:
            s.sendall(b"X: y\r\n")  # a byte now and then keeps an idle timeout at bay, not a deadline
            s.settimeout(0.5)
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
        assert closed and time.monotonic() - started < 6
    finally:
        proc.stop()


# -- finding 8: hostile chat templates ------------------------------------------------------

SLOW_TEMPLATE = "{% set s = 'x' * 1000000 %}{% set t = 'x' * 999999 ~ 'y' %}{% set l = [s] * 400000 %}{{ t in l }}"
HUNGRY_TEMPLATE = "{{ (['x' * 999999] * 999999) | join }}"
DEEP_TEMPLATE = "{% if true %}" * 5000 + "x" + "{% endif %}" * 5000


def _bundle_with_template(tmp_path: Path, name: str, source: str) -> Path:
    template = tmp_path / f"{name}.jinja"
    template.write_text(source)
    out = tmp_path / name
    rfc("compile", DEMO_MODEL, "-o", out, "-q", "--chat-template", template, check=True)
    return out


@pytest.mark.parametrize("source", [SLOW_TEMPLATE, HUNGRY_TEMPLATE], ids=["slow", "hungry"])
def test_a_hostile_template_does_not_stall_the_server(tmp_path, source):
    bundle = _bundle_with_template(tmp_path, "hostile", source)
    proc = ServerProcess(bundle, "--template-timeout", "2", log_dir=tmp_path).wait_ready()
    try:
        rss = _rss_bytes(proc.proc.pid)
        chat: dict = {}

        def hostile():
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            started = time.monotonic()
            chat["r"] = requests.post(proc.url + "/v1/chat/completions", json=body, timeout=30)
            chat["s"] = time.monotonic() - started

        t = threading.Thread(target=hostile)
        t.start()
        time.sleep(0.3)
        while t.is_alive():  # everything else keeps answering meanwhile
            started = time.monotonic()
            assert requests.get(proc.url + "/health", timeout=5).status_code == 200
            r = requests.post(proc.url + "/generate", json={"prompt": "Once", "max_tokens": 2}, timeout=5)
            assert r.status_code == 200 and time.monotonic() - started < 1.0
            time.sleep(0.1)
        t.join()
        assert chat["r"].status_code in (400, 500) and chat["s"] < 5.0, (chat["r"].text, chat["s"])
        assert "template" in chat["r"].json()["error"]["message"]
        assert _rss_bytes(proc.proc.pid) - rss < 256 << 20
        # the worker was replaced: the next render is answered the same way, not hung
        r = requests.post(
            proc.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30
        )
        assert r.status_code in (400, 500)
        _no_traceback(proc)
    finally:
        proc.stop()


def test_a_deeply_nested_template_does_not_stop_serve(tmp_path):
    bundle = _bundle_with_template(tmp_path, "deep", DEEP_TEMPLATE)
    proc = ServerProcess(bundle, log_dir=tmp_path).wait_ready()
    try:
        r = requests.post(proc.url + "/generate", json={"prompt": "Once", "max_tokens": 2}, timeout=10)
        assert r.status_code == 200
        r = requests.post(
            proc.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10
        )
        assert 400 <= r.status_code < 600 and r.status_code != 503 and "template" in r.text
        _no_traceback(proc)
    finally:
        proc.stop()


# -- finding 9: request ids -----------------------------------------------------------------


def test_request_ids_are_unguessable_json_numbers(server):
    ids = []
    for _ in range(12):
        r = requests.post(server.url + "/generate", json={"prompt": "Once", "max_tokens": 1}, timeout=10)
        ids.append(r.json()["request_id"])
    assert all(isinstance(i, int) and 0 < i < 2**53 for i in ids)
    assert len(set(ids)) == len(ids)
    steps = {b - a for a, b in zip(ids, ids[1:])}
    assert max(ids) > 2**40 and len(steps) == len(ids) - 1, ids  # not a counter
    assert requests.get(f"{server.url}/status/{ids[-1] + 1}", timeout=10).status_code == 404


# -- finding 10: 500s on client input -------------------------------------------------------


def _post_raw(url: str, body: bytes) -> requests.Response:
    return requests.post(url, data=body, headers=JSON, timeout=30)


@pytest.mark.parametrize(
    "route, body, field",
    [
        ("/generate", b'{"prompt": "a\\ud800b"}', "prompt"),
        ("/v1/completions", b'{"prompt": "\\udfff"}', "prompt"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
        ("/api/chat", b'{"model": "stories260K", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
        ("/v1/completions", b'{"prompt": "a", "repetition_penalty": 1e-320}', "repetition_penalty"),
        (
            "/api/generate",
            b'{"model": "stories260K", "prompt": "a", "options": {"repeat_penalty": 1e-320}}',
            "repeat_penalty",
        ),
        ("/v1/completions", b'{"prompt": "a", "temperature": 1e300}', "temperature"),
        ("/v1/completions", b'{"prompt": "a", "logit_bias": {"5": 1e300}}', "logit_bias"),
        ("/generate", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": ' + b"[" * 700 + b"]" * 700 + b"}]}",
            None,
        ),
    ],
    ids=[
        "surrogate-native",
        "surrogate-openai",
        "surrogate-chat",
        "surrogate-ollama",
        "tiny-penalty",
        "tiny-penalty-ollama",
        "huge-temperature",
        "huge-bias",
        "deep-json",
        "deep-content",
    ],
)
def test_hostile_fields_are_400_naming_the_field(server, route, body, field):
    r = _post_raw(server.url + route, body)
    assert r.status_code == 400, r.text
    if field:
        assert field in r.text
    _no_traceback(server)


# -- finding 11: exit when loading fails, whatever SIGINT's disposition -------------------------


def test_serve_exits_when_the_bundle_fails_to_load_with_sigint_ignored(demo_bundle, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demo_bundle, broken)
    with open(broken / "weights.bin", "r+b") as f:
        f.write(b"\x00" * 64)
    log = open(tmp_path / "serve.log", "wb")
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from rfc.cli.main import main; main()", "serve", str(broken), "--port", str(number)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.wait(timeout=60) == 1
        assert "failed verification" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


# -- finding 12: cross-site simple requests ------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
def test_json_routes_refuse_what_a_browser_sends_without_preflight(demo_bundle, tmp_path_factory, content_type):
    proc = _cors_server(demo_bundle, tmp_path_factory)
    metrics_before = _generations(proc)
    headers = {"Origin": "https://evil.example"}
    if content_type:
        headers["Content-Type"] = content_type
    for route in ("/generate", "/v1/completions", "/v1/chat/completions", "/api/generate"):
        body = json.dumps({"model": "stories260K", "prompt": "Once", "messages": [{"role": "user", "content": "x"}]})
        r = requests.post(proc.url + route, data=body, headers=headers, timeout=10)
        assert r.status_code == 415, (route, r.status_code, r.text)
        assert "Content-Type" in r.text
    assert _generations(proc) == metrics_before  # nothing ran


_CORS: dict = {}


def _cors_server(demo_bundle, tmp_path_factory) -> ServerProcess:
    if "proc" not in _CORS:
        _CORS["proc"] = ServerProcess(
            demo_bundle, "--cors-origin", "https://good.example", log_dir=tmp_path_factory.mktemp("cors")
        ).wait_ready()
    return _CORS["proc"]


@pytest.fixture(scope="module", autouse=True)
def _stop_cors_server():
    yield
    if "proc" in _CORS:
        _CORS.pop("proc").stop()


def _generations(proc: ServerProcess) -> float:
    text = requests.get(proc.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("rocmforge_requests_started_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_json_routes_accept_json_content_types(server):
    for ct in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
        r = requests.post(
            server.url + "/generate",
            data='{"prompt": "Once", "max_tokens": 1}',
            headers={"Content-Type": ct},
            timeout=10,
        )
        assert r.status_code == 200, (ct, r.text)


# -- strict framing, waitress's own errors, probes past the connection cap --------------------


def _raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """What the server answers to `data` on one connection, and whether it closed it (False:
    still open after `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except socket.timeout:
            return out, False
        return out, True


def test_content_length_with_transfer_encoding_is_400_and_the_connection_closes(server):
    """RFC 9112 §6.3: waitress read such a request as chunked and kept the connection open, so
    the bytes after it were served as a second request (a smuggled one)."""
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    out, closed = _raw(server.port, head + smuggled)
    assert closed and out.count(b"HTTP/1.1 ") == 1, out
    status, _, body = out.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/json" in status, out
    assert "Content-Length and Transfer-Encoding" in json.loads(body)["error"]["message"]


def test_a_body_waitress_refuses_gets_the_json_413(server):
    """Bodies past the limit and the slack waitress leaves the application were refused in
    waitress's text/plain; now in the shape of the path's API, like every other error."""
    for path, message in (
        ("/generate", lambda b: b["error"]),
        ("/v1/chat/completions", lambda b: b["error"]["message"]),
    ):
        out, closed = _raw(
            server.port,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {64 << 20}\r\n\r\n{{".encode(),
        )
        status, _, body = out.partition(b"\r\n\r\n")
        assert closed and status.startswith(b"HTTP/1.1 413 ") and b"Content-Type: application/json" in status, out
        assert "exceeds the limit of" in message(json.loads(body))


def test_api_responses_are_not_sniffed(server):
    for r in (
        requests.get(server.url + "/v1/models", timeout=10),
        requests.get(server.url + "/no/such/route", timeout=10),
        requests.post(server.url + "/v1/completions", json={"prompt": "<b>x</b>", "max_tokens": -1}, timeout=10),
    ):
        assert r.headers.get("X-Content-Type-Options") == "nosniff", (r.request.url, r.status_code, r.headers)


def test_probes_answer_while_idle_sockets_hold_the_connection_cap(demo_bundle, tmp_path):
    """1,100 idle sockets used to leave /health unanswered for ~40 s (the connections waited in
    the listen backlog). Past the cap a connection now gets a probe's answer, or a 503 at once."""
    proc = ServerProcess(demo_bundle, "--max-connections", "16", "--idle-timeout", "120", log_dir=tmp_path).wait_ready()
    socks = []
    try:
        socks = [socket.create_connection(("127.0.0.1", proc.port), timeout=5) for _ in range(16 + 64 + 40)]
        for path in ("/health", "/ready"):
            started = time.monotonic()
            r = requests.get(proc.url + path, timeout=10)
            assert r.status_code == 200 and time.monotonic() - started < 6, (path, time.monotonic() - started)
        started = time.monotonic()
        r = requests.post(proc.url + "/v1/completions", json={"prompt": "Once", "max_tokens": 2}, timeout=10)
        assert r.status_code == 503 and "--max-connections" in r.json()["error"]["message"], r.text
        assert r.headers["Retry-After"] and time.monotonic() - started < 6
        for s in socks:
            s.close()
        socks = []
        serving = time.monotonic() + 5  # once the listener has seen the closes
        while (
            r := requests.post(proc.url + "/v1/completions", json={"prompt": "Once", "max_tokens": 2}, timeout=10)
        ).status_code == 503 and time.monotonic() < serving:
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        _no_traceback(proc)
    finally:
        for s in socks:
            s.close()
        proc.stop()
