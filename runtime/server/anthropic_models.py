"""The bodies of Anthropic's /v1/messages and /v1/messages/count_tokens
(runtime/server/anthropic_api.py and anthropic_blocks.py read them)."""

from rfc.runtime.server.anthropic_blocks import ROLES
from rfc.runtime.server.api_fields import (
    CONTENT, MAX_STOP_STRINGS, MAX_TOKENS, MODEL, STREAM, TEMPERATURE, TOP_K, TOP_P, function_shape,
)  # fmt: skip
from rfc.runtime.server.fields import Field, Kind, RequestModel
from rfc.runtime.server.structured import MAX_TOOLS

_BLOCK = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
_CONTENT = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [{"type": "string"}, _BLOCK]}}, {"type": "null"}]
}
_MESSAGES = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["role"],
        "properties": {"role": {"enum": list(ROLES)}, "content": _CONTENT},
    },
}
_TOOL = function_shape("input_schema")
_TOOL["properties"]["type"] = {"const": "custom"}
_TOOLS = {"type": "array", "maxItems": MAX_TOOLS, "items": _TOOL}
_TOOL_CHOICE = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"enum": ["auto", "any", "tool", "none"]}},
}
_THINKING = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"enum": ["enabled", "disabled", "adaptive"]}},
}

_EXAMPLE = [{"role": "user", "content": "Tell me a story"}]
# What a prompt is made of: counted by count_tokens as /v1/messages would render it.
_PROMPT = (
    MODEL,
    Field("system", Kind.JSON, schema=CONTENT, description="the system prompt: a string or text blocks"),
    Field("messages", Kind.JSON, required=True, schema=_MESSAGES),
    Field("tools", Kind.JSON, schema=_TOOLS, description="client tools"),
    Field("tool_choice", Kind.JSON, schema=_TOOL_CHOICE),
    Field("thinking", Kind.JSON, schema=_THINKING, description="turns the template's thinking on or off"),
)

MESSAGES = RequestModel(
    "MessagesRequest",
    (
        *_PROMPT,
        MAX_TOKENS.but(required=True, description=""),
        STREAM,
        Field(
            "stop_sequences",
            Kind.JSON,
            [],
            schema={"type": "array", "maxItems": MAX_STOP_STRINGS, "items": {"type": "string", "minLength": 1}},
        ),
        TEMPERATURE.but(maximum=1.0),
        TOP_P,
        TOP_K.but(minimum=0),
    ),
    example={"max_tokens": 16, "messages": _EXAMPLE},
)
COUNT_TOKENS = RequestModel("CountTokensRequest", _PROMPT, example={"messages": _EXAMPLE})
