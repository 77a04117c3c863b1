"""Ollama's /api/generate and /api/chat: request bodies -> GenerationRequest, and the reply
objects (one NDJSON line per piece of text, then a final `done` object with Ollama's counts
and durations in nanoseconds)."""

import json
import time
from datetime import datetime, timezone

from rfc.runtime.text.assistant_output import Delta, OutputParser, OutputSpec
from rfc.runtime.engine.budget import BudgetRule, PastContext
from rfc.runtime.engine.engine import CANCELLED, EOS, FAILED, LENGTH, STOP, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.text.messages import system_and_turns
from rfc.runtime.server.anthropic_blocks import call_input
from rfc.runtime.server.chat_prompt import ends_with_assistant, render_chat
from rfc.runtime.server.errors import bad_request, generation_failure
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.generation import budget, check_token_ids
from rfc.runtime.server.served_models import ServedModel
from rfc.runtime.server.ollama_fit import fitted_chat
from rfc.runtime.text.reasoning import template_thinks
from rfc.runtime.server.model_info import has_chat_template
from rfc.runtime.server.ollama_models import TOP_LEVEL_OPTIONS
from rfc.runtime.server.ollama_options import OllamaOptions, parse_options
from rfc.runtime.server.streaming import SseRenderer
from rfc.runtime.server.structured import OutputPlan, grammar, tool_plan

