"""Tool-call ids in the form a chat template family requires.

Clients echo a call's id back twice in the next turn: on the assistant's call and on the tool
result. Most templates print it or ignore it, but Mistral's (Nemo, Small 3.x) refuse any id
that is not 9 letters and digits (`raise_exception("Tool call IDs should be alphanumeric
strings with length 9!")`), which made every agent loop's second turn a 400. So the ids a
server hands out are in the template's form, and ids coming back in another form (another
server's, Anthropic's `toolu_…`, or none at all: Ollama's calls have none) are mapped into it
the same way on the call and on its result, so the two still match."""

import hashlib
import re
import secrets
import string
from collections import deque
from enum import Enum


class CallIdForm(Enum):
    OPENAI = "openai"  # call_ + 24 hex digits (any string is accepted back)
    MISTRAL = "mistral"  # exactly 9 letters and digits


_ALPHANUMERIC = string.ascii_letters + string.digits
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
# Mistral's templates check `tool_call.id|length != 9` (and `tool_call_id|length != 9`).
_REQUIRES_NINE = re.compile(r"\|\s*length\s*!=\s*9\b")
# Prefixes that servers put before an id (OpenAI's, Anthropic's): a 9-character id behind
# one is the id itself.
_PREFIXES = ("call_", "toolu_")


def call_id_form(template_source: str) -> CallIdForm:
    """The form of ids a chat template takes."""
    return CallIdForm.MISTRAL if _REQUIRES_NINE.search(template_source) else CallIdForm.OPENAI


def new_call_id(form: CallIdForm) -> str:
    if form is CallIdForm.MISTRAL:
        return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))
    return f"call_{secrets.token_hex(12)}"


def in_form(call_id: str, form: CallIdForm) -> str:
    """`call_id` in `form`: itself when it has the form already, else an id derived from it
    (the same id always gives the same one, so a call and its result keep matching)."""
    if form is not CallIdForm.MISTRAL or _MISTRAL_ID.fullmatch(call_id):
        return call_id
    for prefix in _PREFIXES:
        if call_id.startswith(prefix) and _MISTRAL_ID.fullmatch(call_id[len(prefix) :]):
            return call_id[len(prefix) :]
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).digest()
    return "".join(_ALPHANUMERIC[b % len(_ALPHANUMERIC)] for b in digest[:9])


def turns_in_form(turns: list[dict], form: CallIdForm) -> list[dict]:
    """Copies of chat turns whose assistant calls and tool results carry ids in `form`. A call
    without an id gets a new one, and a tool result without `tool_call_id` the id of the
    earliest call not yet answered (Ollama's histories name neither)."""
    if form is CallIdForm.OPENAI:
        return turns
    unanswered: deque[str] = deque()
    out = []
    for turn in turns:
        calls = turn.get("tool_calls")
        if turn.get("role") == "assistant" and isinstance(calls, list) and calls:
            fixed = []
            for call in calls:
                if isinstance(call, dict):
                    given = call.get("id")
                    call = {
                        **call,
                        "id": in_form(given, form) if isinstance(given, str) and given else new_call_id(form),
                    }
                    unanswered.append(call["id"])
                fixed.append(call)
            turn = {**turn, "tool_calls": fixed}
        elif turn.get("role") == "tool":
            given = turn.get("tool_call_id")
            if isinstance(given, str) and given:
                answered = in_form(given, form)
                if answered in unanswered:
                    unanswered.remove(answered)
            else:
                answered = unanswered.popleft() if unanswered else new_call_id(form)
            turn = {**turn, "tool_call_id": answered}
        out.append(turn)
    return out
