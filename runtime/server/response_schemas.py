"""The success shapes of every route, for the OpenAPI document: the fields each reply always
has, with their types (replies may carry more). Streams are declared by media type: their
NDJSON lines are documented in docs/serve.md. The fuzz test (tests/fuzz/test_openapi_fuzz.py)
checks every reply against these, and each event of the SSE streams."""

from rfc.runtime.server.streaming import NDJSON_CONTENT_TYPE, SSE_CONTENT_TYPE

JSON = "application/json"
SSE = SSE_CONTENT_TYPE
NDJSON = NDJSON_CONTENT_TYPE
TEXT = "text/plain"

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object"}
ANY_TEXT = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_OBJECT = {"type": ["object", "null"]}


def obj(required: dict, optional: dict | None = None) -> dict:
    """An object that always has `required` (and may have `optional`, and more)."""
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


def events(payload: dict, done: bool = False) -> dict:
    """One server-sent event whose data is a JSON `payload` (or OpenAI's closing `[DONE]`)."""
    data = {"type": "string", "contentMediaType": JSON, "contentSchema": payload}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": STRING, "data": {"anyOf": [{"const": "[DONE]"}, data]} if done else data},
    }


def streamed(whole: dict, event: dict | None = None, stream_media: str = SSE) -> dict[str, dict]:
    """A reply that is one JSON object, or a stream when the request asks for one: SSE events
    (`event` their shape), or NDJSON lines."""
    return {JSON: whole, stream_media: event if event is not None else ANY_TEXT}


# -- native ----------------------------------------------------------------------------------
REQUEST_STATE = obj(
    {
        "request_id": INTEGER,
        "text": STRING,
        "tokens": array(INTEGER),
        "finished": BOOLEAN,
        "finish_reason": NULLABLE_STRING,
    }
)
TOKEN_EVENT = events(
    obj(
        {
            "request_id": INTEGER,
            "token": {"type": ["integer", "null"]},
            "text": STRING,
            "finished": BOOLEAN,
            "finish_reason": NULLABLE_STRING,
        }
    )
)
MODEL_CARD = obj(
    {"id": STRING, "object": {"const": "model"}, "created": INTEGER, "owned_by": STRING},
    {"context_length": INTEGER, "capabilities": OBJECT, "details": OBJECT, "status": STRING, "error": STRING},
)
_CACHE_STATS = obj({"hits": INTEGER, "misses": INTEGER, "bytes": INTEGER})
MODELS = obj(
    {
        "models": array(
            obj(
                {
                    "path": STRING,
                    "bundle": STRING,
                    "size": INTEGER,
                    "metadata": OBJECT,
                    "id": STRING,
                    "tokenizer_cache": _CACHE_STATS,
                }
            )
        ),
        "tokenizer_cache": _CACHE_STATS,
    }
)
HEALTH = obj(
    {
        "status": {"enum": ["healthy", "unhealthy"]},
        "service": STRING,
        "version": STRING,
        "checks": obj(
            {"engine": obj({"running": BOOLEAN, "model_loaded": BOOLEAN}), "gpu": obj({"available": BOOLEAN})}
        ),
    }
)
READY = obj({"ready": {"const": True}, "service": STRING})
TRACES = obj({"resource_spans": array(obj({"resource": OBJECT, "scope_spans": array(obj({"spans": array(OBJECT)}))}))})
TOKENIZE = {
    "anyOf": [
        # llama.cpp's
        obj(
            {
                "tokens": {
                    "anyOf": [array(INTEGER), array(obj({"id": INTEGER, "piece": {"anyOf": [STRING, array(INTEGER)]}}))]
                }
            }
        ),
        # vLLM's, for `prompt` or `messages`
        obj(
            {
                "count": INTEGER,
                "max_model_len": INTEGER,
                "tokens": array(INTEGER),
                "token_strs": {"anyOf": [array(STRING), {"type": "null"}]},
            }
        ),
    ]
}
DETOKENIZE = obj({"content": STRING, "prompt": STRING})
APPLY_TEMPLATE = obj({"prompt": STRING})

