"""The one place a chat becomes prompt text, for every API (OpenAI chat, Responses, Anthropic,
Ollama, /apply-template): messages are normalized (runtime/messages.py), then rendered with
the bundle's chat template. Template failures are the client's messages' fault: a 400."""

import falcon

from rfc.runtime.chat import ChatTemplateError
from rfc.runtime.messages import MessageError, normalize_messages
from rfc.runtime.server.errors import ApiError, bad_request
from rfc.runtime.server.host import ServedModel


def render_chat(served: ServedModel, messages: object, extra: dict | None = None, field: str = "messages",
                add_generation_prompt: bool = True) -> str:
    """Prompt text for `messages`; `extra` holds template variables (chat_template_kwargs)."""
    if served.chat is None:
        raise ApiError(falcon.HTTP_500, served.chat_error or "the bundle has no usable chat template")
    try:
        turns = normalize_messages(messages, served.chat.source, field)
    except MessageError as e:
        raise bad_request(str(e), e.field) from None
    try:
        return served.chat.render(turns, add_generation_prompt=add_generation_prompt, **(extra or {}))
    except ChatTemplateError as e:
        raise bad_request(f"the chat template failed on these messages: {e}", field) from None
    except TypeError as e:  # a chat_template_kwargs key that collides with render's own arguments
        raise bad_request(f"chat_template_kwargs: {e}", "chat_template_kwargs") from None

