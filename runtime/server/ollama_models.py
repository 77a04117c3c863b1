"""The bodies of Ollama's /api/generate, /api/chat, /api/show, /api/embed and /api/embeddings
(runtime/server/ollama_api.py and ollama_format.py read them)."""

from rfc.runtime.server.api_fields import MESSAGE, OPENAI_TOOLS_FIELD, TOKEN_IDS, TOOL_CHOICE, refused
from rfc.runtime.server.embeddings import INPUTS
from rfc.runtime.server.fields import Field, Kind, RequestModel
from rfc.runtime.server.ollama_options import OPTIONS

THINK_LEVELS = ("low", "medium", "high")
# Top-level sampling fields that ollama-ai-provider-v2 (the AI SDK's Ollama provider) sends
# beside `options`, and the option each stands for; `options` wins.
TOP_LEVEL_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "max_output_tokens": "num_predict"}

_NAMES = (
    Field("model", Kind.STRING, description="the model's id (`:latest` is accepted); required"),
    Field("name", Kind.STRING, description="deprecated: model"),
)
KEEP_ALIVE = Field(
    "keep_alive",
    Kind.JSON,
    schema={"anyOf": [{"type": "number"}, {"type": "string"}]},
    description='how long the model stays loaded after this request: a duration ("5m", "1h"), seconds; '
    "negative: forever; 0: unloaded once idle; absent: the server's --keep-alive",
)
_GENERATION = (
    *_NAMES,
    KEEP_ALIVE,
    Field("stream", Kind.BOOLEAN, True, description="NDJSON, one object per piece of text (Ollama's default)"),
    Field("options", Kind.JSON, schema=OPTIONS.json_schema()),
    *(
        Field(
            name,
            Kind.JSON,
            schema=OPTIONS.field(option).json_schema(),
            description=f"options.{option}, unless options sets it",
        )
        for name, option in TOP_LEVEL_OPTIONS.items()
    ),
    Field(
        "format",
        Kind.JSON,
        schema={"anyOf": [{"enum": ["json", ""]}, {"type": "object"}]},
        description='"json", or a JSON schema the output follows',
    ),
    Field("think", Kind.JSON, schema={"anyOf": [{"type": "boolean"}, {"enum": list(THINK_LEVELS)}]}),
    refused("images", "this model takes text only"),
    Field(
        "suffix",
        Kind.STRING,
        description="/api/generate: fill in the middle (the model's FIM tokens); /api/chat: ignored",
    ),
    Field("template", Kind.STRING, description="not supported: compile the bundle with --chat-template"),
    Field("logprobs", Kind.BOOLEAN, False, description="not supported here"),
)

GENERATE = RequestModel(
    "OllamaGenerateRequest",
    (
        *_GENERATION,
        Field("prompt", Kind.STRING, "", description="empty: the model is loaded (done_reason load)"),
        Field("system", Kind.STRING),
        Field("raw", Kind.BOOLEAN, False, description="send the prompt as it is, without the chat template"),
        Field("context", Kind.JSON, [], schema=TOKEN_IDS, description="the previous reply's context"),
        refused("tools", "tools are served on /api/chat"),
    ),
)
CHAT = RequestModel(
    "OllamaChatRequest",
    (
        *_GENERATION,
        Field(
            "messages",
            Kind.JSON,
            [],
            schema={"type": "array", "items": MESSAGE},
            description="empty: the model is loaded",
        ),
        OPENAI_TOOLS_FIELD,
        TOOL_CHOICE.but(
            description="not Ollama's: ollama-ai-provider-v2 sends it (auto, none, required, "
            "{'type': 'function', 'name'}), as OpenAI's tool_choice"
        ),
    ),
)
SHOW = RequestModel("OllamaShowRequest", _NAMES)
_EMBED = (
    *_NAMES,
    KEEP_ALIVE,
    Field("truncate", Kind.BOOLEAN, True, description="cut inputs to the context"),
    Field("dimensions", Kind.INTEGER),
)
EMBED = RequestModel(
    "OllamaEmbedRequest",
    (
        *_EMBED,
        Field(
            "input",
            Kind.JSON,
            required=True,
            description="[]: no embeddings",
            schema={"anyOf": [INPUTS, {"type": "array", "maxItems": 0}]},
        ),
    ),
)
EMBEDDINGS = RequestModel(
    "OllamaEmbeddingsRequest", (*_EMBED, Field("prompt", Kind.JSON, required=True, schema=INPUTS))
)
