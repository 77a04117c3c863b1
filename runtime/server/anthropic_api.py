"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens, as the
`anthropic` SDK and coding agents speak it (llama.cpp, vLLM, Ollama and LM Studio serve it too).

`system` (a string or text blocks), multi-turn `messages` (user/assistant, text blocks),
`max_tokens` (required, as Anthropic requires it), `stop_sequences`, `temperature`, `top_p`,
`top_k`; streaming sends Anthropic's named events (message_start, content_block_start, ping,
content_block_delta..., content_block_stop, message_delta, message_stop). Client `tools`,
`tool_choice`, `tool_use` / `tool_result` blocks and `thinking` map onto the chat machinery
(runtime/server/anthropic_blocks.py); images, documents and server tools are refused with 400.
With `--api-key`, `x-api-key` works as well as Bearer."""

import json
import secrets

import falcon

from rfc.runtime.text.assistant_output import Delta, OutputParser, OutputSpec
from rfc.runtime.engine.budget import BudgetRule, PastContext
from rfc.runtime.text.call_ids import CallIdForm
from rfc.runtime.engine.engine import EOS, FAILED, LENGTH, STOP, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.text.messages import MessageError, flatten_content, system_and_turns
from rfc.runtime.text.reasoning import template_thinks
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.server.anthropic_blocks import chat_messages, content_blocks, output_plan, tool_use
from rfc.runtime.server.anthropic_models import COUNT_TOKENS, MAX_STOP_STRINGS, MESSAGES
from rfc.runtime.server.chat_prompt import ends_with_assistant, render_chat
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import ANTHROPIC_PREFIX, bad_request, generation_error
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.generation import Answer, BodyResource, budget, generation_operations, run
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.openapi import Operation, Routes
from rfc.runtime.server.response_schemas import JSON, MESSAGE, MESSAGE_EVENT, TOKEN_COUNT, streamed
from rfc.runtime.server.streaming import SseRenderer, sse_event
from rfc.runtime.server.structured import OutputPlan

STOP_REASONS = {EOS: "end_turn", STOP: "stop_sequence", LENGTH: "max_tokens"}


def add_routes(routes: Routes, handle: EngineHandle, config: ServerConfig) -> None:
    routes.add("/v1/messages", MessagesResource(handle, config))
    routes.add("/v1/messages/count_tokens", CountTokensResource(handle, config))


def prompt(f: RequestFields, served: ServedModel, plan: OutputPlan) -> str:
    if plan.thinking and not (served.chat is not None and template_thinks(served.chat.source)):
        raise bad_request("extended thinking is not supported by this model", "thinking")
    try:
        system = flatten_content(f.raw("system"), "system", nullable=True)
    except MessageError as e:
        raise bad_request(str(e), e.field) from None
    messages = chat_messages(f.raw("messages"))
    extra = {"enable_thinking": plan.thinking} if plan.thinking is not None else {}
    turns = system_and_turns(system, messages)
    # a final assistant message is prefill: the reply goes on from its text
    return render_chat(served, turns, extra, continue_final=ends_with_assistant(messages), **plan.prompt_args(served))


def prompt_ids(f: RequestFields, served: ServedModel) -> list[int]:
    return served.prompts.encode(prompt(f, served, output_plan(f)), "messages")


# max_tokens (required) past the context: a 400 naming the messages
BUDGET = BudgetRule("the messages", "messages", plural=True, past_context=PastContext.REFUSE)


def parse(f: RequestFields, served: ServedModel) -> tuple[GenerationRequest, OutputSpec]:
    plan = output_plan(f)
    text = prompt(f, served, plan)
    ids = served.prompts.encode(text, "messages")
    max_tokens = budget(served, BUDGET, f.integer("max_tokens"), ids)
    stops = f.raw("stop_sequences")
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise bad_request(
            f"'stop_sequences' must be a list of at most {MAX_STOP_STRINGS} non-empty strings", "stop_sequences"
        )
    params = SamplingParams(temperature=f.number("temperature"), top_p=f.number("top_p"), top_k=f.integer("top_k"))
    request = GenerationRequest(
        prompt_ids=ids, params=params, max_tokens=max_tokens, stop=tuple(stops), constraint=plan.constraint(served)
    )
    return request, plan.output_spec(served, text)


class MessageShapes:
    def __init__(
        self,
        model_id: str,
        state: RequestState,
        spec: OutputSpec = OutputSpec(),
        call_ids: CallIdForm = CallIdForm.OPENAI,
    ):
        self.model_id = model_id
        self.state = state
        self.spec = spec
        self.call_ids = call_ids
        self.parser = OutputParser(spec)  # the stream's
        self.id = f"msg_{secrets.token_hex(12)}"

    def stop(self, called: bool = False) -> tuple[str | None, str | None]:
        """(stop_reason, stop_sequence) once finished."""
        state = self.state
        matched = state.stopper.matched if state.stopper is not None else None
        if called and state.finish_reason in (EOS, STOP):
            return "tool_use", None
        return STOP_REASONS.get(state.finish_reason, "end_turn"), matched if state.finish_reason == STOP else None

    def usage(self) -> dict:
        return {
            "input_tokens": self.state.prompt_tokens,
            "output_tokens": len(self.state.tokens),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    def message(self, done: bool) -> dict:
        if not done:
            return {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model_id,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": self.usage(),
            }
        parser = OutputParser(self.spec)
        parser.push(self.state.text)
        parser.finish()
        reason, sequence = self.stop(bool(parser.message.calls))
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model_id,
            "content": content_blocks(parser.message, self.call_ids),
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": self.usage(),
        }


class MessagesStreamRenderer(SseRenderer):
    """Anthropic's events: a block opens when its kind of output first comes (thinking, text,
    each tool_use) and closes when another kind starts or the message ends."""

    def __init__(self, shapes: MessageShapes):
        self._s = shapes
        self._started = False
        self._index = -1
        self._open: str | None = None  # the kind of the open block

    def event(self, event: TokenEvent) -> list[bytes]:
        out = []
        if not self._started:
            self._started = True
            out += [
                sse_event("message_start", {"type": "message_start", "message": self._s.message(False)}),
                sse_event("ping", {"type": "ping"}),
            ]
        if event.finish_reason == FAILED:
            return out + [sse_event("error", generation_error(ANTHROPIC_PREFIX, self._s.state))]
        parts = self._s.parser.push(event.text) if event.text else Delta()
        if event.finished:
            end = self._s.parser.finish()
            parts = Delta(parts.reasoning + end.reasoning, parts.content + end.content, parts.calls + end.calls)
        if parts.reasoning:
            out += self._block("thinking", {"type": "thinking", "thinking": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": parts.reasoning}))
        if parts.content:
            out += self._block("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": parts.content}))
        for call in parts.calls:
            block = tool_use(call, self._s.call_ids)
            out += self._block("tool_use", {**block, "input": {}}, always=True)
            out.append(
                self._delta(
                    {
                        "type": "input_json_delta",
                        "partial_json": json.dumps(block["input"], ensure_ascii=False)
                        if not call.complete
                        else call.arguments,
                    }
                )
            )
        if event.finished:
            if self._index < 0:  # an empty answer still has its (empty) text block
                out += self._block("text", {"type": "text", "text": ""})
            reason, sequence = self._s.stop(bool(self._s.parser.message.calls))
            out += [
                sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index}),
                sse_event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": reason, "stop_sequence": sequence},
                        "usage": {"output_tokens": len(self._s.state.tokens)},
                    },
                ),
                sse_event("message_stop", {"type": "message_stop"}),
            ]
        return out

    def _block(self, kind: str, start: dict, always: bool = False) -> list[bytes]:
        if self._open == kind and not always:
            return []
        out = []
        if self._open is not None:
            out.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        self._index += 1
        self._open = kind
        out.append(
            sse_event(
                "content_block_start", {"type": "content_block_start", "index": self._index, "content_block": start}
            )
        )
        return out

    def _delta(self, delta: dict) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})


class MessagesResource(BodyResource):
    model = MESSAGES
    any_name_if_single = True
    operations = generation_operations("Create a message", MESSAGES, streamed(MESSAGE, MESSAGE_EVENT))

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        request, spec = parse(f, served)

        def answer(state: RequestState) -> Answer:
            shapes = MessageShapes(served.model_id, state, spec, served.call_ids)
            return Answer(whole=lambda _events: shapes.message(True), stream=MessagesStreamRenderer(shapes))

        run(served, request, req, resp, f.boolean("stream"), answer)


class CountTokensResource(BodyResource):
    model = COUNT_TOKENS
    any_name_if_single = True
    operations = {"post": Operation("Count a prompt's tokens", COUNT_TOKENS, {JSON: TOKEN_COUNT}, (404,))}

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"input_tokens": len(prompt_ids(f, served))}
