"""OpenAI's Responses API: POST /v1/responses, stateless.

Nothing is stored: `previous_response_id` and `conversation` are refused (send the whole
conversation as `input`), `store` is accepted and reported false. Input is a string or a
list of message items (`input_text`/`output_text` parts); `instructions` is the system
message. Streaming sends the SDK's event sequence (response.created ... response.completed),
each as a named SSE event with a `sequence_number`; no [DONE] follows, as OpenAI sends none."""

import secrets
import time

import falcon

from rfc.runtime.budget import BudgetRule, PastContext
from rfc.runtime.engine import CANCELLED, FAILED, LENGTH, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.messages import system_and_turns
from rfc.runtime.sampler import SamplingParams
from rfc.runtime.server.api_fields import CONTENT, MODEL, SEED, STREAM, TEMPERATURE, TOP_K, TOP_P, refused
from rfc.runtime.server.chat_prompt import render_chat
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind, RequestFields, RequestModel
from rfc.runtime.server.generation import Answer, BodyResource, budget, generation_operations, run
from rfc.runtime.server.host import EngineHandle, ServedModel
from rfc.runtime.server.openapi import Routes
from rfc.runtime.server.response_schemas import RESPONSE, RESPONSE_EVENT, streamed
from rfc.runtime.server.streaming import SseRenderer, sse_event

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_STATELESS = "this server stores no {}; send the whole conversation as 'input'"
_INPUT = {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role"],
    "properties": {"type": {"const": "message"}, "role": {"enum": list(MESSAGE_ROLES)}, "content": CONTENT}}}]}
_TEXT = {"type": "object", "properties": {"format": {"type": "object", "properties": {"type": {"const": "text"}}}}}
_REFUSED = {"previous_response_id": _STATELESS.format("responses"), "conversation": _STATELESS.format("conversations"),
            "tools": "tools are not supported", "top_logprobs": "logprobs are not supported here",
            "prompt": "stored prompts are not supported"}
RESPONSES = RequestModel("ResponseRequest", (
    MODEL,
    STREAM,
    Field("input", Kind.JSON, required=True, schema=_INPUT, description="a string, or a list of messages"),
    Field("instructions", Kind.STRING, description="the system message"),
    Field("max_output_tokens", Kind.INTEGER, minimum=1, description="absent: the rest of the context"),
    TEMPERATURE,
    TOP_P,
    TOP_K,
    SEED,
    Field("text", Kind.JSON, {}, schema=_TEXT, description="only text output"),
    Field("background", Kind.BOOLEAN, False, description="not supported"),
    Field("metadata", Kind.JSON, schema={}, description="echoed"),
    Field("user", Kind.JSON, schema={}, description="echoed"),
    *(refused(name, why) for name, why in _REFUSED.items()),
), example={"input": "Tell me a story", "max_output_tokens": 16})


def add_routes(routes: Routes, handle: EngineHandle, config: ServerConfig) -> None:
    routes.add("/v1/responses", ResponsesResource(handle, config))


# max_output_tokens past the context stops at it
BUDGET = BudgetRule("the input", "input", past_context=PastContext.CLAMP)


def parse(f: RequestFields, served: ServedModel) -> GenerationRequest:
    for name, why in _REFUSED.items():
        if f.raw(name):
            raise bad_request(f"'{name}' is not supported: {why}", name)
    if f.boolean("background"):
        raise bad_request("background responses are not supported", "background")
    text = f.raw("text")
    fmt = text.get("format", {}) if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type", "text") != "text":
        raise bad_request("only text output is supported (text.format {'type': 'text'})", "text.format")
    messages = system_and_turns(f.string("instructions"), _input_messages(f.raw("input")))
    prompt_ids = served.prompts.encode(render_chat(served, messages, field="input"), "input")
    max_tokens = budget(served, BUDGET, f.integer("max_output_tokens"), prompt_ids)
    params = SamplingParams(temperature=f.number("temperature"), top_p=f.number("top_p"), top_k=f.integer("top_k"),
                            seed=f.integer("seed"))
    return GenerationRequest(prompt_ids=prompt_ids, params=params, max_tokens=max_tokens)


