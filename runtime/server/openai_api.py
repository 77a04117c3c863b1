"""OpenAI-compatible API: /v1/models, /v1/models/{id}, /v1/completions, /v1/chat/completions.

A request's `model` picks one of the served models; an unknown one is a 404 that lists them.
A server of one model answers any name with it (llama.cpp does the same), so clients
configured for another name keep working."""

from collections.abc import Callable

import falcon

from rfc.runtime.engine import FAILED, RequestState
from rfc.runtime.server import response_schemas as replies
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import ApiError, read_json
from rfc.runtime.server.fields import RequestFields, RequestModel
from rfc.runtime.server.generation import BY_REQUEST_ID, GENERATION_ERRORS, client_gone, model_for, submit
from rfc.runtime.server.host import EngineHandle, ServedModel
from rfc.runtime.server.middleware import deferred_log
from rfc.runtime.server.model_info import model_card
from rfc.runtime.server.openai_format import (
    ChatFormat, ChatLogprobs, CompletionFormat, CompletionLogprobs, OpenAIStreamRenderer, TokenPieces,
)
from rfc.runtime.server.openai_models import CHAT, COMPLETION
from rfc.runtime.server.openai_params import OpenAIRequest, chat_request, completion_request
from rfc.runtime.server.openapi import Operation
from rfc.runtime.server.streaming import SSE_CONTENT_TYPE, SSE_HEADERS, TokenStream, sse_body



class ModelListResource:
    operations = {"get": Operation("The served models", reply={replies.JSON: replies.MODEL_LIST}, errors=(503,))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._handle.require()  # 503 until the default model is up
        failed = [{"id": model_id, "object": "model", "created": 0, "owned_by": "rfc", "status": "failed", "error": error}
                  for model_id, error in self._handle.failed_models.items()]  # reported, not served
        resp.media = {"object": "list", "data": [model_card(s) for s in self._handle.all_served()] + failed}


class ModelResource:
    operations = {"get": Operation("One served model", reply={replies.JSON: replies.MODEL_CARD}, errors=(404, 503))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        resp.media = model_card(self._handle.require(model_id))


class _GenerationResource:
    """POST handler shared by both endpoints; subclasses pick the parser and the shapes."""

    model: RequestModel
    parse: Callable[[RequestFields, ServedModel], OpenAIRequest]

    def __init__(self, handle: EngineHandle, config: ServerConfig):
        self._handle = handle
        self._config = config
        self._pieces: TokenPieces | None = None

    def make_format(self, served: ServedModel, state: RequestState, with_logprobs: bool, request: OpenAIRequest) -> CompletionFormat:
        raise NotImplementedError

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = self.model.read(read_json(req, self._config.max_body_bytes))
        served = model_for(self._handle, f, any_name_if_single=True)
        request = self.parse(f, served)
        state = submit(served.engine, request.generation, req, resp)
        fmt = self.make_format(served, state, request.generation.logprobs is not None, request)
        stream = TokenStream(served.engine, state, client_gone(req))
        if request.stream:
            resp.content_type = SSE_CONTENT_TYPE
            resp.set_headers(SSE_HEADERS)
            renderer = OpenAIStreamRenderer(fmt, request.include_usage, req.path)
            resp.stream = sse_body(stream, renderer, deferred_log(req, 200, lambda: len(state.tokens)))
            return
        events = list(stream)
        req.context.tokens = len(state.tokens)
        if state.finish_reason == FAILED:
            raise ApiError(falcon.HTTP_500, f"generation failed: {state.error}")
        resp.media = fmt.reply(events)

    def pieces(self, served: ServedModel) -> TokenPieces:
        if self._pieces is None:
            self._pieces = TokenPieces(served.model.tokenizer)
        return self._pieces


class CompletionsResource(_GenerationResource):
    model = COMPLETION
    parse = staticmethod(completion_request)
    operations = {"post": Operation("Complete a prompt", COMPLETION,
                                    replies.streamed(replies.COMPLETION, replies.COMPLETION_EVENT),
                                    GENERATION_ERRORS, links=BY_REQUEST_ID)}

    def make_format(self, served: ServedModel, state: RequestState, with_logprobs: bool, request: OpenAIRequest) -> CompletionFormat:
        return CompletionFormat(served.model_id, state, CompletionLogprobs(self.pieces(served)) if with_logprobs else None)


class ChatCompletionsResource(_GenerationResource):
    model = CHAT
    parse = staticmethod(chat_request)
    operations = {"post": Operation("Answer a chat", CHAT, replies.streamed(replies.CHAT_COMPLETION, replies.CHAT_EVENT),
                                    GENERATION_ERRORS, links=BY_REQUEST_ID)}

    def make_format(self, served: ServedModel, state: RequestState, with_logprobs: bool, request: OpenAIRequest) -> CompletionFormat:
        return ChatFormat(served.model_id, state, ChatLogprobs(self.pieces(served)) if with_logprobs else None,
                          request.output, request.legacy_functions)
