"""OpenAI's Responses API: POST /v1/responses, GET and DELETE /v1/responses/{id}, GET
/v1/responses/{id}/input_items.

Input is a string or a list of items (messages with text parts, `function_call`,
`function_call_output`, `item_reference`); `instructions` is the system message; `tools`
(function tools), `tool_choice`, `parallel_tool_calls` and `text.format` (`json_object`,
`json_schema`) work as on chat completions (runtime/server/responses_input.py). Output items
are a `reasoning` item (templates that think), a `message` with one `output_text`, and one
`function_call` per call. Responses are stored unless `store: false`, per API key and bounded
(runtime/server/response_store.py): `previous_response_id` continues a stored conversation.
Streaming sends the SDK's event sequence (response.created ... response.completed), each a
named SSE event with a `sequence_number`; no [DONE] follows, as OpenAI sends none."""

import time

import falcon

from rfc.runtime.text.assistant_output import Delta, OutputParser
from rfc.runtime.engine.budget import BudgetRule, PastContext
from rfc.runtime.engine.engine import CANCELLED, FAILED, LENGTH, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.text.messages import system_and_turns
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.server.api_fields import CONTENT, MODEL, SEED, STREAM, TEMPERATURE, TOP_K, TOP_P, refused
from rfc.runtime.server.chat_prompt import render_chat
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import bad_request, generation_failure, not_found
from rfc.runtime.server.fields import Field, Kind, RequestFields, RequestModel, read_query
from rfc.runtime.server.generation import BY_REQUEST_ID, GENERATION_ERRORS, Answer, BodyResource, budget, run
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.model_info import capabilities
from rfc.runtime.server.openapi import Operation, Routes, operation_id
from rfc.runtime.server.response_schemas import (
    JSON,
    RESPONSE,
    RESPONSE_DELETED,
    RESPONSE_EVENT,
    RESPONSE_ITEMS,
    streamed,
)
from rfc.runtime.server.response_store import ResponseStore, StoredResponse
from rfc.runtime.server.responses_input import chat_turns, input_items, new_id, output_plan
from rfc.runtime.server.responses_output import OutputItems, turns_of
from rfc.runtime.server.responses_settings import REASONING, SERVICE_TIER, TRUNCATION, applied
from rfc.runtime.server.streaming import SseRenderer, sse_event

