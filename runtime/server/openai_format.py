"""OpenAI response shapes: completions and chat completions, whole and as SSE chunks, with
logprobs in each API's own layout."""

import functools
import re
import time

from rfc.runtime.text.assistant_output import AssistantMessage, Delta, OutputParser, OutputSpec
from rfc.runtime.text.call_ids import CallIdForm, in_form
from rfc.runtime.engine.engine import CANCELLED, EOS, FAILED, LENGTH, STOP, RequestState, TokenEvent
from rfc.runtime.server.errors import generation_error
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
        text = (
            raw.replace("\u2581", " ")
            if "\u2581" in raw
            else self._tokenizer.decode([token], skip_special_tokens=False)
        )
        return text, list(text.encode("utf-8"))


def output_events(event: TokenEvent) -> bool:
    """Whether the event carries a token of the output (an EOS, a cancel or a failure does not)."""
    return event.token is not None and event.finish_reason != EOS


def usage(states: list[RequestState], prompts: int = 1) -> dict:
    """The usage of a request's choices: each prompt's tokens once (the `n` choices of a prompt
    share it; `states` holds them prompt after prompt), every choice's completion."""
    prompt = sum(s.prompt_tokens for s in states[:: len(states) // prompts])
    completion = sum(len(s.tokens) for s in states)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class CompletionLogprobs:
    """`logprobs` of /v1/completions: parallel lists over the output tokens, after the
    prompt's (`echo`: `prompt`, each token's logprob and top logprobs, the first's null)."""

    def __init__(self, pieces: TokenPieces, prompt: list[tuple[int, float | None, tuple]] | None = None):
        self._pieces = pieces
        self._offset = 0
        self._prompt = prompt

    def entry(self, events: list[TokenEvent]) -> dict:
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        prompt, self._prompt = self._prompt or [], None
        for token, logprob, top in prompt:
            text = self._pieces.piece(token)[0]
            out["tokens"].append(text)
            out["token_logprobs"].append(logprob)
            out["top_logprobs"].append({self._pieces.piece(t)[0]: lp for t, lp in top} if logprob is not None else None)
            out["text_offset"].append(self._offset)
            self._offset += len(text)
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
    """Shapes of one choice of a /v1/completions request (`index`: its place among them)."""

    kind = "text_completion"
    chunk_kind = "text_completion"
    id_prefix = "cmpl-"
    fingerprint = ""  # the served model's replay receipt (ServedModel.fingerprint), set by the resource

    def __init__(self, model_id: str, state: RequestState, logprobs: CompletionLogprobs | None, index: int = 0):
        self.model_id = model_id
        self.state = state
        self.logprobs = logprobs
        self.index = index
        self.id = f"{self.id_prefix}{state.request_id}"
        self.created = int(time.time())
        self.echo = ""  # text shown before the output (`echo`: the prompt)

    def choice(self, events: list[TokenEvent]) -> dict:
        return {
            "index": self.index,
            "text": self.echo + self.state.text,
            "logprobs": self._lp(events),
            "finish_reason": FINISH_REASONS[self.state.finish_reason],
        }

    def chunk(self, event: TokenEvent) -> dict | None:
        finish = FINISH_REASONS[event.finish_reason] if event.finished else None
        choice = {"index": self.index, "text": event.text, "logprobs": self._lp([event]), "finish_reason": finish}
        return {**self.head(self.chunk_kind), "choices": [choice]}

    def first_chunks(self) -> list[dict]:
        if not self.echo:
            return []
        choice = {"index": self.index, "text": self.echo, "logprobs": self._lp([]), "finish_reason": None}
        return [{**self.head(self.chunk_kind), "choices": [choice]}]

    def _lp(self, events: list[TokenEvent]) -> dict | None:
        return self.logprobs.entry(events) if self.logprobs else None

    def head(self, kind: str) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model_id,
            "system_fingerprint": self.fingerprint,
        }


class Choices:
    """The choices of one request (`n` per prompt, prompt after prompt), answered as one
    reply under the first one's id."""

    def __init__(self, formats: list[CompletionFormat], prompts: int = 1):
        self.formats = formats
        self.prompts = prompts
        self._by_id = {f.state.request_id: f for f in formats}
        for f in formats[1:]:
            f.id, f.created = formats[0].id, formats[0].created

    @property
    def first(self) -> CompletionFormat:
        return self.formats[0]

    def of(self, event: TokenEvent) -> CompletionFormat:
        return self._by_id[event.request_id]

    def usage(self) -> dict:
        return usage([f.state for f in self.formats], self.prompts)

    def reply(self, events: list[TokenEvent]) -> dict:
        mine = {f.state.request_id: [] for f in self.formats}
        for e in events:
            mine[e.request_id].append(e)
        choices = [f.choice(mine[f.state.request_id]) for f in self.formats]
        return {**self.first.head(self.first.kind), "choices": choices, "usage": self.usage()}

    def usage_chunk(self) -> dict:
        return {**self.first.head(self.first.chunk_kind), "choices": [], "usage": self.usage()}


class ChatFormat(CompletionFormat):
    """Shapes of one choice of a /v1/chat/completions request. Reasoning goes in `reasoning_content`
    (DeepSeek's and llama.cpp's name) and in `reasoning` (vLLM's and Ollama's); tool calls in
    `tool_calls` (or `function_call` for the legacy `functions`), with finish_reason
    `tool_calls` (`function_call`)."""

    kind = "chat.completion"
    chunk_kind = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(
        self,
        model_id: str,
        state: RequestState,
        logprobs: ChatLogprobs | None,
        spec: OutputSpec = OutputSpec(),
        legacy_functions: bool = False,
        call_ids: CallIdForm = CallIdForm.OPENAI,
        index: int = 0,
    ):
        super().__init__(model_id, state, logprobs, index)
        self.call_ids = call_ids
        self.spec = spec
        self.legacy = legacy_functions
        self._parser = OutputParser(spec)
        self._calls_sent = 0

    def choice(self, events: list[TokenEvent]) -> dict:
        parser = OutputParser(self.spec)
        parser.push(self.state.text)
        parser.finish()
        msg = parser.message
        return {
            "index": self.index,
            "message": self._message(msg),
            "logprobs": self._lp(events),
            "finish_reason": self._finish_reason(self.state.finish_reason, bool(msg.calls)),
        }

    def _message(self, msg: AssistantMessage) -> dict:
        out: dict = {
            "role": "assistant",
            "content": msg.content if msg.content or not msg.calls else None,
            "refusal": None,
        }  # required by OpenAI's document: the model refuses in content, never here
        if msg.reasoning:
            out["reasoning_content"] = out["reasoning"] = msg.reasoning
        if msg.calls and self.legacy:
            out["function_call"] = {"name": msg.calls[0].name, "arguments": msg.calls[0].arguments}
        elif msg.calls:
            out["tool_calls"] = [
                {
                    "id": in_form(c.id, self.call_ids),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in msg.calls
            ]
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
        choice = {"index": self.index, "delta": delta, "logprobs": self._lp([event]), "finish_reason": finish}
        return {**self.head(self.chunk_kind), "choices": [choice]}

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
                delta["tool_calls"].append(
                    {
                        "index": self._calls_sent,
                        "id": in_form(c.id, self.call_ids),
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                )
                self._calls_sent += 1
        return delta

    def first_chunks(self) -> list[dict]:
        choice = {
            "index": self.index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return [{**self.head(self.chunk_kind), "choices": [choice]}]


class OpenAIStreamRenderer(SseRenderer):
    """SSE chunks for one request's choices: each choice's first chunks (chat: the role) at
    the start, one chunk per event with text (or logprobs) naming its choice's index, an
    error object if generation failed, the usage chunk when asked, [DONE]. With `continuous`
    (vLLM's continuous_usage_stats) every chunk carries the usage so far, not null."""

    def __init__(self, choices: Choices, include_usage: bool, path: str, continuous: bool = False):
        self._choices = choices
        self._include_usage = include_usage
        self._continuous = continuous
        self._path = path
        self._started = False

    def event(self, event: TokenEvent) -> list[bytes]:
        out = []
        if not self._started:
            self._started = True
            out += [self._sse(c) for f in self._choices.formats for c in f.first_chunks()]
        fmt = self._choices.of(event)
        if event.finish_reason == FAILED:
            out.append(sse(generation_error(self._path, fmt.state)))
        elif event.finished or event.text or (fmt.logprobs and output_events(event)):
            chunk = fmt.chunk(event)
            if chunk is not None:  # None: the text is held back (a tool call may be starting)
                out.append(self._sse(chunk))
        return out

    def end(self) -> list[bytes]:
        out = [sse(self._choices.usage_chunk())] if self._include_usage else []
        return out + [DONE]

    def _sse(self, chunk: dict) -> bytes:
        if self._include_usage:
            chunk["usage"] = self._choices.usage() if self._continuous else None
        return sse(chunk)
