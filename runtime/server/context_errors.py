"""A request that does not fit the context, in each API's own words, which clients map to their
context-window exceptions: on /v1 OpenAI's `code: "context_length_exceeded"` and its "This
model's maximum context length is N tokens. However, ...", and for a prompt alone too long
also OpenAI's newer "Input tokens exceed the configured limit of N tokens" (the openai package's
BadRequestError; langchain's OpenAIContextOverflowError, pydantic-ai's
ModelContextWindowExceededError and litellm's ContextWindowExceededError look for either); on
/v1/messages Anthropic's `invalid_request_error` "prompt is too long: N tokens > M maximum";
the native and Ollama routes keep the engine's own message."""

from __future__ import annotations

import falcon

from rfc.runtime.engine.requests import ContextOverflow
from rfc.runtime.server.errors import ApiError, Dialect, dialect_of

CODE = "context_length_exceeded"
_COMPLETIONS = "/v1/completions"


def context_error(e: ContextOverflow, trained: int) -> ApiError:
    """The 400 for `e`, worded per route when it is serialized; `trained`: the model's own
    context, named where --ctx-size serves less."""
    return ApiError(
        falcon.HTTP_400, str(e), param=e.field, code=CODE, message_for=lambda path: _message(e, trained, path)
    )


def _message(e: ContextOverflow, trained: int, path: str) -> str:
    dialect = dialect_of(path)
    n = f"more than {e.prompt_tokens}" if e.at_least else str(e.prompt_tokens)
    served = "" if trained == e.context else f" (--ctx-size; the model's is {trained})"
    if dialect is Dialect.ANTHROPIC:
        if e.asked is None:  # a count that stopped early is the least the prompt can be
            least = f"at least {e.prompt_tokens + 1}" if e.at_least else n
            return f"prompt is too long: {least} tokens > {e.context} maximum" + (
                served and f"; the served context is {e.context} tokens{served}"
            )
        return (
            f"input length and `max_tokens` exceed context limit: {e.prompt_tokens} + {e.asked} > {e.context}, "
            "decrease input length or `max_tokens` and try again"
        )
    if dialect is not Dialect.OPENAI:
        return str(e)
    what = "prompt" if path.startswith(_COMPLETIONS) else "messages"
    head = f"This model's maximum context length is {e.context} tokens{served}. However, "
    if e.asked is None or e.prompt_tokens >= e.context:  # the prompt alone is too long
        # the second sentence is OpenAI's newer wording of the same error, which langchain-openai
        # matches (beside the code, which the openai package leaves out of the message it raises)
        return head + (
            f"your {what} resulted in {n} tokens. Please reduce the length of the {what}. "
            f"Input tokens exceed the configured limit of {e.context} tokens."
        )
    return head + (
        f"you requested {e.prompt_tokens + e.asked} tokens ({e.prompt_tokens} in the {what}, {e.asked} in "
        f"the completion). Please reduce the length of the {what} or completion."
    )
