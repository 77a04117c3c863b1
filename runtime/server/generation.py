"""What every API shares to run a request: the model it names, its generation budget, and
one run path (`run`, llama.cpp's handle_completions_impl): submit with domain errors mapped to
HTTP ones, then stream the events as the API renders them, or wait for the end and reply
whole, with the client-disconnect probe throughout."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import falcon

from rfc.runtime.engine.budget import BudgetRule, generation_budget
from rfc.runtime.sampling.constraints import Busy, GrammarError
from rfc.runtime.engine.requests import ContextOverflow
from rfc.runtime.engine.engine import (
    FAILED,
    Engine,
    GenerationRequest,
    QueueFull,
    RequestError,
    RequestState,
    TokenEvent,
)
from rfc.runtime.sampling.sampler import SamplingError
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import ApiError, bad_request, generation_failure, read_json, unavailable
from rfc.runtime.server.context_errors import context_error
from rfc.runtime.server.fields import RequestFields, RequestModel
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.middleware import deferred_log
from rfc.runtime.server.openapi import Operation, request_links
from rfc.runtime.server.streaming import SSE_MEDIA, SseRenderer, StreamMedia, TokenStream, sse_body

# What a generation route can answer besides 200 and the body's errors: a `model` not served
# (404), a generation that failed (500: the request alone), loading or a full queue (503).
GENERATION_ERRORS = (404, 500, 503)
# The status a request's log line says when its client left before the reply (nginx's 499).
CLIENT_CLOSED_REQUEST = 499
# Every generation reply names its request in X-Request-Id, which /status and /cancel take.
BY_REQUEST_ID = request_links("$response.header.X-Request-Id")


def generation_operations(summary: str, model: RequestModel, reply: Mapping[str, dict]) -> dict[str, Operation]:
    """The document of a generation route (POST): its body, its reply, what `run` can answer."""
    return {"post": Operation(summary, model, reply, GENERATION_ERRORS, links=BY_REQUEST_ID)}


def model_for(handle: EngineHandle, f: RequestFields, any_name_if_single: bool = False) -> ServedModel:
    """The served model the body's optional `model` field names (the default when absent)."""
    return handle.require(f.string("model"), any_name_if_single)


class BodyResource:
    """A POST route whose JSON body is read through its request model and names a served
    model; `post` answers it."""

    model: RequestModel
    any_name_if_single = False  # a server of one model answers any `model` (the OpenAI and Anthropic routes)

    def __init__(self, handle: EngineHandle, config: ServerConfig):
        self._handle = handle
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = self.model.read(read_json(req, self._config.max_body_bytes))
        self.post(f, model_for(self._handle, f, self.any_name_if_single), req, resp)

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        raise NotImplementedError


def budget(served: ServedModel, rule: BudgetRule, asked: int | None, prompt_ids: list[int]) -> int:
    """The request's max_tokens by its API's rule (runtime/engine/budget.py); a 400 when it cannot fit."""
    try:
        return generation_budget(rule, asked, len(prompt_ids), served.model.context_length)
    except ContextOverflow as e:
        raise context_error(e, served.model.trained_context_length) from None
    except RequestError as e:
        raise bad_request(str(e), e.field) from None


@dataclass(frozen=True)
class Answer:
    """How one API answers one request."""

    whole: Callable[[list[TokenEvent]], dict]  # the reply, from the request's events, once it has ended
    stream: SseRenderer  # the bytes of each event, as they come
    media: StreamMedia = SSE_MEDIA


def run(
    served: ServedModel,
    request: GenerationRequest,
    req: falcon.Request,
    resp: falcon.Response,
    stream: bool,
    answer: Callable[[RequestState], Answer],
) -> None:
    """Submits `request` and answers it: its events streamed as they come, or the whole reply
    once it ends. A generation that failed is a 500 for this request alone (a stream says so in
    its last event instead, its status being sent)."""
    run_all(served, [request], req, resp, stream, lambda states: answer(states[0]))