# -- OpenAI ----------------------------------------------------------------------------------
USAGE = obj({"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER})
MODEL_LIST = obj({"object": {"const": "list"}, "data": array(MODEL_CARD)})
_HEAD = {"id": STRING, "created": INTEGER, "model": STRING, "system_fingerprint": STRING}
_FINISH = {"enum": ["stop", "length", "abort", "error", "tool_calls", "function_call"]}
COMPLETION = obj(
    {
        **_HEAD,
        "object": {"const": "text_completion"},
        "usage": USAGE,
        "choices": array(
            obj({"index": INTEGER, "text": STRING, "logprobs": NULLABLE_OBJECT, "finish_reason": _FINISH})
        ),
    }
)
_CHUNK_HEAD = {
    **_HEAD,
    "choices": array(
        obj({"index": INTEGER, "logprobs": NULLABLE_OBJECT, "finish_reason": {"anyOf": [_FINISH, {"type": "null"}]}})
    ),
}
_STREAM_ERROR = obj({"error": obj({"message": STRING, "type": STRING})})  # a generation that failed mid-stream
COMPLETION_EVENT = events(
    {"anyOf": [obj({**_CHUNK_HEAD, "object": {"const": "text_completion"}}), _STREAM_ERROR]}, done=True
)
CHAT_EVENT = events(
    {"anyOf": [obj({**_CHUNK_HEAD, "object": {"const": "chat.completion.chunk"}}), _STREAM_ERROR]}, done=True
)
_TOOL_CALL = obj({"id": STRING, "type": {"const": "function"}, "function": obj({"name": STRING, "arguments": STRING})})
CHAT_COMPLETION = obj(
    {
        **_HEAD,
        "object": {"const": "chat.completion"},
        "usage": USAGE,
        "choices": array(
            obj(
                {
                    "index": INTEGER,
                    "logprobs": NULLABLE_OBJECT,
                    "finish_reason": _FINISH,
                    "message": obj(
                        {"role": {"const": "assistant"}, "content": NULLABLE_STRING},
                        {
                            "reasoning_content": STRING,
                            "reasoning": STRING,
                            "tool_calls": array(_TOOL_CALL),
                            "function_call": obj({"name": STRING, "arguments": STRING}),
                        },
                    ),
                }
            )
        ),
    }
)
_OUTPUT_ITEM = {
    "anyOf": [
        obj({"id": STRING, "type": {"const": "message"}, "role": {"const": "assistant"}, "content": array(OBJECT)}),
        obj({"id": STRING, "type": {"const": "function_call"}, "call_id": STRING, "name": STRING, "arguments": STRING}),
        obj({"id": STRING, "type": {"const": "reasoning"}, "summary": array(OBJECT)}),
    ]
}
RESPONSE = obj(
    {
        "id": STRING,
        "object": {"const": "response"},
        "created_at": INTEGER,
        "model": STRING,
        "status": {"enum": ["completed", "incomplete", "failed", "cancelled"]},
        "error": NULLABLE_OBJECT,
        "incomplete_details": NULLABLE_OBJECT,
        "output": array(_OUTPUT_ITEM),
        "usage": obj({"input_tokens": INTEGER, "output_tokens": INTEGER, "total_tokens": INTEGER}),
    }
)
RESPONSE_EVENT = events(obj({"type": STRING, "sequence_number": INTEGER}))
# llama-server's /completion and /infill
_LLAMA_TOKEN = {"id": INTEGER, "token": STRING, "bytes": array(INTEGER), "logprob": NUMBER}
_LLAMA_PROBABILITIES = array(obj({**_LLAMA_TOKEN, "top_logprobs": array(obj(_LLAMA_TOKEN))}))
_LLAMA_TIMINGS = obj(
    {
        name: NUMBER
        for name in (
            "cache_n",
            "prompt_n",
            "prompt_ms",
            "prompt_per_token_ms",
            "prompt_per_second",
            "predicted_n",
            "predicted_ms",
            "predicted_per_token_ms",
            "predicted_per_second",
        )
    }
)
LLAMA_COMPLETION_REPLY = obj(
    {
        "content": STRING,
        "tokens": array(INTEGER),
        "stop": {"const": True},
        "model": STRING,
        "tokens_predicted": INTEGER,
        "tokens_evaluated": INTEGER,
        "generation_settings": OBJECT,
        "prompt": STRING,
        "stop_type": {"enum": ["eos", "word", "limit", "none"]},
        "stopping_word": STRING,
        "tokens_cached": INTEGER,
        "timings": _LLAMA_TIMINGS,
    },
    {"completion_probabilities": _LLAMA_PROBABILITIES},
)
LLAMA_PROPS = obj(
    {
        "default_generation_settings": obj({"n_ctx": INTEGER, "model": STRING, "params": OBJECT}),
        "total_slots": INTEGER,
        "model_path": STRING,
        "chat_template": STRING,
        "modalities": OBJECT,
        "build_info": STRING,
    }
)
LLAMA_COMPLETION_EVENT = events(
    obj(
        {"stop": BOOLEAN},
        {"content": STRING, "tokens": array(INTEGER), "completion_probabilities": _LLAMA_PROBABILITIES},
    )
)
RESPONSE_DELETED = obj({"id": STRING, "object": {"const": "response"}, "deleted": {"const": True}})
RESPONSE_ITEMS = obj({"object": {"const": "list"}, "data": array(OBJECT), "has_more": BOOLEAN})
_EMBEDDING = obj({"object": {"const": "embedding"}, "index": INTEGER, "embedding": {"anyOf": [array(NUMBER), STRING]}})
EMBEDDINGS = obj(
    {
        "object": {"const": "list"},
        "model": STRING,
        "data": array(_EMBEDDING),
        "usage": obj({"prompt_tokens": INTEGER, "total_tokens": INTEGER}),
    }
)
# /rerank: Jina's object, or (with TEI's `texts`) TEI's list
RERANK = {
    "anyOf": [
        obj(
            {
                "model": STRING,
                "object": {"const": "list"},
                "usage": obj({"prompt_tokens": INTEGER, "total_tokens": INTEGER}),
                "results": array(
                    obj({"index": INTEGER, "relevance_score": NUMBER}, {"document": obj({"text": STRING})})
                ),
            }
        ),
        array(obj({"index": INTEGER, "score": NUMBER}, {"text": STRING})),
    ]
}
# llama-server's /embedding and /embeddings: one entry per input, its pooled vector as one row
LLAMA_EMBEDDINGS = array(obj({"index": INTEGER, "embedding": array(array(NUMBER))}))
_BACKEND = obj(
    {
        "available": BOOLEAN,
        "version": NULLABLE_STRING,
        "status": {"enum": ["healthy", "idle", "unavailable"]},
        "models": array(STRING),
        "targets": array(STRING),
    },
    {"reason": STRING},
)
INTEGRATIONS = obj({"integrations": array(STRING), "available": array(STRING)})
INTEGRATIONS_HEALTH = {"type": "object", "additionalProperties": _BACKEND}

# -- Anthropic -------------------------------------------------------------------------------
_BLOCK = {
    "anyOf": [
        obj({"type": {"const": "text"}, "text": STRING}),
        obj({"type": {"const": "thinking"}, "thinking": STRING, "signature": STRING}),
        obj({"type": {"const": "tool_use"}, "id": STRING, "name": STRING, "input": OBJECT}),
    ]
}
MESSAGE = obj(
    {
        "id": STRING,
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": STRING,
        "content": array(_BLOCK),
        "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", None]},
        "stop_sequence": NULLABLE_STRING,
        "usage": obj({"input_tokens": INTEGER, "output_tokens": INTEGER}),
    }
)
MESSAGE_EVENT = events(
    obj(
        {
            "type": {
                "enum": [
                    "message_start",
                    "ping",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop",
                    "error",
                ]
            }
        }
    )
)
TOKEN_COUNT = obj({"input_tokens": INTEGER})

