"""Falcon middleware: who is calling (API keys), and the one log line per request."""

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Sequence

import falcon

from rfc.runtime.server.errors import ApiError
from rfc.runtime.server.lifecycle import Lifecycle
from rfc.runtime.server.logs import log_request

# Probes must work without credentials (orchestrators do not hold the key); so does the
# OpenAPI document, which client generators fetch before they hold one (openapi.py says why
# that is safe).
UNAUTHENTICATED_PATHS = frozenset({"/health", "/ready", "/openapi.json"})


def client_id(key: str) -> str:
    """What a request records of the key that made it: a digest, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class ApiKeyMiddleware:
    """Sets `req.context.client` (the caller's identity: None without keys) and
    `req.context.admin`. With client keys configured, a request needs one of them (or the
    admin key); with only an admin key, client routes stay open and the admin key only adds
    the admin routes (/traces, any request's /status and /cancel)."""

    def __init__(
        self,
        api_keys: Sequence[str],
        admin_api_key: str | None = None,
        is_open: Callable[[falcon.Request], bool] | None = None,
    ):
        """`is_open`: further requests that need no key (the web page's files: webui_routes.py)."""
        self._keys = [(k.encode(), client_id(k)) for k in api_keys]
        self._admin = admin_api_key.encode() if admin_api_key else None
        self._is_open = is_open

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.client = None
        req.context.admin = False
        given = _presented_key(req)
        if given is not None and self._admin is not None and hmac.compare_digest(given, self._admin):
            req.context.admin = True
            req.context.client = "admin"
            return
        matched = None
        for key, ident in self._keys:  # every key compared: the time does not tell which matched
            if given is not None and hmac.compare_digest(given, key):
                matched = ident
        if matched is not None:
            req.context.client = matched
            return
        # CORS preflights carry no credentials
        if not self._keys or req.path in UNAUTHENTICATED_PATHS or req.method == "OPTIONS":
            return
        if self._is_open is not None and self._is_open(req):
            return
        raise ApiError(
            falcon.HTTP_401,
            "missing or invalid API key (send 'Authorization: Bearer <key>' or 'x-api-key: <key>')",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _presented_key(req: falcon.Request) -> bytes | None:
    """The key a request presents: `Authorization: Bearer KEY`, or Anthropic's `x-api-key`."""
    auth = req.get_header("Authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip().encode()
    other = req.get_header("X-Api-Key")
    return other.strip().encode() if other else None


class RequestLogMiddleware:
    """Logs each request when its response is complete, sets `X-Content-Type-Options: nosniff`
    on every response, and counts the responses in flight
    (the drain waits for them: runtime/server/lifecycle.py). Streaming responses finish after
    falcon is done with them: their resource sets `req.context.log_deferred` and ends from
    the end of the stream (see `deferred_log`). While the server drains, new work gets 503;
    probes, metrics and what concerns requests already running (/status, /cancel) answer."""

    def __init__(self, lifecycle: Lifecycle | None = None):
        self._lifecycle = lifecycle or Lifecycle()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        req.context.request_id = None
        req.context.tokens = None
        req.context.log_deferred = False
        lifecycle = self._lifecycle
        ticket = lifecycle.response_started()
        ended = threading.Event()

        def finish(status: int) -> None:
            if not ended.is_set():
                ended.set()
                lifecycle.response_done(ticket)
                _log(req, status)

        req.context.finish = finish
        if lifecycle.draining and req.method == "POST" and not req.path.startswith(_DRAIN_ALLOWED):
            raise ApiError(
                falcon.HTTP_503, "the server is shutting down; retry on another replica", headers={"Retry-After": "5"}
            )

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        # every response says what it is: a browser must not sniff a JSON error that echoes
        # request text into a page
        resp.set_header("X-Content-Type-Options", "nosniff")
        if req.context.get("log_deferred"):
            return
        finish = req.context.get("finish")
        if finish is not None:
            finish(resp.status_code)


_DRAIN_ALLOWED = ("/cancel/",)


def deferred_log(req: falcon.Request, status: int, tokens: Callable[[], int]) -> Callable[[], None]:
    """The callback a streaming resource runs at the end of its stream (at most once counts)."""
    req.context.log_deferred = True

    def done() -> None:
        req.context.tokens = tokens()
        req.context.finish(status)

    return done


def _log(req: falcon.Request, status: int) -> None:
    started = req.context.get("started", time.perf_counter())
    route = req.uri_template or req.path
    log_request(
        req.method,
        route,
        status,
        req.context.get("request_id"),
        req.context.get("tokens"),
        time.perf_counter() - started,
    )
