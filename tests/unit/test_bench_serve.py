"""tools/bench_serve.py's account of a request: its tokens, and, when it ends short, why (the
stream's finish reason, an error event, an HTTP error). A real HTTP server on 127.0.0.1 streams
what a serving engine streams when a step fails after the first token."""

import http.server
import importlib.util
import json
import sys
import threading
from types import SimpleNamespace

import pytest
import requests

from tests.conftest import ROOT


def _tool():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "tools" / "bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/busy/v1/completions":
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "the queue is full"}}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = [{"choices": [{"text": "Once", "finish_reason": None}]}]
        if self.path == "/fails/v1/completions":
            events.append({"error": {"message": "DeviceError: step failed", "type": "server_error"}})
        else:
            events += [{"choices": [{"text": " upon", "finish_reason": "length"}]}]
        for e in events:
            self.wfile.write(b"data: " + json.dumps(e).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_request_cut_short_says_why(url):
    tool = _tool()
    args = SimpleNamespace(api="openai", max_tokens=2)
    whole = tool._one_request(requests.Session(), url, args, "p")
    assert (whole.tokens, whole.finish_reason, whole.error) == (2, "length", None)
    failed = tool._one_request(requests.Session(), url + "/fails", args, "p")
    assert failed.tokens == 1 and "DeviceError: step failed" in failed.error
    busy = tool._one_request(requests.Session(), url + "/busy", args, "p")
    assert busy.tokens == 0 and busy.error.startswith("HTTP 503") and "queue is full" in busy.error
    row = tool._summary(3, [whole, failed, busy], 1.0, max_tokens=2)
    assert (row["tokens"], row["short"], row["errors"]) == (3, 2, 2)
    assert row["finish_reasons"] == {"length": 1, "None": 2} and "DeviceError" in row["first_error"]