_ITEM = {
    "type": "object",
    "properties": {
        "type": {"enum": ["message", "function_call", "function_call_output", "item_reference", "reasoning"]},
        "role": {"enum": ["user", "assistant", "system", "developer"]},
        "content": CONTENT,
    },
}
_INPUT = {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": _ITEM}]}
_TOOLS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name"],
        "properties": {"type": {"const": "function"}, "name": {"type": "string"}},
    },
}
_TOOL_CHOICE = {"anyOf": [{"enum": ["auto", "none", "required"]}, {"type": "object", "required": ["name"]}]}
_TEXT = {
    "type": "object",
    "properties": {
        "format": {
            "anyOf": [
                {"type": "null"},
                {"type": "object", "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}}},
            ],
            "description": "null: text",
        }
    },
}
_REFUSED = {
    "conversation": "conversations are not stored; use previous_response_id or send the whole input",
    "top_logprobs": "logprobs are not supported here",
    "prompt": "stored prompts are not supported",
}
MIN_OUTPUT_TOKENS = 16  # OpenAI's document: max_output_tokens below it is a 400 there too
RESPONSES = RequestModel(
    "ResponseRequest",
    (
        MODEL,
        STREAM,
        Field("input", Kind.JSON, required=True, schema=_INPUT, description="a string, or a list of items"),
        Field("instructions", Kind.STRING, description="the system message"),
        Field(
            "max_output_tokens", Kind.INTEGER, minimum=MIN_OUTPUT_TOKENS, description="absent: the rest of the context"
        ),
        TEMPERATURE,
        TOP_P,
        TOP_K,
        SEED,
        Field("tools", Kind.JSON, schema=_TOOLS, description="function tools"),
        Field("tool_choice", Kind.JSON, schema=_TOOL_CHOICE),
        Field("parallel_tool_calls", Kind.BOOLEAN, True),
        Field("text", Kind.JSON, schema=_TEXT, description="format: text, json_object or json_schema"),
        Field("store", Kind.BOOLEAN, True, description="keep the response for previous_response_id and GET"),
        Field("previous_response_id", Kind.STRING, description="continue this stored response's conversation"),
        Field("background", Kind.BOOLEAN, False, description="not supported"),
        Field("metadata", Kind.JSON, schema={}, description="echoed"),
        Field("user", Kind.JSON, schema={}, description="echoed"),
        TRUNCATION,
        REASONING,
        SERVICE_TIER,
        *(refused(name, why) for name, why in _REFUSED.items()),
    ),
    example={"input": "Tell me a story", "max_output_tokens": 16},
)
_STORED = "/v1/responses/{response_id}"


def add_routes(routes: Routes, handle: EngineHandle, config: ServerConfig) -> None:
    store = ResponseStore(config.max_stored_responses, config.stored_responses_bytes)
    routes.add("/v1/responses", ResponsesResource(handle, config, store))
    routes.add(_STORED, StoredResponseResource(store))
    routes.add(_STORED + "/input_items", InputItemsResource(store))


# max_output_tokens past the context stops at it
BUDGET = BudgetRule("the input", "input", past_context=PastContext.CLAMP)


class Conversation:
    """What one request asks: its items, the whole conversation as chat turns, and the plan."""

    def __init__(self, f: RequestFields, served: ServedModel, store: ResponseStore, owner: str | None):
        for name, why in _REFUSED.items():
            if f.raw(name):
                raise bad_request(f"'{name}' is not supported: {why}", name)
        if f.boolean("background"):
            raise bad_request("background responses are not supported", "background")
        self.settings = applied(
            f.string("truncation"), f.raw("reasoning"), f.raw("text"), capabilities(served)["thinking"]
        )
        earlier: list[dict] = []
        previous = f.string("previous_response_id")
        if previous is not None:
            stored = store.get(previous, owner)
            if stored is None:
                raise not_found(f"response '{previous}' not found", code="previous_response_not_found")
            earlier = stored.turns
        self.items = input_items(f.raw("input"), store, owner)
        self.turns = earlier + chat_turns(self.items)
        self.plan = output_plan(
            served, f.raw("tools"), f.raw("tool_choice"), f.boolean("parallel_tool_calls"), f.raw("text")
        )
        self.prompt = render_chat(
            served,
            system_and_turns(f.string("instructions"), self.turns),
            field="input",
            **self.plan.prompt_args(served),
        )
        self.spec = self.plan.output_spec(served, self.prompt)

    def request(self, f: RequestFields, served: ServedModel) -> GenerationRequest:
        prompt_ids = served.prompts.encode(self.prompt, "input")
        max_tokens = budget(served, BUDGET, f.integer("max_output_tokens"), prompt_ids)
        params = SamplingParams(
            temperature=f.number("temperature"),
            top_p=f.number("top_p"),
            top_k=f.integer("top_k"),
            seed=f.integer("seed"),
        )
        return GenerationRequest(
            prompt_ids=prompt_ids, params=params, max_tokens=max_tokens, constraint=self.plan.constraint(served)
        )


class ResponseShapes:
    """One response: its object (in progress and final), its output items, its storing."""

    def __init__(
        self,
        served: ServedModel,
        state: RequestState,
        f: RequestFields,
        conversation: Conversation,
        store: ResponseStore,
        owner: str | None,
    ):
        self.model_id = served.model_id
        self.state = state
        self.conversation = conversation
        self.output = OutputItems(served.call_ids)
        self.parser = OutputParser(conversation.spec)
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self._store = store if f.boolean("store") else None
        self._owner = owner
        self._echo = {
            **{
                k: f.sent(k)
                for k in ("instructions", "max_output_tokens", "temperature", "top_p", "previous_response_id")
            },
            # a string, or absent (OpenAI's document)
            **({"user": f.sent("user")} if f.sent("user") is not None else {}),
            "metadata": f.sent("metadata") or {},
            "tool_choice": f.sent("tool_choice") or "auto",
            # function tools as OpenAI echoes them: `parameters` and `strict` always present
            "tools": [
                {"parameters": None, "strict": None, **t} if isinstance(t, dict) and t.get("type") == "function" else t
                for t in f.sent("tools") or []
            ],
            "parallel_tool_calls": f.boolean("parallel_tool_calls"),
            "store": f.boolean("store"),
            "text": {
                "format": (f.sent("text") or {}).get("format") or {"type": "text"},
                "verbosity": conversation.settings["verbosity"],
            },
            # as applied (runtime/server/responses_settings.py)
            **{k: conversation.settings[k] for k in ("truncation", "reasoning", "service_tier")},
        }

    def status(self) -> str:
        return {LENGTH: "incomplete", FAILED: "failed", CANCELLED: "cancelled"}.get(
            self.state.finish_reason, "completed"
        )

    def push(self, event: TokenEvent) -> list[tuple[str, dict]]:
        """The output events of one token event (the stream's and the whole reply's path)."""
        d = self.parser.push(event.text) if event.text else Delta()
        if event.finished:
            end = self.parser.finish()
            d = Delta(d.reasoning + end.reasoning, d.content + end.content, d.calls + end.calls)
        out = self.output.add(d)
        if event.finished and event.finish_reason != FAILED:
            out += self.output.finish("incomplete" if self.state.finish_reason == LENGTH else "completed")
        return out

    def response(self, done: bool) -> dict:
        state = self.state
        status, error, incomplete = "in_progress", None, None
        if done:
            status = self.status()
            if state.finish_reason == FAILED:
                status, message = generation_failure(state)
                error = {"code": "server_error" if status >= 500 else "invalid_request", "message": message}
            if state.finish_reason == LENGTH:
                incomplete = {"reason": "max_output_tokens"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model_id,
            "output": list(self.output.items) if done else [],
            # no usage until done: the document allows no null
            **({"usage": self.usage()} if done else {}),
            **self._echo,
        }

    def final(self) -> dict:
        """The finished response, stored unless `store: false`."""
        response = self.response(True)
        if self._store is not None and self.status() in ("completed", "incomplete"):
            turns = self.conversation.turns + turns_of(self.output.items)
            self._store.put(self._owner, response, self.conversation.items, turns)
        return response

    def usage(self) -> dict:
        out = len(self.state.tokens)
        return {
            "input_tokens": self.state.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.state.cached_tokens},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.state.prompt_tokens + out,
        }


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
        if not self._started:
            self._started = True
            out += [
                self._emit("response.created", response=s.response(False)),
                self._emit("response.in_progress", response=s.response(False)),
            ]
        out += [self._emit(kind, **fields) for kind, fields in s.push(event)]
        if event.finished:
            final = s.final()
            kind = {"failed": "response.failed", "incomplete": "response.incomplete"}.get(
                final["status"], "response.completed"
            )
            out.append(self._emit(kind, response=final))
        return out


