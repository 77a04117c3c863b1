"""The native API (docs/native-api.md): /generate, /generate/stream, /status/{id}, /cancel/{id}."""

import falcon

from rfc.runtime.engine.budget import BudgetRule
from rfc.runtime.engine.engine import Engine, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.server import response_schemas as replies
from rfc.runtime.server.api_fields import (
    MAX_TOKENS,
    MODEL,
    SPECULATIVE_N_MAX,
    SPECULATIVE_TYPE,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    speculative_request,
)
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import not_found
from rfc.runtime.server.fields import Field, Kind, RequestFields, RequestModel
from rfc.runtime.server.generation import Answer, BodyResource, budget, generation_operations, run
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.openapi import Operation
from rfc.runtime.server.streaming import SseRenderer, sse

# The native API's defaults (docs/native-api.md).
DEFAULT_MAX_TOKENS = 100
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 50
DEFAULT_TOP_P = 0.9

GENERATE = RequestModel(
    "GenerateRequest",
    (
        Field("prompt", Kind.STRING, required=True),
        MAX_TOKENS.but(default=DEFAULT_MAX_TOKENS, description=""),
        TEMPERATURE.but(default=DEFAULT_TEMPERATURE),
        TOP_K.but(default=DEFAULT_TOP_K, minimum=0),
        TOP_P.but(default=DEFAULT_TOP_P),
        MODEL,
        SPECULATIVE_TYPE,
        SPECULATIVE_N_MAX,
    ),
    example={"prompt": "Once upon a time", "max_tokens": 16},
)


# max_tokens past the context: the engine's 400 (its default of 100 is GENERATE's)
BUDGET = BudgetRule()


def native_request(f: RequestFields, served: ServedModel) -> GenerationRequest:
    prompt_ids = served.prompts.encode(f.string("prompt"))  # `model` (optional) was read by model_for
    params = SamplingParams(temperature=f.number("temperature"), top_k=f.integer("top_k"), top_p=f.number("top_p"))
    max_tokens = budget(served, BUDGET, f.integer("max_tokens"), prompt_ids)
    return GenerationRequest(
        prompt_ids=prompt_ids, params=params, max_tokens=max_tokens, speculative=speculative_request(f)
    )


def state_body(state: RequestState) -> dict:
    return {
        "request_id": state.request_id,
        "text": state.text,
        "tokens": list(state.tokens),
        "finished": state.finished,
        "finish_reason": state.finish_reason,
    }


class _NativeRenderer(SseRenderer):
    def event(self, event: TokenEvent) -> list[bytes]:
        return [
            sse(
                {
                    "request_id": event.request_id,
                    "token": event.token,
                    "text": event.text,
                    "finished": event.finished,
                    "finish_reason": event.finish_reason,
                }
            )
        ]


def _answer(state: RequestState, fingerprint: str) -> Answer:
    return Answer(
        whole=lambda _events: {**state_body(state), "system_fingerprint": fingerprint}, stream=_NativeRenderer()
    )


class GenerateResource(BodyResource):
    """/generate (`stream=False`: the final state) and /generate/stream (one SSE event per token)."""

    model = GENERATE

    def __init__(self, handle: EngineHandle, config: ServerConfig, stream: bool = False):
        super().__init__(handle, config)
        self._stream = stream
        summary, reply = (
            ("Generate text, one server-sent event per token", {replies.SSE: replies.TOKEN_EVENT})
            if stream
            else ("Generate text", {replies.JSON: replies.REQUEST_STATE})
        )
        self.operations = generation_operations(summary, GENERATE, reply)

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        run(
            served, native_request(f, served), req, resp, self._stream, lambda state: _answer(state, served.fingerprint)
        )


def _owned(handle: EngineHandle, req: falcon.Request, request_id: int) -> Engine:
    """The engine holding the request, if the caller may see it: the API key that made it, or
    the admin key. Anyone else gets the same 404 as for an id that never existed."""
    handle.check_up()
    for served in handle.all_served():
        state = served.engine.get(request_id)
        if state is not None:
            if req.context.get("admin") or state.request.owner == req.context.get("client"):
                return served.engine
            break
    raise not_found(f"request {request_id} not found")


class StatusResource:
    operations = {"get": Operation("A request's state", reply={replies.JSON: replies.REQUEST_STATE}, errors=(404, 503))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: int) -> None:
        state = _owned(self._handle, req, request_id).get(request_id)
        req.context.request_id = request_id
        resp.media = state_body(state)


class CancelResource:
    operations = {"post": Operation("Cancel a request", reply={replies.JSON: replies.REQUEST_STATE}, errors=(404, 503))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_post(self, req: falcon.Request, resp: falcon.Response, request_id: int) -> None:
        state = _owned(self._handle, req, request_id).cancel(request_id)
        req.context.request_id = request_id
        resp.media = state_body(state)
