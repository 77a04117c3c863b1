"""OpenAI response shapes: completions and chat completions, whole and as SSE chunks, with
logprobs in each API's own layout."""

import functools
import re
import time

from rfc.runtime.assistant_output import AssistantMessage, Delta, OutputParser, OutputSpec
from rfc.runtime.call_ids import CallIdForm, in_form
from rfc.runtime.engine import CANCELLED, EOS, FAILED, LENGTH, STOP, RequestState, TokenEvent
from rfc.runtime.server.errors import error_body
from rfc.runtime.server.streaming import SseRenderer, sse

# The engine's finish reasons in OpenAI's words ("abort": vLLM's name for a cancelled request).
FINISH_REASONS = {EOS: "stop", STOP: "stop", LENGTH: "length", CANCELLED: "abort", FAILED: "error"}
DONE = b"data: [DONE]\n\n"
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenPieces:
    """The text and bytes of single tokens, as logprobs report them."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.piece = functools.lru_cache(maxsize=65536)(self._piece)

    def _piece(self, token: int) -> tuple[str, list[int]]:
        raw = self._tokenizer.id_to_token(token) or ""
        byte = _BYTE_TOKEN.match(raw)
        if byte:  # SentencePiece byte fallback: one raw byte, maybe half a character
            value = int(byte.group(1), 16)
            return bytes([value]).decode("utf-8", "replace"), [value]
        # SentencePiece marks a leading space with U+2581, which decoding one token drops;
        # byte-level BPE decodes fine alone.
        text = raw.replace("\u2581", " ") if "\u2581" in raw else self._tokenizer.decode([token], skip_special_tokens=False)
        return text, list(text.encode("utf-8"))


def output_events(event: TokenEvent) -> bool:
    """Whether the event carries a token of the output (an EOS, a cancel or a failure does not)."""
    return event.token is not None and event.finish_reason != EOS


def usage(state: RequestState) -> dict:
    completion = len(state.tokens)
    return {"prompt_tokens": state.prompt_tokens, "completion_tokens": completion, "total_tokens": state.prompt_tokens + completion}


class CompletionLogprobs:
    """`logprobs` of /v1/completions: parallel lists over the output tokens."""

    def __init__(self, pieces: TokenPieces):
        self._pieces = pieces
        self._offset = 0

    def entry(self, events: list[TokenEvent]) -> dict:
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in filter(output_events, events):
            text = self._pieces.piece(e.token)[0]
            out["tokens"].append(text)
            out["token_logprobs"].append(e.logprob)
            out["top_logprobs"].append({self._pieces.piece(t)[0]: lp for t, lp in e.top_logprobs})
            out["text_offset"].append(self._offset)
            self._offset += len(text)
        return out


class ChatLogprobs:
    """`logprobs` of /v1/chat/completions: one entry per output token."""

    def __init__(self, pieces: TokenPieces):
        self._pieces = pieces

    def entry(self, events: list[TokenEvent]) -> dict:
        return {"content": [self._token(e) for e in events if output_events(e)], "refusal": None}

    def _token(self, e: TokenEvent) -> dict:
        text, raw = self._pieces.piece(e.token)
        top = []
        for t, lp in e.top_logprobs:
            t_text, t_raw = self._pieces.piece(t)
            top.append({"token": t_text, "logprob": lp, "bytes": t_raw})
        return {"token": text, "logprob": e.logprob, "bytes": raw, "top_logprobs": top}


class CompletionFormat:
    """Shapes of one /v1/completions request."""

    def __init__(self, model_id: str, state: RequestState, logprobs: CompletionLogprobs | None):
        self.model_id = model_id
        self.state = state
        self.logprobs = logprobs
        self.id = f"cmpl-{state.request_id}"
        self.created = int(time.time())

    def reply(self, events: list[TokenEvent]) -> dict:
        choice = {"index": 0, "text": self.state.text, "logprobs": self._lp(events), "finish_reason": FINISH_REASONS[self.state.finish_reason]}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(self.state)}

    def chunk(self, event: TokenEvent) -> dict:
        finish = FINISH_REASONS[event.finish_reason] if event.finished else None
        choice = {"index": 0, "text": event.text, "logprobs": self._lp([event]), "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def first_chunks(self) -> list[dict]:
        return []

    def usage_chunk(self) -> dict:
        return {**self._head("text_completion"), "choices": [], "usage": usage(self.state)}

    def _lp(self, events: list[TokenEvent]) -> dict | None:
        return self.logprobs.entry(events) if self.logprobs else None

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_id}


class ChatFormat(CompletionFormat):
    """Shapes of one /v1/chat/completions request. Reasoning goes in `reasoning_content`
    (DeepSeek's and llama.cpp's name) and in `reasoning` (vLLM's and Ollama's); tool calls in
    `tool_calls` (or `function_call` for the legacy `functions`), with finish_reason
    `tool_calls` (`function_call`)."""

    def __init__(self, model_id: str, state: RequestState, logprobs: ChatLogprobs | None,
                 spec: OutputSpec = OutputSpec(), legacy_functions: bool = False, call_ids: CallIdForm = CallIdForm.OPENAI):
        super().__init__(model_id, state, logprobs)
        self.call_ids = call_ids
        self.id = f"chatcmpl-{state.request_id}"
        self.spec = spec
        self.legacy = legacy_functions
        self._parser = OutputParser(spec)
        self._calls_sent = 0

    def reply(self, events: list[TokenEvent]) -> dict:
        parser = OutputParser(self.spec)
        parser.push(self.state.text)
        parser.finish()
        msg = parser.message
        choice = {
            "index": 0,
            "message": self._message(msg),
            "logprobs": self._lp(events),
            "finish_reason": self._finish_reason(self.state.finish_reason, bool(msg.calls)),
        }
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage(self.state)}

    def _message(self, msg: AssistantMessage) -> dict:
        out: dict = {"role": "assistant", "content": msg.content if msg.content or not msg.calls else None}
        if msg.reasoning:
            out["reasoning_content"] = out["reasoning"] = msg.reasoning
        if msg.calls and self.legacy:
            out["function_call"] = {"name": msg.calls[0].name, "arguments": msg.calls[0].arguments}
        elif msg.calls:
            out["tool_calls"] = [{"id": in_form(c.id, self.call_ids), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in msg.calls]
        return out

    def _finish_reason(self, reason: str | None, called: bool) -> str:
        if called and reason in (EOS, STOP):
            return "function_call" if self.legacy else "tool_calls"
        return FINISH_REASONS[reason]

    def chunk(self, event: TokenEvent) -> dict | None:
        if self.spec.is_plain:
            delta = {"content": event.text} if event.text or not event.finished else {}
        else:
            parts = self._parser.push(event.text)
            if event.finished:
                end = self._parser.finish()
                parts = Delta(parts.reasoning + end.reasoning, parts.content + end.content, parts.calls + end.calls)
            delta = self._delta(parts)
            if not delta and not event.finished and not (self.logprobs and output_events(event)):
                return None
        finish = self._finish_reason(event.finish_reason, bool(self._parser.message.calls)) if event.finished else None
        choice = {"index": 0, "delta": delta, "logprobs": self._lp([event]), "finish_reason": finish}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def _delta(self, parts: Delta) -> dict:
        delta: dict = {}
        if parts.reasoning:
            delta["reasoning_content"] = delta["reasoning"] = parts.reasoning
        if parts.content:
            delta["content"] = parts.content
        if parts.calls and self.legacy:
            delta["function_call"] = {"name": parts.calls[0].name, "arguments": parts.calls[0].arguments}
        elif parts.calls:
            delta["tool_calls"] = []
            for c in parts.calls:
                delta["tool_calls"].append({"index": self._calls_sent, "id": in_form(c.id, self.call_ids), "type": "function",
                                            "function": {"name": c.name, "arguments": c.arguments}})
                self._calls_sent += 1
        return delta

    def first_chunks(self) -> list[dict]:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return [{**self._head("chat.completion.chunk"), "choices": [choice]}]

    def usage_chunk(self) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(self.state)}


class OpenAIStreamRenderer(SseRenderer):
    """SSE chunks for one request: the chat role chunk first, one chunk per event with text
    (or logprobs), an error object if generation failed, the usage chunk when asked, [DONE]."""

    def __init__(self, fmt: CompletionFormat, include_usage: bool, path: str):
        self._fmt = fmt
        self._include_usage = include_usage
        self._path = path
        self._started = False

    def event(self, event: TokenEvent) -> list[bytes]:
        out = []
        if not self._started:
            self._started = True
            out += [self._sse(c) for c in self._fmt.first_chunks()]
        if event.finish_reason == FAILED:
            out.append(sse(error_body(self._path, 500, f"generation failed: {self._fmt.state.error}")))
        elif event.finished or event.text or (self._fmt.logprobs and output_events(event)):
            chunk = self._fmt.chunk(event)
            if chunk is not None:  # None: the text is held back (a tool call may be starting)
                out.append(self._sse(chunk))
        return out

    def end(self) -> list[bytes]:
        out = [sse(self._fmt.usage_chunk())] if self._include_usage else []
        return out + [DONE]

    def _sse(self, chunk: dict) -> bytes:
        if self._include_usage:
            chunk["usage"] = None
        return sse(chunk)
