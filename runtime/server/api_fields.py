"""Fields that several APIs share, declared once (runtime/server/fields.py says how a field is
read and documented), and the shapes of the structured ones. Each shape is what the code that
checks the field accepts (runtime/text/messages.py, runtime/server/structured.py…), built from that
code's own tables where it has them; a shape may be looser than its check, never stricter."""

from rfc.runtime.text.messages import ROLES, TEXT_PARTS
from rfc.runtime.server.fields import Field, Kind
from rfc.runtime.server.structured import MAX_TOOLS, TOOL_NAME_PATTERN
from rfc.runtime.engine.speculative import MAX_DRAFT_TOKENS, SpecRequest, SpecType

# stop strings one request may send, in every API (OpenAI's and /infill's stop, Ollama's options.stop,
# Anthropic's stop_sequences): each is matched against every piece of text generated
MAX_STOP_STRINGS = 16

STRING = {"type": "string"}
OBJECT = {"type": "object"}
TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}}

# -- chat messages (runtime/text/messages.py) ----------------------------------------------------
_PART = {
    "anyOf": [
        STRING,
        *(
            {"type": "object", "required": ["type", key], "properties": {"type": {"const": kind}, key: STRING}}
            for kind, key in TEXT_PARTS.items()
        ),
    ]
}
CONTENT = {
    "anyOf": [STRING, {"type": "array", "items": _PART}, {"type": "null"}],
    "description": "a string or a list of text parts (null on assistant turns)",
}
MESSAGE = {"type": "object", "required": ["role"], "properties": {"role": {"enum": list(ROLES)}, "content": CONTENT}}
CHAT_MESSAGES = {"type": "array", "minItems": 1, "items": MESSAGE}

# -- tools (runtime/server/structured.py) -----------------------------------------------------
_SCHEMA_OBJECT = {"type": ["object", "null"], "description": "a JSON schema"}


def function_shape(parameters_key: str = "parameters") -> dict:
    return {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": TOOL_NAME_PATTERN},
            "description": STRING,
            parameters_key: _SCHEMA_OBJECT,
        },
    }


OPENAI_TOOLS = {
    "type": "array",
    "maxItems": MAX_TOOLS,
    "items": {
        "type": "object",
        "required": ["function"],
        "properties": {"type": {"const": "function"}, "function": function_shape()},
    },
}
_NAMED = {"type": "object", "required": ["name"], "properties": {"name": STRING}}
OPENAI_TOOL_CHOICE = {
    "anyOf": [
        {"enum": ["auto", "none", "required"]},
        {"type": "object", "required": ["function"], "properties": {"type": {"const": "function"}, "function": _NAMED}},
        _NAMED,  # the legacy function_call's {"name": ...}
    ]
}
JSON_SCHEMA = {"type": ["object", "boolean"], "description": "a JSON schema"}
STOP = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "maxItems": MAX_STOP_STRINGS, "items": {"type": "string", "minLength": 1}},
    ]
}

# -- fields -----------------------------------------------------------------------------------
MODEL = Field("model", Kind.STRING, description="the id of a served model; absent: the first one")
STREAM = Field("stream", Kind.BOOLEAN, False, description="answer as a stream of events")
TEMPERATURE = Field("temperature", Kind.NUMBER, 1.0, 0.0, 2.0)
TOP_P = Field("top_p", Kind.NUMBER, 1.0, description="nucleus sampling, in (0, 1]")
TOP_K = Field("top_k", Kind.INTEGER, 0, description="0: off")
MIN_P = Field("min_p", Kind.NUMBER, 0.0, description="in [0, 1]")
REPETITION_PENALTY = Field("repetition_penalty", Kind.NUMBER, 1.0, description="in [0.001, 1000]")
PRESENCE_PENALTY = Field("presence_penalty", Kind.NUMBER, 0.0, -2.0, 2.0)
FREQUENCY_PENALTY = Field("frequency_penalty", Kind.NUMBER, 0.0, -2.0, 2.0)
SEED = Field("seed", Kind.INTEGER, description="the same seed and request give the same text")
MAX_TOKENS = Field("max_tokens", Kind.INTEGER, minimum=1, description="absent: the rest of the context")
CHAT_MESSAGES_FIELD = Field("messages", Kind.JSON, required=True, schema=CHAT_MESSAGES)
CHAT_TEMPLATE_KWARGS = Field(
    "chat_template_kwargs", Kind.JSON, {}, schema=OBJECT, description="variables for the chat template"
)
# vLLM's: a chat that ends in an assistant message the model goes on with (prefill), or none opened
ADD_GENERATION_PROMPT = Field("add_generation_prompt", Kind.BOOLEAN, True, description="open the assistant's turn")
CONTINUE_FINAL_MESSAGE = Field(
    "continue_final_message", Kind.BOOLEAN, False, description="go on with the final assistant message's text"
)
OPENAI_TOOLS_FIELD = Field("tools", Kind.JSON, schema=OPENAI_TOOLS)
TOOL_CHOICE = Field("tool_choice", Kind.JSON, schema=OPENAI_TOOL_CHOICE)
LOGPROBS = Field("logprobs", Kind.BOOLEAN, False)
# speculative decoding, per request (llama-server's /completion names)
SPECULATIVE_TYPE = Field(
    "speculative.type",
    Kind.STRING,
    enum=tuple(SpecType),
    description="speculative decoding for this request: none (off), ngram, draft (a server with "
    "--model-draft); absent: the server's --spec-type",
)
SPECULATIVE_N_MAX = Field(
    "speculative.n_max",
    Kind.INTEGER,
    minimum=0,
    maximum=MAX_DRAFT_TOKENS,
    description="draft tokens per step at most, up to the server's --spec-draft-n-max",
)


def speculative_request(f) -> SpecRequest | None:
    """A request's speculative decoding fields (SPECULATIVE_TYPE, SPECULATIVE_N_MAX); None: neither sent."""
    kind, n_max = f.string("speculative.type"), f.integer("speculative.n_max")
    if kind is None and n_max is None:
        return None
    return SpecRequest(SpecType(kind) if kind is not None else None, n_max)


def refused(name: str, why: str) -> Field:
    """A field this server does not support: a 400 when it is set (to anything the check finds)."""
    return Field(name, Kind.JSON, schema={}, description=f"not supported: {why}")