def _input_messages(raw: object) -> list[dict]:
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise bad_request("'input' must be a string or a non-empty list of messages", "input")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise bad_request(f"'input[{i}]' must be an object", f"input[{i}]")
        kind = item.get("type", "message")
        if kind != "message" or item.get("role") not in MESSAGE_ROLES:
            what = f"items of type '{kind}'" if kind != "message" else f"role '{item.get('role')}'"
            raise bad_request(f"'input[{i}]': {what} not supported (messages with roles {', '.join(MESSAGE_ROLES)})", f"input[{i}]")
        out.append({"role": item["role"], "content": item.get("content")})
    return out


class ResponseShapes:
    """The objects of one response: the response itself, its message item and text part."""

    def __init__(self, model_id: str, state: RequestState, f: RequestFields):
        self.model_id = model_id
        self.state = state
        self.id = f"resp_{secrets.token_hex(12)}"
        self.item_id = f"msg_{secrets.token_hex(12)}"
        self.created_at = int(time.time())
        self._echo = {k: f.sent(k) for k in ("instructions", "max_output_tokens", "metadata", "temperature", "top_p", "user")}

    def part(self, text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def item(self, done: bool) -> dict:
        content = [self.part(self.state.text)] if done else []
        status = ("incomplete" if self.state.finish_reason == LENGTH else "completed") if done else "in_progress"
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def response(self, done: bool) -> dict:
        state = self.state
        status, error, incomplete = "in_progress", None, None
        if done:
            status = {LENGTH: "incomplete", FAILED: "failed", CANCELLED: "cancelled"}.get(state.finish_reason, "completed")
            if state.finish_reason == FAILED:
                error = {"code": "server_error", "message": f"generation failed: {state.error}"}
            if state.finish_reason == LENGTH:
                incomplete = {"reason": "max_output_tokens"}
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status, "error": error,
            "incomplete_details": incomplete, "model": self.model_id, "output": [self.item(True)] if done else [],
            "parallel_tool_calls": False, "tool_choice": "auto", "tools": [], "store": False, "truncation": "disabled",
            "text": {"format": {"type": "text"}}, "reasoning": {"effort": None, "summary": None},
            "previous_response_id": None, "usage": self.usage() if done else None,
            **{k: v for k, v in self._echo.items() if k != "metadata"}, "metadata": self._echo["metadata"] or {},
        }

    def usage(self) -> dict:
        out = len(self.state.tokens)
        return {"input_tokens": self.state.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.state.prompt_tokens + out}


class ResponsesStreamRenderer(SseRenderer):
    def __init__(self, shapes: ResponseShapes):
        self._s = shapes
        self._seq = 0
        self._started = False

    def _emit(self, kind: str, **fields) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(kind, payload)

    def event(self, event: TokenEvent) -> list[bytes]:
        s, out = self._s, []
        where = {"item_id": s.item_id, "output_index": 0, "content_index": 0}
        if not self._started:
            self._started = True
            out += [self._emit("response.created", response=s.response(False)),
                    self._emit("response.in_progress", response=s.response(False)),
                    self._emit("response.output_item.added", output_index=0, item=s.item(False)),
                    self._emit("response.content_part.added", **where, part=s.part(""))]
        if event.text:
            out.append(self._emit("response.output_text.delta", **where, delta=event.text, logprobs=[]))
        if event.finished:
            final = s.response(True)
            if event.finish_reason != FAILED:
                out += [self._emit("response.output_text.done", **where, text=s.state.text, logprobs=[]),
                        self._emit("response.content_part.done", **where, part=s.part(s.state.text)),
                        self._emit("response.output_item.done", output_index=0, item=s.item(True))]
            kind = {"failed": "response.failed", "incomplete": "response.incomplete"}.get(final["status"], "response.completed")
            out.append(self._emit(kind, response=final))
        return out


class ResponsesResource(BodyResource):
    model = RESPONSES
    any_name_if_single = True
    operations = generation_operations("Create a response", RESPONSES, streamed(RESPONSE, RESPONSE_EVENT))

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:

        def answer(state: RequestState) -> Answer:
            shapes = ResponseShapes(served.model_id, state, f)
            return Answer(whole=lambda _events: shapes.response(True), stream=ResponsesStreamRenderer(shapes))

        run(served, parse(f, served), req, resp, f.boolean("stream"), answer)
