"""The bodies of OpenAI's /v1/completions and /v1/chat/completions, with the llama.cpp and
vLLM extras rfc takes (runtime/server/openai_params.py reads them)."""

from rfc.runtime.server.api_fields import (
    ADD_GENERATION_PROMPT,
    CHAT_MESSAGES_FIELD,
    CONTINUE_FINAL_MESSAGE,
    CHAT_TEMPLATE_KWARGS,
    FREQUENCY_PENALTY,
    JSON_SCHEMA,
    LOGPROBS,
    MAX_TOKENS,
    MIN_P,
    MODEL,
    OBJECT,
    OPENAI_TOOL_CHOICE,
    OPENAI_TOOLS_FIELD,
    PRESENCE_PENALTY,
    REPETITION_PENALTY,
    SEED,
    SPECULATIVE_N_MAX,
    SPECULATIVE_TYPE,
    STOP,
    STREAM,
    TEMPERATURE,
    TOKEN_IDS,
    TOOL_CHOICE,
    TOP_K,
    TOP_P,
    function_shape,
)
from rfc.runtime.server.fields import Field, Kind, RequestModel
from rfc.runtime.server.structured import MAX_TOOLS
from rfc.runtime.server.vllm_sampling import CHAT_ECHO
from rfc.runtime.server.vllm_sampling import FIELDS as VLLM_SAMPLING_FIELDS
from rfc.runtime.server.vllm_structured import FIELDS as VLLM_STRUCTURED_FIELDS

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
MAX_CHOICES = 64  # prompts x n in one request: each choice is a request of its own in the engine
MAX_LOGPROBS = 20  # chat's top_logprobs, as OpenAI's document bounds it
COMPLETION_MAX_LOGPROBS = 5  # completions' logprobs, likewise
REASONING_FORMATS = ("auto", "deepseek", "none")

RESPONSE_FORMAT = {
    "anyOf": [
        {"type": "object", "properties": {"type": {"enum": ["text", "json_object"]}}},
        {
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {"type": {"const": "json_schema"}, "json_schema": {"type": "object", "required": ["schema"]}},
        },
    ]
}
_PROMPT = {
    "anyOf": [
        {"type": "string"},
        TOKEN_IDS,
        # several
        {"type": "array", "minItems": 1, "maxItems": MAX_CHOICES, "items": {"anyOf": [{"type": "string"}, TOKEN_IDS]}},
    ]
}

_LOGIT_BIAS = {"type": "object", "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}}

# What both endpoints read: sampling, stops, streaming, structured output.
_SHARED = (
    MODEL,
    STREAM,
    Field(
        "stream_options",
        Kind.JSON,
        {},
        schema=OBJECT,
        description="include_usage: a last chunk with the usage; with vLLM's continuous_usage_stats, in every chunk",
    ),
    TEMPERATURE,
    TOP_P,
    TOP_K,
    MIN_P,
    REPETITION_PENALTY,
    PRESENCE_PENALTY,
    FREQUENCY_PENALTY,
    Field(
        "logit_bias",
        Kind.JSON,
        {},
        schema=_LOGIT_BIAS,
        description="token ids (as strings) -> a bias added to their logits",
    ),
    SEED.but(minimum=-(2**63), maximum=2**63 - 1),  # int64, as OpenAI's document bounds it
    Field("stop", Kind.JSON, [], schema=STOP),
    Field("ignore_eos", Kind.BOOLEAN, False),
    Field("n", Kind.INTEGER, 1, 1, MAX_CHOICES, description="choices per prompt; a seed s gives them s, s+1, ..."),
    Field("best_of", Kind.INTEGER, 1, description="only 1"),
    Field("response_format", Kind.JSON, schema=RESPONSE_FORMAT),
    Field("json_schema", Kind.JSON, schema=JSON_SCHEMA, description="llama.cpp's: constrain the output to this schema"),
    Field("grammar", Kind.STRING, description="llama.cpp's: constrain the output to this GBNF grammar"),
    *VLLM_STRUCTURED_FIELDS,
    *VLLM_SAMPLING_FIELDS,
    SPECULATIVE_TYPE,
    SPECULATIVE_N_MAX,
)

COMPLETION = RequestModel(
    "CompletionRequest",
    (
        *_SHARED,
        Field(
            "prompt",
            Kind.JSON,
            required=True,
            schema=_PROMPT,
            description="text or token ids, or a list of such prompts",
        ),
        MAX_TOKENS.but(default=COMPLETIONS_DEFAULT_MAX_TOKENS, description=""),
        Field(
            "logprobs",
            Kind.INTEGER,
            minimum=0,
            maximum=COMPLETION_MAX_LOGPROBS,
            description="the top N logprobs of each token",
        ),
        Field("echo", Kind.BOOLEAN, False, description="the prompt before the text (with logprobs: the prompt's too)"),
        Field(
            "suffix",
            Kind.STRING,
            description="fill in the middle: the text after the completion (the model's FIM tokens)",
        ),
    ),
    example={"prompt": "Once upon a time", "max_tokens": 16},
)

CHAT = RequestModel(
    "ChatCompletionRequest",
    (
        *_SHARED,
        CHAT_MESSAGES_FIELD,
        MAX_TOKENS,
        MAX_TOKENS.but(name="max_completion_tokens"),
        LOGPROBS,
        Field("top_logprobs", Kind.INTEGER, minimum=0, maximum=MAX_LOGPROBS),
        OPENAI_TOOLS_FIELD,
        TOOL_CHOICE,
        Field("parallel_tool_calls", Kind.BOOLEAN, True),
        Field(
            "functions",
            Kind.JSON,
            schema={"type": "array", "maxItems": MAX_TOOLS, "items": function_shape()},
            description="deprecated: tools",
        ),
        Field("function_call", Kind.JSON, schema=OPENAI_TOOL_CHOICE, description="deprecated: tool_choice"),
        CHAT_TEMPLATE_KWARGS,
        ADD_GENERATION_PROMPT,
        CONTINUE_FINAL_MESSAGE,
        CHAT_ECHO,
        Field(
            "reasoning_format",
            Kind.STRING,
            "auto",
            enum=REASONING_FORMATS,
            description="none: the reasoning stays in the content",
        ),
        Field(
            "modalities",
            Kind.JSON,
            schema={"type": "array", "items": {"type": "string"}},
            description='["text"] only: audio output is a 400',
        ),
        Field("audio", Kind.JSON, schema={}, description="not supported: the models answer in text"),
    ),
    example={"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 16},
)
