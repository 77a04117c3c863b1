"""Ollama's /api/chat past the context, as Ollama answers it: the oldest messages that are not
system messages are left out, as few as make the prompt fit (the latest message always stays);
if the latest message alone is still too long, the start of its text is cut off, keeping its
end. Only a prompt that cannot fit even so (a system message longer than the context) is the
400 of every other route. The /v1 routes never trim: a client there gets
`context_length_exceeded` and trims itself."""

from __future__ import annotations

import logging
from collections.abc import Callable

from rfc.runtime.server.context_errors import CODE
from rfc.runtime.server.errors import ApiError, bad_request
from rfc.runtime.server.served_models import ServedModel

log = logging.getLogger("rfc.server")


def fitted_chat(served: ServedModel, messages: list, render: Callable[[list], str]) -> tuple[str, list[int]]:
    """(prompt text, token ids) of `messages`, trimmed to leave the context room for one token."""
    text, ids, error = _attempt(served, messages, render)
    if ids is not None:
        return text, ids
    droppable = [i for i, m in enumerate(messages[:-1]) if not (isinstance(m, dict) and m.get("role") == "system")]

    def without(k: int) -> list:
        gone = set(droppable[:k])
        return [m for i, m in enumerate(messages) if i not in gone]

    k = _least(1, len(droppable), lambda k: _attempt(served, without(k), render)[1] is not None)
    if k is not None:
        log.info(
            "/api/chat: left out the %d oldest messages to fit the context of %d tokens", k, served.model.context_length
        )
        text, ids, _ = _attempt(served, without(k), render)
        return text, ids
    kept = without(len(droppable))
    last = kept[-1] if kept else None
    content = last.get("content") if isinstance(last, dict) else None
    if not isinstance(content, str) or not content:
        raise error

    def cut(n: int) -> list:  # the last n characters of the latest message
        return [*kept[:-1], {**last, "content": content[len(content) - n :]}]

    # the most characters that fit: the least number cut off
    dropped = _least(1, len(content), lambda d: _attempt(served, cut(len(content) - d), render)[1] is not None)
    if dropped is None:
        raise error
    log.info(
        "/api/chat: left out %d messages and the first %d characters of the latest to fit the context of %d tokens",
        len(droppable),
        dropped,
        served.model.context_length,
    )
    text, ids, _ = _attempt(served, cut(len(content) - dropped), render)
    return text, ids


def _attempt(
    served: ServedModel, messages: list, render: Callable[[list], str]
) -> tuple[str, list[int] | None, ApiError | None]:
    """The prompt of `messages` and its ids, or None and the error when it does not fit."""
    text = render(messages)
    try:
        ids = served.prompts.encode(text, "messages")
    except ApiError as e:
        if e.error_code != CODE:
            raise
        return text, None, e
    if len(ids) >= served.model.context_length:  # no room to generate
        return (
            text,
            None,
            bad_request(
                f"'messages' ({len(ids)} tokens) fill the context ({served.model.context_length} tokens)", "messages"
            ),
        )
    return text, ids, None


def _least(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """The least n in [lo, hi] for which `fits(n)` holds (it holds for every larger n); None if none."""
    if lo > hi or not fits(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