class ResponsesResource(BodyResource):
    model = RESPONSES
    any_name_if_single = True
    operations = {
        "post": Operation(
            "Create a response",
            RESPONSES,
            streamed(RESPONSE, RESPONSE_EVENT),
            GENERATION_ERRORS,
            links={
                **BY_REQUEST_ID,
                **{
                    f"{method}_{name}": {
                        "operationId": operation_id(method, path),
                        "parameters": {"response_id": "$response.body#/id"},
                    }
                    for method, name, path in (
                        ("get", "response", _STORED),
                        ("delete", "response", _STORED),
                        ("get", "input_items", _STORED + "/input_items"),
                    )
                },
            },
        )
    }

    def __init__(self, handle: EngineHandle, config: ServerConfig, store: ResponseStore):
        super().__init__(handle, config)
        self._store = store

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        owner = req.context.get("client")
        conversation = Conversation(f, served, self._store, owner)

        def answer(state: RequestState) -> Answer:
            shapes = ResponseShapes(served, state, f, conversation, self._store, owner)

            def whole(events: list[TokenEvent]) -> dict:
                for e in events:
                    shapes.push(e)
                return shapes.final()

            return Answer(whole=whole, stream=ResponsesStreamRenderer(shapes))

        run(served, conversation.request(f, served), req, resp, f.boolean("stream"), answer)


def _own_response(store: ResponseStore, req: falcon.Request, response_id: str) -> StoredResponse:
    """The caller's stored response `response_id`; another client's, or none, is a 404."""
    stored = store.get(response_id, req.context.get("client"))
    if stored is None:
        raise not_found(f"response '{response_id}' not found")
    return stored


class StoredResponseResource:
    """GET and DELETE /v1/responses/{id}: the caller's own stored responses only."""

    operations = {
        "get": Operation("A stored response", reply={JSON: RESPONSE}, errors=(404,)),
        "delete": Operation("Delete a stored response", reply={JSON: RESPONSE_DELETED}, errors=(404,)),
    }

    def __init__(self, store: ResponseStore):
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, response_id: str) -> None:
        resp.media = _own_response(self._store, req, response_id).response

    def on_delete(self, req: falcon.Request, resp: falcon.Response, response_id: str) -> None:
        if not self._store.delete(response_id, req.context.get("client")):
            raise not_found(f"response '{response_id}' not found")
        resp.media = {"id": response_id, "object": "response", "deleted": True}


class InputItemsResource:
    """GET /v1/responses/{id}/input_items: the input the response was made from, as items."""

    LIMIT = Field("limit", Kind.INTEGER, 20, 1, 100, description="items per page")
    ORDER = Field("order", Kind.STRING, "desc", enum=("asc", "desc"))
    AFTER = Field("after", Kind.STRING, description="the item id the page starts after")
    operations = {
        "get": Operation(
            "A stored response's input items",
            reply={JSON: RESPONSE_ITEMS},
            errors=(400, 404),
            query=(LIMIT, ORDER, AFTER),
        )
    }

    def __init__(self, store: ResponseStore):
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, response_id: str) -> None:
        stored = _own_response(self._store, req, response_id)
        after = read_query(req, self.AFTER)
        items = list(stored.input_items) if read_query(req, self.ORDER) == "asc" else list(reversed(stored.input_items))
        if after is not None:
            ids = [i["id"] for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[: read_query(req, self.LIMIT)]
        resp.media = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > len(page),
        }
