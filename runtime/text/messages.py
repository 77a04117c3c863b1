"""Chat messages as clients send them -> the plain `{"role", "content": str}` turns that chat
templates are written for.

Clients send content as a list of typed parts (the OpenAI SDK, LangChain, litellm, the AI
SDK, Anthropic's and the Responses API's content blocks). Most templates index
`message['content']` as a string: handed a list, half of them fail and others print the
Python repr of the list into the prompt. So text parts are joined here, once, for every API
(with "\\n", as llama.cpp's server and vLLM join them); any other part is refused, since no
bundle takes images, audio or files yet.
"""

from collections.abc import Sequence

# The roles a chat may hold. `developer` is OpenAI's newer name for `system`.
ROLES = ("system", "developer", "user", "assistant", "tool")
# Part types that carry plain text: chat completions, Anthropic ("text"), the Responses API.
TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}
# Roles whose content may be null or absent (an assistant turn that only called tools).
NULLABLE_CONTENT = frozenset({"assistant"})


class MessageError(ValueError):
    """A message the server cannot turn into a prompt; `field` names where (messages[2].content[0])."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def normalize_messages(messages: object, template_source: str = "", field: str = "messages") -> list[dict]:
    """Validated copies of `messages` with string content; `developer` becomes `system` unless
    the template handles `developer` itself."""
    if not isinstance(messages, list) or not messages:
        raise MessageError(field, f"'{field}' must be a non-empty list of messages")
    keep_developer = template_knows_role(template_source, "developer")
    return [_message(m, f"{field}[{i}]", keep_developer) for i, m in enumerate(messages)]


def template_knows_role(source: str, role: str) -> bool:
    """Whether a template mentions `role` as a quoted string (it compares roles to literals);
    one that does not would drop such a turn without a word."""
    return f"'{role}'" in source or f'"{role}"' in source


def flatten_content(content: object, field: str, nullable: bool = False) -> str:
    """A message's content as one string: a string as is, text parts joined with newlines."""
    if isinstance(content, str):
        return content
    if content is None:
        if nullable:
            return ""
        raise MessageError(field, f"'{field}' is required (a string or a list of text parts)")
    if not isinstance(content, list):
        raise MessageError(field, f"'{field}' must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(content):
        where = f"{field}[{j}]"
        if isinstance(part, str):  # some clients send bare strings in the list
            texts.append(part)
            continue
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise MessageError(where, f"'{where}' must be an object with a string 'type'")
        key = TEXT_PARTS.get(part["type"])
        if key is None:
            raise MessageError(
                where,
                f"content parts of type '{part['type']}' are not supported: this model takes text only "
                f"(use parts of type 'text')",
            )
        text = part.get(key)
        if not isinstance(text, str):
            raise MessageError(f"{where}.{key}", f"'{where}.{key}' must be a string")
        texts.append(text)
    return "\n".join(texts)


def _message(message: object, where: str, keep_developer: bool) -> dict:
    if not isinstance(message, dict):
        raise MessageError(where, f"'{where}' must be an object with 'role' and 'content'")
    role = message.get("role")
    if not isinstance(role, str):
        raise MessageError(f"{where}.role", f"'{where}.role' must be a string")
    if role not in ROLES:
        raise MessageError(f"{where}.role", f"'{where}.role' is '{role}', expected one of {', '.join(ROLES)}")
    out = dict(message)  # other keys (name, tool_call_id) stay for templates that use them
    out["content"] = flatten_content(message.get("content"), f"{where}.content", role in NULLABLE_CONTENT)
    if role == "developer" and not keep_developer:
        out["role"] = "system"
    return out


def system_and_turns(system: str | None, turns: Sequence[dict]) -> list[dict]:
    """A system message (when given) followed by `turns`."""
    return ([{"role": "system", "content": system}] if system else []) + list(turns)
