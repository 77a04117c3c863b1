"""Falcon middleware: API-key check and the one log line per request."""

import hmac
import time
from collections.abc import Callable

import falcon

from rfc.runtime.server.errors import ApiError
from rfc.runtime.server.logs import log_request

# Probes must work without credentials (orchestrators do not hold the key).
UNAUTHENTICATED_PATHS = frozenset({"/health", "/ready"})


class ApiKeyMiddleware:
    def __init__(self, api_key: str):
        self._expected = f"Bearer {api_key}".encode()
        self._key = api_key.encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in UNAUTHENTICATED_PATHS or req.method == "OPTIONS":  # CORS preflights carry no credentials
            return
        given = (req.get_header("Authorization") or "").encode()
        # Anthropic's clients send the key as `x-api-key`.
        other = (req.get_header("X-Api-Key") or "").encode()
        if not (hmac.compare_digest(given, self._expected) or hmac.compare_digest(other, self._key)):
            raise ApiError(
                falcon.HTTP_401,
                "missing or invalid API key (send 'Authorization: Bearer <key>' or 'x-api-key: <key>')",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )


class RequestLogMiddleware:
    """Logs each request when its response is complete. Streaming responses finish after
    falcon is done with them: their resource sets `req.context.log_deferred` and logs from
    the end of the stream (see `deferred_log`)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        req.context.request_id = None
        req.context.tokens = None
        req.context.log_deferred = False

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        if req.context.get("log_deferred"):
            return
        _log(req, resp.status_code)


def deferred_log(req: falcon.Request, status: int, tokens: Callable[[], int]) -> Callable[[], None]:
    """The callback a streaming resource runs at the end of its stream."""
    req.context.log_deferred = True

    def done() -> None:
        req.context.tokens = tokens()
        _log(req, status)

    return done


def _log(req: falcon.Request, status: int) -> None:
    started = req.context.get("started", time.perf_counter())
    route = req.uri_template or req.path
    log_request(req.method, route, status, req.context.get("request_id"), req.context.get("tokens"), time.perf_counter() - started)
