"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens, as the
`anthropic` SDK and coding agents speak it (llama.cpp, vLLM, Ollama and LM Studio serve it too).

`system` (a string or text blocks), multi-turn `messages` (user/assistant, text blocks),
`max_tokens` (required, as Anthropic requires it), `stop_sequences`, `temperature`, `top_p`,
`top_k`; streaming sends Anthropic's named events (message_start, content_block_start, ping,
content_block_delta..., content_block_stop, message_delta, message_stop). Tools, images and
extended thinking are refused with 400. With `--api-key`, `x-api-key` works as well as Bearer."""

import secrets

import falcon

from rfc.runtime.engine import EOS, FAILED, LENGTH, STOP, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.messages import MessageError, flatten_content, system_and_turns
from rfc.runtime.sampler import SamplingParams
from rfc.runtime.server.chat_prompt import render_chat
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import ApiError, bad_request, read_json
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.generation import client_gone, model_for, submit
from rfc.runtime.server.host import EngineHandle, ServedModel
from rfc.runtime.server.middleware import deferred_log
from rfc.runtime.server.streaming import SSE_CONTENT_TYPE, SSE_HEADERS, TokenStream, sse_body, sse_event

ROLES = ("user", "assistant")
MAX_STOP_SEQUENCES = 16
STOP_REASONS = {EOS: "end_turn", STOP: "stop_sequence", LENGTH: "max_tokens"}


def add_routes(app: falcon.App, handle: EngineHandle, config: ServerConfig) -> None:
    app.add_route("/v1/messages", MessagesResource(handle, config))
    app.add_route("/v1/messages/count_tokens", CountTokensResource(handle, config))


def prompt_ids(f: RequestFields, served: ServedModel) -> list[int]:
    if f.raw("tools"):
        raise bad_request("tools are not supported", "tools")
    thinking = f.raw("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
        raise bad_request("extended thinking is not supported by this model", "thinking")
    try:
        system = flatten_content(f.raw("system"), "system", nullable=True)
    except MessageError as e:
        raise bad_request(str(e), e.field) from None
    messages = f.raw("messages")
    if isinstance(messages, list):
        for i, m in enumerate(messages):
            if isinstance(m, dict) and m.get("role") not in ROLES:
                raise bad_request(f"messages[{i}].role must be 'user' or 'assistant' (the system prompt goes in 'system')",
                                  f"messages[{i}].role")
    if not isinstance(messages, list):
        raise bad_request("'messages' must be a list of messages", "messages")
    return served.prompts.encode(render_chat(served, system_and_turns(system, messages)), "messages")


def parse(f: RequestFields, served: ServedModel) -> GenerationRequest:
    ids = prompt_ids(f, served)
    max_tokens = f.integer("max_tokens", None, 1)
    if max_tokens is None:
        raise bad_request("'max_tokens' is required", "max_tokens")
    if len(ids) + max_tokens > served.model.context_length:
        raise bad_request(f"the messages ({len(ids)} tokens) + max_tokens ({max_tokens}) exceed the context "
                          f"({served.model.context_length} tokens)", "max_tokens")
    stops = f.raw("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(f"'stop_sequences' must be a list of at most {MAX_STOP_SEQUENCES} non-empty strings", "stop_sequences")
    params = SamplingParams(temperature=f.number("temperature", 1.0, 0.0, 1.0), top_p=f.number("top_p", 1.0),
                            top_k=f.integer("top_k", 0, 0))
    return GenerationRequest(prompt_ids=ids, params=params, max_tokens=max_tokens, stop=tuple(stops))


class MessageShapes:
    def __init__(self, model_id: str, state: RequestState):
        self.model_id = model_id
        self.state = state
        self.id = f"msg_{secrets.token_hex(12)}"

    def stop(self) -> tuple[str | None, str | None]:
        """(stop_reason, stop_sequence) once finished."""
        state = self.state
        matched = state.stopper.matched if state.stopper is not None else None
        return STOP_REASONS.get(state.finish_reason, "end_turn"), matched if state.finish_reason == STOP else None

    def usage(self) -> dict:
        return {"input_tokens": self.state.prompt_tokens, "output_tokens": len(self.state.tokens),
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}

    def message(self, done: bool) -> dict:
        reason, sequence = self.stop() if done else (None, None)
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model_id,
                "content": [{"type": "text", "text": self.state.text}] if done else [],
                "stop_reason": reason, "stop_sequence": sequence, "usage": self.usage()}


class MessagesStreamRenderer:
    def __init__(self, shapes: MessageShapes):
        self._s = shapes
        self._started = False

    def event(self, event: TokenEvent) -> list[bytes]:
        out = []
        if not self._started:
            self._started = True
            out += [sse_event("message_start", {"type": "message_start", "message": self._s.message(False)}),
                    sse_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                      "content_block": {"type": "text", "text": ""}}),
                    sse_event("ping", {"type": "ping"})]
        if event.finish_reason == FAILED:
            error = {"type": "api_error", "message": f"generation failed: {self._s.state.error}"}
            return out + [sse_event("error", {"type": "error", "error": error})]
        if event.text:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": event.text}}
            out.append(sse_event("content_block_delta", delta))
        if event.finished:
            reason, sequence = self._s.stop()
            out += [sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    sse_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                                "usage": {"output_tokens": len(self._s.state.tokens)}}),
                    sse_event("message_stop", {"type": "message_stop"})]
        return out

    def end(self) -> list[bytes]:
        return []


class MessagesResource:
    def __init__(self, handle: EngineHandle, config: ServerConfig):
        self._handle = handle
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._config.max_body_bytes)
        served = model_for(self._handle, body, any_name_if_single=True)
        f = RequestFields(body)
        state = submit(served.engine, parse(f, served))
        req.context.request_id = state.request_id
        resp.set_header("X-Request-Id", str(state.request_id))
        shapes = MessageShapes(served.model_id, state)
        tokens = TokenStream(served.engine, state, client_gone(req))
        if f.boolean("stream", False):
            resp.content_type = SSE_CONTENT_TYPE
            resp.set_headers(SSE_HEADERS)
            resp.stream = sse_body(tokens, MessagesStreamRenderer(shapes), deferred_log(req, 200, lambda: len(state.tokens)))
            return
        tokens.wait()
        req.context.tokens = len(state.tokens)
        if state.finish_reason == FAILED:
            raise ApiError(falcon.HTTP_500, f"generation failed: {state.error}")
        resp.media = shapes.message(True)


class CountTokensResource:
    def __init__(self, handle: EngineHandle, config: ServerConfig):
        self._handle = handle
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._config.max_body_bytes)
        served = model_for(self._handle, body, any_name_if_single=True)
        resp.media = {"input_tokens": len(prompt_ids(RequestFields(body), served))}
