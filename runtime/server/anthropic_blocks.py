"""Anthropic's content blocks <-> the chat machinery: `tools` (input_schema), `tool_choice`
(auto, any, tool, none), `thinking`; `tool_use` / `tool_result` / `thinking` blocks in the
history become assistant tool calls, `tool` turns and `reasoning_content`; the output becomes
`thinking`, `text` and `tool_use` blocks."""

from __future__ import annotations

import json

from rfc.runtime.text.assistant_output import AssistantMessage
from rfc.runtime.text.call_ids import CallIdForm, in_form
from rfc.runtime.text.messages import MessageError, flatten_content
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.structured import MAX_TOOLS, OutputPlan, ToolChoice, function_spec, named_choice

ROLES = ("user", "assistant")
_CONTEXT_BLOCKS = {"text", "tool_use", "tool_result", "thinking", "redacted_thinking"}


def output_plan(f: RequestFields) -> OutputPlan:
    raw = f.raw("tools")
    tools = []
    if raw is not None:
        if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
            raise bad_request(f"'tools' must be a list of at most {MAX_TOOLS} tools", "tools")
        for i, tool in enumerate(raw):
            if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
                raise bad_request(
                    f"tools[{i}]: only client tools (name, description, input_schema) are supported; "
                    "server tools such as web search are not",
                    f"tools[{i}]",
                )
            tools.append({"type": "function", "function": function_spec(tool, f"tools[{i}]", "input_schema")})
    plan = OutputPlan(tools=tools)
    choice = f.raw("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise bad_request("'tool_choice' must be {'type': 'auto' | 'any' | 'tool' | 'none'}", "tool_choice")
        kind = choice["type"]
        if kind in ("any", "tool") and not tools:
            raise bad_request("'tool_choice' needs 'tools'", "tool_choice")
        if kind == "tool":
            plan.choice = named_choice(choice.get("name"), tools, "tool_choice.name")
        else:
            plan.choice = ToolChoice({"auto": "auto", "any": "required", "none": "none"}[kind])
        plan.parallel = choice.get("disable_parallel_tool_use") is not True
    thinking = f.raw("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
            raise bad_request(
                "'thinking' must be {'type': 'enabled', 'budget_tokens': N} or {'type': 'disabled'}", "thinking"
            )
        plan.thinking = thinking["type"] != "disabled"
    return plan


def chat_messages(messages: object) -> list[dict]:
    """Anthropic's messages as chat turns (OpenAI-shaped tool calls and `tool` turns)."""
    if not isinstance(messages, list):
        raise bad_request("'messages' must be a list of messages", "messages")
    out: list[dict] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad_request(
                f"{where}.role must be 'user' or 'assistant' (the system prompt goes in 'system')", f"{where}.role"
            )
        content = m.get("content")
        if (
            isinstance(content, str)
            or not isinstance(content, list)
            or not any(
                isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result", "thinking", "redacted_thinking")
                for b in content
            )
        ):
            out.append(m)  # plain text turns go through the shared normalization as they are
            continue
        out += _blocks_to_turns(m["role"], content, where)
    return out


def _blocks_to_turns(role: str, blocks: list, where: str) -> list[dict]:
    texts, calls, results, thinking = [], [], [], []
    for j, b in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind not in _CONTEXT_BLOCKS:
            raise bad_request(
                f"'{at}': content blocks of type '{kind}' are not supported: this model takes text only", at
            )
        if kind == "text":
            texts.append(b)
        elif kind == "thinking" and role == "assistant":
            thinking.append(str(b.get("thinking", "")))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(b.get("name"), str) or not isinstance(b.get("input", {}), dict):
                raise bad_request(f"'{at}' must have a string 'name' and an object 'input'", at)
            calls.append(
                {
                    "id": str(b.get("id", "")),
                    "type": "function",
                    "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}), ensure_ascii=False)},
                }
            )
        elif kind == "tool_result" and role == "user":
            try:
                text = flatten_content(b.get("content", ""), f"{at}.content", nullable=True)
            except MessageError as e:
                raise bad_request(str(e), e.field) from None
            results.append({"role": "tool", "tool_call_id": str(b.get("tool_use_id", "")), "content": text})
        elif kind != "redacted_thinking":
            raise bad_request(f"'{at}': a '{kind}' block cannot appear in a {role} message", at)
    if role == "assistant":
        turn: dict = {"role": "assistant", "content": texts or None}
        if calls:
            turn["tool_calls"] = calls
        if thinking:
            turn["reasoning_content"] = "\n".join(thinking)
        return [turn]
    return results + ([{"role": "user", "content": texts}] if texts else [])


def content_blocks(msg: AssistantMessage, call_ids: CallIdForm = CallIdForm.OPENAI) -> list[dict]:
    blocks: list[dict] = []
    if msg.reasoning:
        blocks.append({"type": "thinking", "thinking": msg.reasoning, "signature": ""})
    if msg.content or not (msg.calls or msg.reasoning):
        blocks.append({"type": "text", "text": msg.content})
    blocks += [tool_use(c, call_ids) for c in msg.calls]
    return blocks


def tool_use(call, call_ids: CallIdForm = CallIdForm.OPENAI) -> dict:
    """A call as a tool_use block; its id comes back in a tool_result, mapped to the same id."""
    call_id = "toolu_" + in_form(call.id, call_ids).removeprefix("call_")
    return {"type": "tool_use", "id": call_id, "name": call.name, "input": call_input(call)}


def call_input(call) -> dict:
    """A call's arguments as the object Anthropic's and Ollama's calls carry: a call cut off by
    max_tokens (its arguments incomplete JSON) has none."""
    return json.loads(call.arguments) if call.complete else {}
