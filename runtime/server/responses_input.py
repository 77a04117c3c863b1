"""The Responses API's request, in the chat machinery's words: input items (messages,
`function_call`, `function_call_output`, `item_reference`s to stored items) -> chat turns,
`tools` (flat function tools) and `tool_choice` -> the OutputPlan chat completions use,
`text.format` (`text`, `json_object`, `json_schema`) -> its grammar."""

import json
import secrets

from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.served_models import ServedModel
from rfc.runtime.server.response_store import ResponseStore
from rfc.runtime.server.structured import OutputPlan, grammar, tool_plan

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
ITEM_TYPES = ("message", "function_call", "function_call_output", "item_reference", "reasoning")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def input_items(raw: object, store: ResponseStore, owner: str | None) -> list[dict]:
    """The input as items with ids (a string is one user message); item references resolved
    to the owner's stored items."""
    if isinstance(raw, str):
        return [
            {"id": new_id("msg"), "type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}
        ]
    if not isinstance(raw, list) or not raw:
        raise bad_request("'input' must be a string or a non-empty list of items", "input")
    out = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"'{where}' must be an object", where)
        kind = item.get("type", "message")
        if kind not in ITEM_TYPES:
            raise bad_request(f"'{where}': items of type '{kind}' are not supported ({', '.join(ITEM_TYPES)})", where)
        if kind == "item_reference":
            found = store.item(item.get("id"), owner) if isinstance(item.get("id"), str) else None
            if found is None:
                raise bad_request(f"'{where}': no stored item '{item.get('id')}'", where)
            item, kind = found, found["type"]
        if kind == "message" and item.get("role") not in MESSAGE_ROLES:
            raise bad_request(f"'{where}.role' must be one of {', '.join(MESSAGE_ROLES)}", f"{where}.role")
        if kind in ("function_call", "function_call_output") and not isinstance(item.get("call_id"), str):
            raise bad_request(f"'{where}.call_id' must be a string", f"{where}.call_id")
        if kind == "function_call" and not (
            isinstance(item.get("name"), str) and isinstance(item.get("arguments"), str)
        ):
            raise bad_request(f"'{where}' must have a string 'name' and 'arguments'", where)
        out.append(
            {
                **item,
                "type": kind,
                "id": item.get("id") or new_id({"message": "msg", "reasoning": "rs"}.get(kind, "fc")),
            }
        )
    return out


def chat_turns(items: list[dict]) -> list[dict]:
    """Items -> chat turns: a function call joins the assistant turn before it (or opens one),
    its output is a `tool` turn; reasoning items are not shown to the template."""
    turns: list[dict] = []
    for i, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            turns.append({"role": item["role"], "content": item.get("content")})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = turns[-1] if turns else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": None}
                turns.append(last)
            last["tool_calls"] = [*last.get("tool_calls", []), call]
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, (str, list)):
                output = json.dumps(output, ensure_ascii=False)
            turns.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    return turns


def output_plan(served: ServedModel, raw_tools: object, raw_choice: object, parallel: bool, text: object) -> OutputPlan:
    """`tools`, `tool_choice`, `parallel_tool_calls` and `text.format`."""
    tools = None
    if raw_tools is not None:
        if not isinstance(raw_tools, list):
            raise bad_request("'tools' must be a list of function tools", "tools")
        tools = []
        for i, tool in enumerate(raw_tools):
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                raise bad_request(f"'tools[{i}]': only function tools are supported", f"tools[{i}]")
            tools.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    plan = tool_plan(tools or None, raw_choice, parallel)
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type", "text") if isinstance(fmt, dict) else None
    if text is not None and not isinstance(text, dict) or fmt is not None and not isinstance(fmt, dict):
        raise bad_request("'text.format' must be an object with a 'type'", "text.format")
    if kind == "json_object":
        plan.grammar_field = "text.format"
        plan.grammar = grammar(served, "text.format", lambda g: g.any_json_object("text.format"))
    elif kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise bad_request("'text.format.schema' must be a JSON schema object", "text.format.schema")
        plan.grammar_field = "text.format"
        plan.grammar = grammar(served, "text.format", lambda g: g.json_schema(schema, "text.format.schema"))
    elif fmt is not None and kind != "text":
        raise bad_request(
            f"text.format type {kind!r} is not supported (text, json_object, json_schema)", "text.format.type"
        )
    return plan