# -- Ollama ----------------------------------------------------------------------------------
_OLLAMA_MODEL = {
    "name": STRING,
    "model": STRING,
    "modified_at": STRING,
    "size": INTEGER,
    "digest": STRING,
    "details": OBJECT,
}
OLLAMA_VERSION = obj({"version": STRING})
OLLAMA_TAGS = obj({"models": array(obj(_OLLAMA_MODEL))})
OLLAMA_PS = obj(
    {"models": array(obj({**_OLLAMA_MODEL, "expires_at": STRING, "size_vram": INTEGER, "context_length": INTEGER}))}
)
OLLAMA_SHOW = obj(
    {
        "modelfile": STRING,
        "parameters": STRING,
        "template": STRING,
        "details": OBJECT,
        "model_info": OBJECT,
        "capabilities": array(STRING),
        "modified_at": STRING,
    }
)
_DONE = {
    "model": STRING,
    "created_at": STRING,
    "done": {"const": True},
    "done_reason": {"enum": ["stop", "length", "cancelled", "error", "load", "unload"]},
}
_COUNTS = {"total_duration": INTEGER, "load_duration": INTEGER, "prompt_eval_count": INTEGER, "eval_count": INTEGER}
OLLAMA_GENERATE = obj({**_DONE, "response": STRING}, {**_COUNTS, "thinking": STRING, "context": array(INTEGER)})
_OLLAMA_CALL = obj({"function": obj({"name": STRING, "arguments": OBJECT})})
OLLAMA_CHAT = obj(
    {
        **_DONE,
        "message": obj(
            {"role": {"const": "assistant"}, "content": STRING}, {"thinking": STRING, "tool_calls": array(_OLLAMA_CALL)}
        ),
    },
    _COUNTS,
)
OLLAMA_EMBED = obj({"model": STRING, "embeddings": array(array(NUMBER))}, {"prompt_eval_count": INTEGER})
OLLAMA_EMBEDDING = obj({"embedding": array(NUMBER)})
OLLAMA_STATUS = obj({"status": STRING}, {"digest": STRING, "total": INTEGER, "completed": INTEGER})

# -- model management (runtime/server/model_admin.py) ----------------------------------------
ADMIN_SWAP = obj(
    {"model": STRING, "version": STRING, "previous": NULLABLE_STRING, "loaded": BOOLEAN, "load_seconds": NUMBER}
)
ADMIN_MODELS = obj(
    {
        "models": array(obj({"id": STRING, "state": {"enum": ["loaded", "available", "loading", "failed"]}})),
        "cached": array(obj({"digest": STRING, "name": STRING, "bytes": INTEGER, "served": BOOLEAN})),
        "aliases": OBJECT,
        "retiring": array(obj({"id": STRING, "version": STRING, "memory_bytes": INTEGER})),
    }
)
