"""Ollama's /api/generate and /api/chat: request bodies -> GenerationRequest, and the reply
objects (one NDJSON line per piece of text, then a final `done` object with Ollama's counts
and durations in nanoseconds)."""

import json
import time
from datetime import datetime, timezone

from rfc.runtime.engine import CANCELLED, EOS, FAILED, LENGTH, STOP, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.messages import system_and_turns
from rfc.runtime.server.chat_prompt import render_chat
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.generation import check_token_ids
from rfc.runtime.server.host import ServedModel
from rfc.runtime.server.model_info import has_chat_template
from rfc.runtime.server.ollama_options import parse_options

NDJSON_CONTENT_TYPE = "application/x-ndjson"
DONE_REASONS = {EOS: "stop", STOP: "stop", LENGTH: "length", CANCELLED: "cancelled", FAILED: "error"}


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def ndjson(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def refuse_unsupported(f: RequestFields) -> None:
    """What Ollama offers and rfc cannot do yet: a 400 naming it, never silently ignored."""
    if f.raw("format"):
        raise bad_request("structured outputs ('format') are not supported", "format")
    if f.raw("tools"):
        raise bad_request("tools are not supported", "tools")
    if f.raw("images"):
        raise bad_request("images are not supported: this model takes text only", "images")
    if f.string("suffix"):
        raise bad_request("'suffix' (fill-in-the-middle) is not supported", "suffix")
    if f.string("template"):
        raise bad_request("template overrides are not supported; compile the bundle with --chat-template", "template")
    if f.raw("think") not in (None, False):
        raise bad_request("this model does not support thinking", "think")
    if f.boolean("logprobs", False):
        raise bad_request("logprobs are not supported on the Ollama API (use /v1/completions)", "logprobs")


def generate_prompt(served: ServedModel, f: RequestFields) -> list[int] | None:
    """Prompt ids for /api/generate, None for an empty prompt (Ollama's "load the model").
    As in Ollama, the prompt goes through the model's template as a user turn (with `system`)
    unless `raw` is set or the model has no template of its own."""
    prompt = f.string("prompt", "")
    context = f.raw("context", [])
    if not isinstance(context, list):
        raise bad_request("'context' must be a list of token ids", "context")
    context = check_token_ids(served, context, "context")
    if not prompt:
        return None
    if f.boolean("raw", False) or not has_chat_template(served):
        text = prompt
    else:
        text = render_chat(served, system_and_turns(f.string("system"), [{"role": "user", "content": prompt}]), field="prompt")
    return context + served.prompts.encode(text)


def chat_prompt(served: ServedModel, f: RequestFields) -> list[int] | None:
    """Prompt ids for /api/chat, None for no messages (Ollama's "load the model")."""
    messages = f.raw("messages", [])
    if isinstance(messages, list):
        if not messages:
            return None
        for i, m in enumerate(messages):
            if isinstance(m, dict) and m.get("images"):
                raise bad_request("images are not supported: this model takes text only", f"messages[{i}].images")
    return served.prompts.encode(render_chat(served, messages), "messages")


# Top-level sampling fields that ollama-ai-provider-v2 (the AI SDK's Ollama provider) sends
# beside `options`; Ollama would ignore them, leaving the user's temperature unapplied.
_TOP_LEVEL_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "max_output_tokens": "num_predict"}


def generation(served: ServedModel, f: RequestFields, prompt_ids: list[int]) -> GenerationRequest:
    raw = f.raw("options", {})
    if isinstance(raw, dict):
        top = {opt: f.raw(key) for key, opt in _TOP_LEVEL_OPTIONS.items() if f.has(key)}
        raw = {**top, **raw}  # `options` wins
    options = parse_options(raw)
    room = served.model.context_length - len(prompt_ids)
    if room < 1:
        raise bad_request(f"the prompt ({len(prompt_ids)} tokens) fills the context ({served.model.context_length} tokens)", "prompt")
    max_tokens = min(options.num_predict or room, room)  # Ollama stops at the context too
    return GenerationRequest(prompt_ids=prompt_ids, params=options.params, max_tokens=max_tokens, stop=options.stop)


class OllamaReply:
    """The objects of one /api/generate (`chat=False`) or /api/chat reply."""

    def __init__(self, model_name: str, chat: bool, state: RequestState | None = None):
        self.model_name = model_name
        self.chat = chat
        self.state = state

    def piece(self, text: str, done: bool = False) -> dict:
        out: dict = {"model": self.model_name, "created_at": now_rfc3339()}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = done
        return out

    def loaded(self) -> dict:
        """The reply to an empty prompt: the model is loaded (it always is, here)."""
        return {**self.piece("", done=True), "done_reason": "load"}

    def final(self, text: str = "") -> dict:
        state = self.state
        end = state.finished_at or time.time()
        first = state.first_token_at or end
        out = {
            **self.piece(text, done=True),
            "done_reason": DONE_REASONS.get(state.finish_reason, "stop"),
            "total_duration": _ns(end - state.created_at),
            "load_duration": 0,  # the model was loaded before the server became ready
            "prompt_eval_count": state.prompt_tokens,
            "prompt_eval_duration": _ns(first - (state.admitted_at or state.created_at)),
            "eval_count": len(state.tokens),
            "eval_duration": _ns(end - first),
        }
        if not self.chat:  # the conversation so far, for the next request's `context`
            out["context"] = list(state.request.prompt_ids) + list(state.tokens)
        return out


class OllamaStreamRenderer:
    """NDJSON lines for a streamed reply; a failed generation ends with Ollama's error line."""

    def __init__(self, reply: OllamaReply):
        self._reply = reply

    def event(self, event: TokenEvent) -> list[bytes]:
        if event.finish_reason == FAILED:
            return [ndjson({"error": f"generation failed: {self._reply.state.error}"})]
        out = []
        if event.text:
            out.append(ndjson(self._reply.piece(event.text)))
        if event.finished:
            out.append(ndjson(self._reply.final()))
        return out

    def end(self) -> list[bytes]:
        return []


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))
