"""Error responses, each API in the shape its clients parse: native routes answer the native
API's `{"error": message, "status": "error"}`; /v1 routes OpenAI's `{"error": {"message",
"type", "param", "code"}}`; Anthropic's /v1/messages `{"type": "error", "error": {"type",
"message"}}`; Ollama's routes (/ and /api/*) `{"error": message}`. Every error, falcon's own (404 route, 405) and
unexpected exceptions included, goes through here: a client never sees an HTML page or a bare 500."""

import json
import logging
from collections.abc import Callable
from enum import Enum

import falcon

from rfc.runtime.text.values import shown

log = logging.getLogger("rfc.server")

OPENAI_PREFIX = "/v1/"
ANTHROPIC_PREFIX = "/v1/messages"
OLLAMA_PREFIX = "/api/"
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class ApiError(falcon.HTTPError):
    """A domain error with the request field it concerns (`param`), for both error shapes."""

    def __init__(
        self,
        status: str,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        message_for: Callable[[str], str] | None = None,
    ):
        super().__init__(status, title=message, description=message, headers=headers)
        self.message = message
        self.param = param
        self.error_code = code
        self.message_for = message_for  # the message in the words of the API at a path, where they differ


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(falcon.HTTP_400, message, param=param)


def not_found(message: str, code: str | None = None) -> ApiError:
    return ApiError(falcon.HTTP_404, message, code=code)


def unavailable(message: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(falcon.HTTP_503, message, headers={"Retry-After": str(retry_after_s)})


class Dialect(Enum):
    """Which API a path belongs to, for the shape of its errors (and of its document)."""

    NATIVE = "native"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"


def dialect_of(path: str) -> Dialect:
    if path == "/" or path.startswith(OLLAMA_PREFIX):
        return Dialect.OLLAMA
    if path.startswith(ANTHROPIC_PREFIX):
        return Dialect.ANTHROPIC
    return Dialect.OPENAI if path.startswith(OPENAI_PREFIX) else Dialect.NATIVE


def generation_failure(state) -> tuple[int, str]:
    """A failed generation's HTTP status and message (`state` a RequestState that finished
    FAILED): a 400 when the request caused it (a grammar that needs text the vocabulary cannot
    write; `state.error_field` names the field), a 500 otherwise."""
    if state.error_field is not None:
        return 400, state.error
    return 500, f"generation failed: {state.error}"


def generation_error(path: str, state) -> dict:
    """`error_body` for a failed generation (an event in a stream that has started)."""
    status, message = generation_failure(state)
    return error_body(path, status, message, param=state.error_field)


def error_body(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    dialect = dialect_of(path)
    if dialect is Dialect.OLLAMA:
        return {"error": message}
    if dialect is Dialect.ANTHROPIC:
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if dialect is Dialect.NATIVE:
        return {"error": message, "status": "error"}
    if status == 401:
        kind = "authentication_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_NULLABLE_STRING = {"type": ["string", "null"]}
# error_body's shapes, for the OpenAPI document
ERROR_SCHEMAS = {
    Dialect.NATIVE: {
        "type": "object",
        "required": ["error", "status"],
        "properties": {"error": {"type": "string"}, "status": {"const": "error"}},
    },
    Dialect.OPENAI: {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"enum": ["invalid_request_error", "authentication_error", "server_error"]},
                    "param": _NULLABLE_STRING,
                    "code": _NULLABLE_STRING,
                },
            }
        },
    },
    Dialect.ANTHROPIC: {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"enum": sorted({*_ANTHROPIC_TYPES.values(), "api_error", "invalid_request_error"})},
                    "message": {"type": "string"},
                },
            },
        },
    },
    Dialect.OLLAMA: {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
}


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """falcon's error serializer: every HTTPError, ours and falcon's, as JSON."""
    if isinstance(exc, ApiError):
        message, param, code = exc.message, exc.param, exc.error_code
        if exc.message_for is not None:
            message = exc.message_for(req.path)
    elif isinstance(exc, falcon.HTTPRouteNotFound):
        message, param, code = f"no route for {req.method} {req.path}", None, None
    elif isinstance(exc, falcon.HTTPMethodNotAllowed):
        message, param, code = f"method {req.method} is not allowed on {req.path}", None, None
    else:
        message, param, code = exc.description or exc.title or "error", None, None
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(error_body(req.path, exc.status_code, message, param, code))


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    """Catch-all for exceptions that are not HTTP errors: a JSON 500, the traceback in the log."""
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(error_body(req.path, 500, f"internal error: {type(ex).__name__}"))


MAX_JSON_DEPTH = 64  # bodies nest a few levels; JSON schemas and tool definitions a few more


# Headers only browsers send (fetch metadata, and the Origin of any cross-origin or
# same-origin POST): a request without them is not a web page's.
_BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")


def read_json(req: falcon.Request, max_bytes: int) -> dict:
    """The request body as a JSON object, checked once for every route: 415 unless it
    says it is JSON (a cross-site "simple" request cannot), 413 over `max_bytes`, 400 when it is
    not a JSON object, nests deeper than MAX_JSON_DEPTH or holds text that is not Unicode (a lone
    surrogate) — each 400 naming the field.

    The Ollama routes, as Ollama itself, read a JSON body whatever its content type says
    (litellm's Ollama providers send none, Ollama's README `curl -d` examples send a form's):
    there a body not declared JSON is refused only when a browser sent it, which a web page's
    form post or `no-cors` fetch always is (it carries `Origin` or `Sec-Fetch-*` headers), so no
    web page can reach the server without the CORS preflight that `--cors-origin` answers."""
    media = (req.content_type or "").split(";", 1)[0].strip().lower()
    declared = media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
    if not declared and (dialect_of(req.path) is not Dialect.OLLAMA or sent_by_browser(req)):
        raise ApiError(
            falcon.HTTP_415,
            f"send the body as JSON with 'Content-Type: application/json' (got {shown(media) if media else 'none'})",
        )
    if req.content_length is not None and req.content_length > max_bytes:
        raise _too_large(max_bytes)
    data = req.bounded_stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    if not data:
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        body = json.loads(data)
    except RecursionError:
        raise bad_request(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    _check_tree(body)
    return body


def sent_by_browser(req: falcon.Request) -> bool:
    return any(req.get_header(name) is not None for name in _BROWSER_HEADERS)


def _check_tree(body: dict) -> None:
    """Depth and text of every value, without recursion (the body may be built to exhaust it)."""
    stack: list[tuple[object, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request(f"'{field}' holds text that is not valid Unicode (a lone surrogate)", field) from None
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"'{field}' nests deeper than {MAX_JSON_DEPTH} levels", field)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                stack.append((key, depth, field or key))
            stack.append((item, depth + 1, field or str(key)))


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(falcon.HTTP_413, f"the request body exceeds the limit of {max_bytes} bytes")