def run_all(
    served: ServedModel,
    requests: Sequence[GenerationRequest],
    req: falcon.Request,
    resp: falcon.Response,
    stream: bool,
    answer: Callable[[list[RequestState]], Answer],
) -> None:
    """`run` for several requests answered together (OpenAI's `n` and prompt lists): the
    stream interleaves their events, the whole reply waits for all. X-Request-Id names the
    first; each is the caller's own, and a client that leaves cancels them all."""
    states = submit_all(served.engine, requests, req, resp)
    resp.set_header("X-Model-Version", served.version)  # which build answered (a swap changes it)
    resp.set_header("X-System-Fingerprint", served.fingerprint)  # ... on which kernels: the replay receipt
    reply = answer(states)
    tokens = TokenStream(served.engine, states, client_gone(req))
    generated = lambda: sum(len(s.tokens) for s in states)  # noqa: E731
    if stream:
        resp.content_type = reply.media.content_type
        resp.set_headers(reply.media.headers)
        resp.stream = sse_body(tokens, reply.stream, deferred_log(req, 200, generated))
        return
    events = list(tokens)
    req.context.tokens = generated()
    if tokens.abandoned:  # the client left: the request was cancelled, and nobody reads a reply
        resp.status = CLIENT_CLOSED_REQUEST
        return
    failed = next((s for s in states if s.finish_reason == FAILED), None)
    if failed is not None:
        status, message = generation_failure(failed)
        raise ApiError(falcon.code_to_http_status(status), message, param=failed.error_field)
    resp.media = reply.whole(events)


def submit_all(
    engine: Engine, requests: Sequence[GenerationRequest], req: falcon.Request, resp: falcon.Response
) -> list[RequestState]:
    """Submits every request, or none: those already queued are cancelled when one is refused.

    Requests with the same prompt (OpenAI's `n`) share its KV blocks through the prefix cache,
    but only if the later ones are admitted once the first has computed them: admitted in the
    same step, each would compute the whole prompt. So the first of each prompt is submitted,
    and the others once it has prefilled (or ended, or its client left)."""
    slots: list[RequestState | None] = [None] * len(requests)
    firsts: dict[tuple[int, ...], int] = {}
    try:
        for i, request in enumerate(requests):
            key = tuple(request.prompt_ids)
            if key not in firsts or not _can_share(engine, request):
                firsts.setdefault(key, i)
                slots[i] = submit(engine, request, req, resp)
        leaders = {firsts[tuple(r.prompt_ids)] for i, r in enumerate(requests) if slots[i] is None}
        _wait_prefilled(engine, [slots[i] for i in leaders], client_gone(req))
        for i, request in enumerate(requests):
            if slots[i] is None:
                slots[i] = submit(engine, request, req, resp)
    except BaseException:
        for state in slots:
            if state is not None:
                engine.cancel(state.request_id)
        raise
    states = [s for s in slots if s is not None]
    req.context.request_id = states[0].request_id
    resp.set_header("X-Request-Id", str(states[0].request_id))
    return states


def _can_share(engine: Engine, request: GenerationRequest) -> bool:
    """Whether the prompt holds a full KV block the prefix cache could hand on."""
    return engine.blocks.cache is not None and len(request.prompt_ids) >= engine.blocks.block_size


_PREFILL_POLL_S = 0.002


def _wait_prefilled(engine: Engine, states: list[RequestState], gone: Callable[[], bool] | None) -> None:
    """Until every state has its first token (its prompt's blocks are in the cache) or ended;
    not past the client's leaving (its stream then cancels them all) or the engine's stopping."""
    probed = time.monotonic()
    while engine.is_running and any(s.first_token_at is None and not s.finished for s in states):
        time.sleep(_PREFILL_POLL_S)
        if time.monotonic() - probed >= 0.25:
            probed = time.monotonic()
            if gone is not None and gone():
                return


def submit(engine: Engine, request: GenerationRequest, req: falcon.Request, resp: falcon.Response) -> RequestState:
    """Queues the request as the caller's own (only its API key may read or cancel it by id)
    and tags the response with its id."""
    try:
        state = engine.submit(replace(request, owner=req.context.get("client")))
    except ContextOverflow as e:
        raise context_error(e, engine.model.trained_context_length) from None
    except (RequestError, SamplingError, GrammarError) as e:
        raise bad_request(str(e), e.field) from None
    except QueueFull as e:
        raise unavailable(f"the request queue is full ({e}); retry later") from None
    except Busy as e:
        raise unavailable(f"{e}; retry later") from None
    req.context.request_id = state.request_id
    resp.set_header("X-Request-Id", str(state.request_id))
    return state


def check_token_ids(served: ServedModel, ids: list, field: str) -> list[int]:
    vocab = served.model.vocab_size
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
        raise bad_request(f"'{field}' token ids must be integers in [0, {vocab})", field)
    return ids


def client_gone(req: falcon.Request) -> Callable[[], bool] | None:
    """waitress's disconnect probe (present when channel_request_lookahead > 0): lets a
    request that writes nothing for a while (queued, or a non-streaming reply) notice that
    its client left."""
    return req.env.get("waitress.client_disconnected")