DONE_REASONS = {EOS: "stop", STOP: "stop", LENGTH: "length", CANCELLED: "cancelled", FAILED: "error"}


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def ndjson(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def refuse_unsupported(f: RequestFields) -> None:
    """What Ollama offers and rfc cannot do yet: a 400 naming it, never silently ignored."""
    if f.raw("images"):
        raise bad_request("images are not supported: this model takes text only", "images")
    if f.string("template"):
        raise bad_request("template overrides are not supported; compile the bundle with --chat-template", "template")
    if f.boolean("logprobs"):
        raise bad_request("logprobs are not supported on the Ollama API (use /v1/completions)", "logprobs")


def output_plan(served: ServedModel, f: RequestFields, chat: bool, generic_tools: bool = False) -> OutputPlan:
    """`format` ("json" or a JSON schema), `tools` and `tool_choice` (/api/chat) and `think`.
    Tools on a template without tool calling are Ollama's 400, unless `generic_tools`."""
    plan = OutputPlan()
    if chat:
        plan = tool_plan(f.raw("tools"), f.raw("tool_choice"))
        if plan.tools and served.tool_format is None and not generic_tools:
            raise bad_request(f"{served.model_id} does not support tools", "tools")
        plan.format_is_answer = False
    elif f.raw("tools"):
        raise bad_request("'tools' is supported on /api/chat only", "tools")
    fmt = f.raw("format")
    if fmt == "json":
        plan.grammar_field, plan.grammar = "format", grammar(served, "format", lambda g: g.any_json_object("format"))
    elif isinstance(fmt, dict):
        plan.grammar_field, plan.grammar = "format", grammar(served, "format", lambda g: g.json_schema(fmt, "format"))
    elif fmt not in (None, ""):
        raise bad_request("'format' must be \"json\" or a JSON schema object", "format")
    think = f.raw("think")
    if think not in (None, False, True, "low", "medium", "high"):
        raise bad_request("'think' must be true, false or one of 'low', 'medium', 'high'", "think")
    if think not in (None, False) and not (served.chat is not None and template_thinks(served.chat.source)):
        raise bad_request("this model does not support thinking", "think")
    plan.thinking = None if think is None else think is not False
    return plan


def template_variables(plan: OutputPlan, f: RequestFields) -> dict:
    """Template variables for `think`: Qwen3's and DeepSeek's enable_thinking, gpt-oss's reasoning_effort."""
    if plan.thinking is None:
        return {}
    extra = {"enable_thinking": plan.thinking}
    if isinstance(f.raw("think"), str):
        extra["reasoning_effort"] = f.raw("think")
    return extra


def generate_prompt(
    served: ServedModel, f: RequestFields, plan: OutputPlan | None = None
) -> tuple[list[int], str] | None:
    """(`context` ids, prompt text) for /api/generate, None for an empty prompt (Ollama's "load the model").
    As in Ollama, the prompt goes through the model's template as a user turn (with `system`)
    unless `raw` is set or the model has no template of its own."""
    prompt = f.string("prompt")
    context = f.raw("context")
    if not isinstance(context, list):
        raise bad_request("'context' must be a list of token ids", "context")
    context = check_token_ids(served, context, "context")
    if not prompt:
        return None
    if f.boolean("raw") or not has_chat_template(served):
        text = prompt
    else:
        extra = template_variables(plan, f) if plan is not None else {}
        text = render_chat(
            served, system_and_turns(f.string("system"), [{"role": "user", "content": prompt}]), extra, field="prompt"
        )
    return context, text


def chat_prompt(served: ServedModel, f: RequestFields, plan: OutputPlan | None = None) -> tuple[str, list[int]] | None:
    """Prompt text and ids for /api/chat, trimmed to the context as Ollama trims it
    (runtime/server/ollama_fit.py); None for no messages (Ollama's "load the model")."""
    messages = f.raw("messages")
    if isinstance(messages, list):
        if not messages:
            return None
        for i, m in enumerate(messages):
            if isinstance(m, dict) and m.get("images"):
                raise bad_request("images are not supported: this model takes text only", f"messages[{i}].images")
        messages = [_from_ollama(m) for m in messages]
    extra = template_variables(plan, f) if plan is not None else {}
    args = plan.prompt_args(served) if plan is not None else {}
    if not isinstance(messages, list):  # the renderer names what is wrong with them
        return render_chat(served, messages, extra, **args), []
    # a final assistant message is continued, as Ollama continues it
    args["continue_final"] = ends_with_assistant(messages)
    return fitted_chat(served, messages, lambda kept: render_chat(served, kept, extra, **args))


def _from_ollama(message: object) -> object:
    """Ollama's `thinking` of an earlier assistant turn is what templates call `reasoning_content`."""
    if isinstance(message, dict) and message.get("role") == "assistant" and isinstance(message.get("thinking"), str):
        return {**message, "reasoning_content": message["thinking"]}
    return message


# num_predict past the context stops at it, as Ollama's does
BUDGET = BudgetRule(past_context=PastContext.CLAMP)


def sampling_options(f: RequestFields) -> OllamaOptions:
    """`options`, with the top-level fields some clients send beside them (Ollama would ignore
    those, leaving the user's temperature unapplied); checked for every request, the model
    "load" requests included."""
    raw = f.raw("options")
    if raw is None or isinstance(raw, dict):
        top = {opt: f.raw(key) for key, opt in TOP_LEVEL_OPTIONS.items() if f.has(key)}
        raw = {**top, **(raw or {})}  # `options` wins
    return parse_options(raw)


def generation(
    served: ServedModel, options: OllamaOptions, prompt_ids: list[int], plan: OutputPlan | None = None
) -> GenerationRequest:
    max_tokens = budget(served, BUDGET, options.num_predict, prompt_ids)
    return GenerationRequest(
        prompt_ids=prompt_ids,
        params=options.params,
        max_tokens=max_tokens,
        stop=options.stop,
        constraint=plan.constraint(served) if plan is not None else None,
    )


class OllamaReply:
    """The objects of one /api/generate (`chat=False`) or /api/chat reply."""

    def __init__(
        self,
        model_name: str,
        chat: bool,
        state: RequestState | None = None,
        spec: OutputSpec = OutputSpec(),
        load_seconds: float = 0.0,
    ):
        """`load_seconds`: how long the request waited for its model to load (load_duration)."""
        self.model_name = model_name
        self.chat = chat
        self.state = state
        self.spec = spec
        self.parser = OutputParser(spec)
        self.load_seconds = load_seconds

    def piece(self, text: str | Delta, done: bool = False) -> dict:
        d = text if isinstance(text, Delta) else Delta(content=text)
        out: dict = {"model": self.model_name, "created_at": now_rfc3339()}
        if self.chat:
            out["message"] = {"role": "assistant", "content": d.content}
            if d.reasoning:
                out["message"]["thinking"] = d.reasoning
            if d.calls:
                out["message"]["tool_calls"] = [
                    {"function": {"name": c.name, "arguments": call_input(c)}} for c in d.calls
                ]
        else:
            out["response"] = d.content
            if d.reasoning:
                out["thinking"] = d.reasoning
        out["done"] = done
        return out

    def whole(self) -> Delta:
        """The complete output of a finished request, read as the stream would have."""
        parser = OutputParser(self.spec)
        a, b = parser.push(self.state.text), parser.finish()
        return Delta(a.reasoning + b.reasoning, a.content + b.content, a.calls + b.calls)

    def loaded(self) -> dict:
        """The reply to an empty prompt: the model is loaded (now, if it was not)."""
        return {**self.piece("", done=True), "done_reason": "load", "load_duration": _ns(self.load_seconds)}

    def unloaded(self) -> dict:
        """The reply to an empty prompt with keep_alive 0: the model unloads (`ollama stop`)."""
        return {**self.piece("", done=True), "done_reason": "unload"}

    def final(self, text: "str | Delta" = "") -> dict:
        state = self.state
        end = state.finished_at or time.time()
        first = state.first_token_at or end
        out = {
            **self.piece(text, done=True),
            "done_reason": DONE_REASONS.get(state.finish_reason, "stop"),
            "total_duration": _ns(end - state.created_at + self.load_seconds),
            "load_duration": _ns(self.load_seconds),  # 0 unless this request waited for the model to load
            "prompt_eval_count": state.prompt_tokens,
            "prompt_eval_duration": _ns(first - (state.admitted_at or state.created_at)),
            "eval_count": len(state.tokens),
            "eval_duration": _ns(end - first),
        }
        if not self.chat:  # the conversation so far, for the next request's `context`
            out["context"] = list(state.request.prompt_ids) + list(state.tokens)
        return out


class OllamaStreamRenderer(SseRenderer):
    """NDJSON lines for a streamed reply; a failed generation ends with Ollama's error line."""

    def __init__(self, reply: OllamaReply):
        self._reply = reply

    def event(self, event: TokenEvent) -> list[bytes]:
        if event.finish_reason == FAILED:
            return [ndjson({"error": generation_failure(self._reply.state)[1]})]
        out = []
        delta = self._reply.parser.push(event.text) if event.text else Delta()
        if event.finished:
            end = self._reply.parser.finish()
            delta = Delta(delta.reasoning + end.reasoning, delta.content + end.content, delta.calls + end.calls)
        if delta:
            out.append(ndjson(self._reply.piece(delta)))
        if event.finished:
            out.append(ndjson(self._reply.final()))
        return out


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))
