"""The one place a chat becomes prompt text, for every API (OpenAI chat, Responses, Anthropic,
Ollama, /apply-template): messages are normalized (runtime/text/messages.py), then rendered with
the bundle's chat template. Template failures are the client's messages' fault: a 400."""

import json

import falcon

from rfc.runtime.text.call_ids import turns_in_form
from rfc.runtime.text.chat import ChatTemplateError
from rfc.runtime.text.messages import MessageError, normalize_messages
from rfc.runtime.server.errors import ApiError, bad_request
from rfc.runtime.server.served_models import ServedModel


def render_chat(
    served: ServedModel,
    messages: object,
    extra: dict | None = None,
    field: str = "messages",
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    note: str | None = None,
    continue_final: bool = False,
) -> str:
    """Prompt text for `messages`; `extra` holds template variables (chat_template_kwargs);
    `tools` the OpenAI-shaped tools the template renders (None: no tools); `note` system text
    added after the request's own system message (generic tool calling's instructions).
    `continue_final`: the final message, an assistant's, is left open for the model to go on
    with (Anthropic's prefill, vLLM's continue_final_message)."""
    if continue_final:
        return _continued(served, messages, extra, field, tools, note)
    if served.chat is None:
        raise ApiError(falcon.HTTP_500, served.chat_error or "the bundle has no usable chat template")
    try:
        turns = normalize_messages(messages, served.chat.source, field)
    except MessageError as e:
        raise bad_request(str(e), e.field) from None
    turns = turns_in_form(turns, served.call_ids)  # Mistral's templates take 9-character ids only
    if note:
        turns = with_system_note(turns, note)
    extra = thinking_by_default(served.chat.source, extra or {})
    try:
        # Most templates take a call's arguments as an object (`arguments | tojson`); clients
        # send the JSON text. A template that wants the text (functionary v3.2) gets it on retry.
        try:
            return served.chat.render(
                _object_arguments(turns), add_generation_prompt=add_generation_prompt, tools=tools, **(extra or {})
            )
        except ChatTemplateError:
            if not any(t.get("tool_calls") for t in turns):
                raise
            return served.chat.render(turns, add_generation_prompt=add_generation_prompt, tools=tools, **(extra or {}))
    except ChatTemplateError as e:
        raise bad_request(f"the chat template failed on these messages: {e}", field) from None
    except TypeError as e:  # a chat_template_kwargs key that collides with render's own arguments
        raise bad_request(f"chat_template_kwargs: {e}", "chat_template_kwargs") from None


def ends_with_assistant(messages: object) -> bool:
    """Whether a chat's final message is the assistant's: prefill, which llama-server, Ollama and
    Anthropic's API continue."""
    return (
        isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[-1], dict)
        and (messages[-1].get("role") == "assistant")
    )


def continuation(f) -> dict:
    """render_chat's `add_generation_prompt` and `continue_final` for an OpenAI-shaped body with
    vLLM's two fields (ADD_GENERATION_PROMPT, CONTINUE_FINAL_MESSAGE). Sent, they decide, as in
    vLLM (continuing a message opens no turn: both true is a 400). Neither sent, a chat that ends
    with the assistant's message is continued, as llama-server continues it."""
    if f.has("continue_final_message"):
        continue_final = f.boolean("continue_final_message")
    else:
        continue_final = not f.has("add_generation_prompt") and ends_with_assistant(f.raw("messages"))
    if not continue_final:
        return {"add_generation_prompt": f.boolean("add_generation_prompt"), "continue_final": False}
    if f.has("add_generation_prompt") and f.boolean("add_generation_prompt"):
        raise bad_request(
            "continue_final_message continues the final message: add_generation_prompt must be false",
            "add_generation_prompt",
        )
    return {"add_generation_prompt": False, "continue_final": True}


def _continued(served, messages, extra, field, tools, note) -> str:
    """The chat rendered up to the end of its final assistant message's text, as transformers'
    continue_final_message cuts it: the template closes that turn (its end-of-turn tokens, the
    next turn's header), and the prompt must stop where the text does. A final message without
    text opens a fresh turn; one with tool calls is history, answered in a new turn."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return render_chat(served, messages, extra, field, False, tools, note)  # its own 400
    if messages[-1].get("role") != "assistant":
        raise bad_request("the final message must be the assistant's to be continued", f"{field}[{len(messages) - 1}]")
    rendered = render_chat(served, messages, extra, field, False, tools, note)
    try:
        last = normalize_messages(messages[-1:], served.chat.source, field)[0]  # render_chat checked the rest
    except MessageError as e:
        raise bad_request(str(e), e.field) from None
    final = last["content"]
    if last.get("tool_calls"):  # a turn that called tools is history: its calls come after its text
        return render_chat(served, messages, extra, field, True, tools, note)
    if not final.strip():  # nothing to go on with
        return render_chat(served, messages[:-1], extra, field, True, tools, note)
    at = rendered.rfind(final.strip())
    if at < 0:
        raise bad_request(
            "the chat template does not write the final assistant message's text as sent, so it cannot be continued",
            f"{field}[{len(messages) - 1}].content",
        )
    # the text as sent where the template kept its spacing, else as the template trimmed it
    whole = final.lstrip()
    return rendered[: at + (len(whole) if rendered.startswith(whole, at) else len(final.strip()))]


def with_system_note(turns: list[dict], note: str) -> list[dict]:
    """`turns` with `note` at the end of the first system message, or as a new first one."""
    first = turns[0] if turns else None
    if first is not None and first.get("role") == "system" and isinstance(first.get("content"), str):
        return [{**first, "content": f"{first['content']}\n\n{note}" if first["content"] else note}, *turns[1:]]
    return [{"role": "system", "content": note}, *turns]


def thinking_by_default(source: str, extra: dict) -> dict:
    """Templates with an `enable_thinking` switch think unless a request turns it off, as
    llama-server renders them (some default it to off themselves: DeepSeek V3.1, Gemma 4)."""
    if "enable_thinking" in source and "enable_thinking" not in extra:
        return {**extra, "enable_thinking": True}
    return extra


def _object_arguments(turns: list[dict]) -> list[dict]:
    """Copies of `turns` whose tool calls' `arguments` are objects, where they were JSON text."""
    out = []
    for turn in turns:
        calls = turn.get("tool_calls")
        if isinstance(calls, list) and calls:
            turn = {**turn, "tool_calls": [_object_call(c) for c in calls]}
        out.append(turn)
    return out


def _object_call(call: object) -> object:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    try:
        args = json.loads(fn["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**fn, "arguments": args}}
