"""A small HTTP client of the native API for the `rfc generate/status/cancel/models/health`
commands (ROCmForge's CLI client). Standard library only: the CLI must not need a package the
server does not. Every failure becomes a `ClientError` with one line a user can act on."""

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPResponse


class ClientError(Exception):
    """The server could not be reached or answered with an error."""


@dataclass(frozen=True)
class Server:
    url: str  # e.g. http://127.0.0.1:8080
    api_key: str | None = None
    timeout_s: float = 300.0

    def get(self, path: str) -> dict:
        return self._json(self._open("GET", path))

    def post(self, path: str, body: dict | None = None) -> dict:
        return self._json(self._open("POST", path, body))

    def stream(self, path: str, body: dict) -> tuple[HTTPResponse, Iterator[dict]]:
        """The open response (its headers are there at once) and its SSE events as they come."""
        response = self._open("POST", path, body)
        return response, _sse_events(response, self.url + path)

    def _open(self, method: str, path: str, body: dict | None = None) -> HTTPResponse:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json, text/event-stream"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as e:
            raise ClientError(f"HTTP {e.code} from {method} {path}: {_error_message(e)}") from None
        except urllib.error.URLError as e:
            raise ClientError(f"cannot reach the server at {self.url}: {_reason(e.reason)}") from None
        except (TimeoutError, socket.timeout):
            raise ClientError(f"no answer from {self.url} within {self.timeout_s:g} s") from None
        except (ValueError, OSError) as e:  # a malformed URL, a reset connection
            raise ClientError(f"cannot reach the server at {self.url}: {e}") from None

    def _json(self, response: HTTPResponse) -> dict:
        try:
            with response:
                return json.loads(response.read())
        except (TimeoutError, socket.timeout):
            raise ClientError(f"no answer from {self.url} within {self.timeout_s:g} s") from None
        except (ValueError, OSError) as e:
            raise ClientError(f"bad answer from {self.url}: {e}") from None


def _sse_events(response: HTTPResponse, where: str) -> Iterator[dict]:
    data: list[str] = []
    try:
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    yield json.loads("\n".join(data))
                    data = []
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
    except (TimeoutError, socket.timeout):
        raise ClientError(f"the stream from {where} stalled") from None
    except (ValueError, OSError) as e:
        raise ClientError(f"the stream from {where} broke: {e}") from None


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read())
    except (ValueError, OSError):
        return e.reason or "error"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error or body)


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is `rfc serve` running there?)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    return str(getattr(reason, "strerror", None) or reason)
