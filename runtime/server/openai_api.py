"""OpenAI-compatible API: /v1/models, /v1/models/{id}, /v1/completions, /v1/chat/completions.

A request's `model` picks one of the served models; an unknown one is a 404 that lists them.
A server of one model answers any name with it (llama.cpp does the same), so clients
configured for another name keep working."""

from collections.abc import Callable

import falcon

from rfc.runtime.engine.engine import RequestState
from rfc.runtime.server import response_schemas as replies
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.generation import Answer, BodyResource, generation_operations, run_all
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.model_info import model_card
from rfc.runtime.server.openai_format import (
    ChatFormat,
    ChatLogprobs,
    Choices,
    CompletionFormat,
    CompletionLogprobs,
    OpenAIStreamRenderer,
    TokenPieces,
)
from rfc.runtime.server.openai_models import CHAT, COMPLETION
from rfc.runtime.server.openai_params import OpenAIRequest, chat_request, completion_request
from rfc.runtime.server.openapi import Operation


class ModelListResource:
    operations = {"get": Operation("The served models", reply={replies.JSON: replies.MODEL_LIST}, errors=(503,))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._handle.check_up()  # 503 until the default model is up
        failed = [
            {"id": model_id, "object": "model", "created": 0, "owned_by": "rfc", "status": "failed", "error": error}
            for model_id, error in self._handle.failed_models.items()
        ]  # reported, not served
        # known, not loaded: the first request that names one loads it
        unloaded = [
            {"id": model_id, "object": "model", "created": 0, "owned_by": "rfc", "status": "unloaded"}
            for model_id in self._handle.available_ids
        ]
        resp.media = {"object": "list", "data": [model_card(s) for s in self._handle.all_served()] + unloaded + failed}


class ModelResource:
    operations = {"get": Operation("One served model", reply={replies.JSON: replies.MODEL_CARD}, errors=(404, 503))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        resp.media = model_card(self._handle.require(model_id))


class _GenerationResource(BodyResource):
    """POST handler shared by both endpoints; subclasses pick the parser and the shapes."""

    any_name_if_single = True
    parse: Callable[[RequestFields, ServedModel], OpenAIRequest]

    def __init__(self, handle: EngineHandle, config: ServerConfig):
        super().__init__(handle, config)
        self._pieces: TokenPieces | None = None

    def make_format(
        self, served: ServedModel, state: RequestState, with_logprobs: bool, request: OpenAIRequest, index: int
    ) -> CompletionFormat:
        raise NotImplementedError

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        request = self.parse(f, served)

        def answer(states: list[RequestState]) -> Answer:
            with_logprobs = request.generation.logprobs is not None
            formats = [self.make_format(served, s, with_logprobs, request, i) for i, s in enumerate(states)]
            for fmt in formats:
                fmt.fingerprint = served.fingerprint
            choices = Choices(formats, request.prompts)
            stream = OpenAIStreamRenderer(choices, request.include_usage, req.path, request.continuous_usage)
            return Answer(whole=choices.reply, stream=stream)

        run_all(served, request.choices or (request.generation,), req, resp, request.stream, answer)

    def pieces(self, served: ServedModel) -> TokenPieces:
        if self._pieces is None:
            self._pieces = TokenPieces(served.model.tokenizer)
        return self._pieces


class CompletionsResource(_GenerationResource):
    model = COMPLETION
    parse = staticmethod(completion_request)
    operations = generation_operations(
        "Complete a prompt", COMPLETION, replies.streamed(replies.COMPLETION, replies.COMPLETION_EVENT)
    )

    def make_format(
        self, served: ServedModel, state: RequestState, with_logprobs: bool, request: OpenAIRequest, index: int
    ) -> CompletionFormat:
        echo = request.echo[index * request.prompts // len(request.choices)] if request.echo else None
        logprobs = CompletionLogprobs(self.pieces(served), echo.logprobs if echo else None) if with_logprobs else None
        fmt = CompletionFormat(served.model_id, state, logprobs, index)
        fmt.echo = echo.text if echo else ""
        return fmt


class ChatCompletionsResource(_GenerationResource):
    model = CHAT
    parse = staticmethod(chat_request)
    operations = generation_operations(
        "Answer a chat", CHAT, replies.streamed(replies.CHAT_COMPLETION, replies.CHAT_EVENT)
    )

    def make_format(
        self, served: ServedModel, state: RequestState, with_logprobs: bool, request: OpenAIRequest, index: int
    ) -> CompletionFormat:
        return ChatFormat(
            served.model_id,
            state,
            ChatLogprobs(self.pieces(served)) if with_logprobs else None,
            request.output,
            request.legacy_functions,
            served.call_ids,
            index,
        )
