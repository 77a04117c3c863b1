"""The native API of the seed spec: /generate, /generate/stream, /status/{id}, /cancel/{id}."""

import falcon

from rfc.runtime.engine import FAILED, Engine, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.sampler import SamplingParams
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.api_fields import MAX_TOKENS, MODEL, TEMPERATURE, TOP_K, TOP_P
from rfc.runtime.server.errors import ApiError, not_found, read_json
from rfc.runtime.server.fields import Field, Kind, RequestModel
from rfc.runtime.server.generation import BY_REQUEST_ID, GENERATION_ERRORS, client_gone, model_for, submit
from rfc.runtime.server.host import EngineHandle, ServedModel
from rfc.runtime.server.middleware import deferred_log
from rfc.runtime.server.openapi import Operation
from rfc.runtime.server.response_schemas import JSON, REQUEST_STATE, SSE, TOKEN_EVENT
from rfc.runtime.server.streaming import SSE_CONTENT_TYPE, SSE_HEADERS, TokenStream, sse, sse_body

# The seed API's defaults.
DEFAULT_MAX_TOKENS = 100
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 50
DEFAULT_TOP_P = 0.9

GENERATE = RequestModel("GenerateRequest", (
    Field("prompt", Kind.STRING, required=True),
    MAX_TOKENS.but(default=DEFAULT_MAX_TOKENS, description=""),
    TEMPERATURE.but(default=DEFAULT_TEMPERATURE),
    TOP_K.but(default=DEFAULT_TOP_K, minimum=0),
    TOP_P.but(default=DEFAULT_TOP_P),
    MODEL,
), example={"prompt": "Once upon a time", "max_tokens": 16})


def native_request(body: dict, served: ServedModel) -> GenerationRequest:
    f = GENERATE.read(body)
    prompt = f.string("prompt")  # `model` (optional) was read by model_for
    params = SamplingParams(temperature=f.number("temperature"), top_k=f.integer("top_k"), top_p=f.number("top_p"))
    return GenerationRequest(prompt_ids=served.prompts.encode(prompt), params=params, max_tokens=f.integer("max_tokens"))


def state_body(state: RequestState) -> dict:
    return {
        "request_id": state.request_id,
        "text": state.text,
        "tokens": list(state.tokens),
        "finished": state.finished,
        "finish_reason": state.finish_reason,
    }


class _NativeRenderer:
    def event(self, event: TokenEvent) -> list[bytes]:
        return [sse({
            "request_id": event.request_id,
            "token": event.token,
            "text": event.text,
            "finished": event.finished,
            "finish_reason": event.finish_reason,
        })]

    def end(self) -> list[bytes]:
        return []


def _start(handle: EngineHandle, config: ServerConfig, req: falcon.Request, resp: falcon.Response):
    """Parses and submits a native generation request."""
    body = read_json(req, config.max_body_bytes)
    served = model_for(handle, GENERATE.read(body))
    state = submit(served.engine, native_request(body, served), req, resp)
    return served, state


class GenerateResource:
    operations = {"post": Operation("Generate text", GENERATE, {JSON: REQUEST_STATE}, GENERATION_ERRORS,
                                    links=BY_REQUEST_ID)}

    def __init__(self, handle: EngineHandle, config: ServerConfig):
        self._handle = handle
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        served, state = _start(self._handle, self._config, req, resp)
        TokenStream(served.engine, state, client_gone(req)).wait()
        req.context.tokens = len(state.tokens)
        if state.finish_reason == FAILED:
            raise ApiError(falcon.HTTP_500, f"generation failed: {state.error}")
        resp.media = state_body(state)


class GenerateStreamResource:
    operations = {"post": Operation("Generate text, one server-sent event per token", GENERATE, {SSE: TOKEN_EVENT},
                                    GENERATION_ERRORS, links=BY_REQUEST_ID)}

    def __init__(self, handle: EngineHandle, config: ServerConfig):
        self._handle = handle
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        served, state = _start(self._handle, self._config, req, resp)
        stream = TokenStream(served.engine, state, client_gone(req))
        resp.content_type = SSE_CONTENT_TYPE
        resp.set_headers(SSE_HEADERS)
        resp.stream = sse_body(stream, _NativeRenderer(), deferred_log(req, 200, lambda: len(state.tokens)))


def _owned(handle: EngineHandle, req: falcon.Request, request_id: int) -> Engine:
    """The engine holding the request, if the caller may see it: the API key that made it, or
    the admin key. Anyone else gets the same 404 as for an id that never existed."""
    handle.require()
    for served in handle.all_served():
        state = served.engine.get(request_id)
        if state is not None:
            if req.context.get("admin") or state.request.owner == req.context.get("client"):
                return served.engine
            break
    raise not_found(f"request {request_id} not found")


class StatusResource:
    operations = {"get": Operation("A request's state", reply={JSON: REQUEST_STATE}, errors=(404, 503))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: int) -> None:
        state = _owned(self._handle, req, request_id).get(request_id)
        req.context.request_id = request_id
        resp.media = state_body(state)


class CancelResource:
    operations = {"post": Operation("Cancel a request", reply={JSON: REQUEST_STATE}, errors=(404, 503))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_post(self, req: falcon.Request, resp: falcon.Response, request_id: int) -> None:
        state = _owned(self._handle, req, request_id).cancel(request_id)
        req.context.request_id = request_id
        resp.media = state_body(state)
