"""Routes beside generation: OpenAI's /v1/embeddings, llama.cpp's /tokenize, /detokenize,
/apply-template (same request and reply shapes), /infill (runtime/server/infill.py) and
/completion and /props (runtime/server/llama_completion.py), and
the /v1/integrations routes. Each takes
an optional `model` (the default model when absent).

/tokenize and /detokenize take vLLM's forms too: `prompt` (the tokens /v1/completions would
feed) or `messages` (the chat prompt /v1/chat/completions would feed), BOS as those routes add
it unless `add_special_tokens` is false, answered as vLLM answers them (`count`, `max_model_len`,
`tokens`, `token_strs` with `return_token_strs`); /detokenize's reply has both llama.cpp's
`content` and vLLM's `prompt`."""

import base64

import falcon

from rfc.runtime.server import integrations
from rfc.runtime.server import response_schemas as replies
from rfc.runtime.server.api_fields import (
    ADD_GENERATION_PROMPT,
    CHAT_MESSAGES_FIELD,
    CONTINUE_FINAL_MESSAGE,
    CHAT_TEMPLATE_KWARGS,
    MODEL,
    OPENAI_TOOLS_FIELD,
    TOKEN_IDS,
    TOOL_CHOICE,
)
from rfc.runtime.server.chat_prompt import continuation, ends_with_assistant, render_chat
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.embeddings import INPUTS, embed, encode_inputs, shorten
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind, RequestFields, RequestModel
from rfc.runtime.server.generation import BodyResource, check_token_ids
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.infill import InfillResource
from rfc.runtime.server.llama_completion import CompletionResource, PropsResource
from rfc.runtime.server.openai_format import TokenPieces
from rfc.runtime.server.openapi import MODEL_ERRORS, Operation, Routes
from rfc.runtime.server.structured import tool_plan

ENCODINGS = ("float", "base64")
_DIMENSIONS = Field("dimensions", Kind.INTEGER, description="the first N components, normalized again")
EMBEDDINGS = RequestModel(
    "EmbeddingsRequest",
    (
        MODEL,
        Field("input", Kind.JSON, required=True, schema=INPUTS),
        Field("encoding_format", Kind.STRING, "float", enum=ENCODINGS, description="base64: little-endian float32"),
        _DIMENSIONS,
        Field("user", Kind.STRING, description="an end-user id: accepted, not used"),
    ),
    example={"input": "The sky is blue"},
    closed=True,
)  # OpenAI's document forbids other fields
_TOKENIZED = ("content", "prompt", "messages")  # what a /tokenize body tokenizes: one of them
TOKENIZE = RequestModel(
    "TokenizeRequest",
    (
        MODEL,
        Field("content", Kind.STRING, description="llama.cpp's: the text"),
        Field("prompt", Kind.STRING, description="vLLM's: the text, as /v1/completions tokenizes it"),
        CHAT_MESSAGES_FIELD.but(required=False, description="vLLM's: a chat, as /v1/chat/completions renders it"),
        Field(
            "add_special_tokens",
            Kind.BOOLEAN,
            description="vLLM's: BOS as the generation routes add it (default true)",
        ),
        ADD_GENERATION_PROMPT.but(description="vLLM's, with messages"),
        CONTINUE_FINAL_MESSAGE.but(description="vLLM's, with messages"),
        CHAT_TEMPLATE_KWARGS,
        OPENAI_TOOLS_FIELD,
        Field("return_token_strs", Kind.BOOLEAN, False, description="vLLM's: each token's vocabulary string"),
        Field("add_special", Kind.BOOLEAN, False, description="add the BOS token"),
        Field("with_pieces", Kind.BOOLEAN, False, description="each token's text with its id"),
        Field(
            "parse_special", Kind.BOOLEAN, True, description="only true: special tokens in the text are always parsed"
        ),
    ),
    example={"content": "Once upon a time", "with_pieces": True},
)
DETOKENIZE = RequestModel(
    "DetokenizeRequest",
    (MODEL, Field("tokens", Kind.JSON, required=True, schema=TOKEN_IDS)),
    example={"tokens": [1, 2, 3]},
)
LLAMA_EMBEDDING = RequestModel(
    "LlamaEmbeddingRequest",
    (
        MODEL,
        Field("content", Kind.JSON, schema=INPUTS, description="the text (or texts, or token ids) to embed"),
        Field("input", Kind.JSON, schema=INPUTS, description="the same as content"),
        Field("embd_normalize", Kind.INTEGER, 2, description="only 2 (Euclidean): rfc pools and normalizes"),
    ),
    example={"content": "The sky is blue"},
)
APPLY_TEMPLATE = RequestModel(
    "ApplyTemplateRequest",
    (MODEL, CHAT_MESSAGES_FIELD, CHAT_TEMPLATE_KWARGS, OPENAI_TOOLS_FIELD, TOOL_CHOICE),
    example={"messages": [{"role": "user", "content": "Tell me a story"}]},
)


def add_routes(routes: Routes, handle: EngineHandle, config: ServerConfig) -> None:
    routes.add("/v1/embeddings", EmbeddingsResource(handle, config))
    routes.add("/tokenize", TokenizeResource(handle, config))
    routes.add("/detokenize", DetokenizeResource(handle, config))
    routes.add("/apply-template", ApplyTemplateResource(handle, config))
    routes.add("/infill", InfillResource(handle, config))
    routes.add("/completion", CompletionResource(handle, config))
    routes.add("/completions", CompletionResource(handle, config))
    routes.add("/props", PropsResource(handle, config))
    routes.add("/embedding", LlamaEmbeddingResource(handle, config))
    routes.add("/embeddings", LlamaEmbeddingResource(handle, config))
    integrations.add_routes(routes, handle)


class EmbeddingsResource(BodyResource):
    """OpenAI's /v1/embeddings. The official SDK asks for base64 unless told otherwise: the
    vector's float32 bytes, little-endian."""

    model = EMBEDDINGS
    operations = {"post": Operation("Embed text", EMBEDDINGS, {replies.JSON: replies.EMBEDDINGS}, MODEL_ERRORS)}

    any_name_if_single = True

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        encoding = f.string("encoding_format")
        result = embed(served, encode_inputs(served, f.raw("input"), "input"), self._config.pooling, False, "input")
        dims = f.integer("dimensions")
        data = []
        for i, vector in enumerate(result.vectors):
            vector = shorten(vector, dims, "dimensions")
            value = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64" else vector.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        resp.media = {"object": "list", "data": data, "model": served.model_id, "usage": usage}


class LlamaEmbeddingResource(BodyResource):
    """llama-server's /embedding and /embeddings (not OpenAI's shape): `content` or `input`, one
    `{"index", "embedding": [vector]}` per input, the model's pooled and normalized vector as
    its one row. llama-server's other normalizations (`embd_normalize` other than 2) and its
    per-token rows (`--pooling none`) are not what rfc computes: a 400."""

    model = LLAMA_EMBEDDING
    operations = {
        "post": Operation(
            "Embed text (llama-server's)", LLAMA_EMBEDDING, {replies.JSON: replies.LLAMA_EMBEDDINGS}, MODEL_ERRORS
        )
    }

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        if f.integer("embd_normalize") != 2:
            raise bad_request("only embd_normalize 2 (Euclidean) is supported", "embd_normalize")
        sent = [name for name in ("content", "input") if f.raw(name) is not None]
        if len(sent) != 1:
            raise bad_request("send 'content' (or 'input'), one of them", "content")
        inputs = encode_inputs(served, f.raw(sent[0]), sent[0])
        result = embed(served, inputs, self._config.pooling, False, sent[0])
        resp.media = [{"index": i, "embedding": [v.tolist()]} for i, v in enumerate(result.vectors)]


class TokenizeResource(BodyResource):
    """llama.cpp's /tokenize: `content`, `add_special` (default false), `with_pieces`."""

    model = TOKENIZE
    operations = {"post": Operation("Tokenize text", TOKENIZE, {replies.JSON: replies.TOKENIZE}, MODEL_ERRORS)}

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        sent = [name for name in _TOKENIZED if f.has(name)]
        if len(sent) != 1:
            if not sent:
                raise bad_request("'content' is required (or vLLM's 'prompt' or 'messages')", "content")
            raise bad_request(f"send one of {', '.join(sent)}, not several", sent[1])
        if sent[0] != "content":
            resp.media = _vllm_tokens(f, served)
            return
        content = f.string("content")
        if not f.boolean("parse_special"):
            raise bad_request(
                "parse_special: false is not supported (special tokens in the text are always parsed)", "parse_special"
            )
        ids = served.model.tokenizer.encode(content, add_special_tokens=f.boolean("add_special")).ids
        if not f.boolean("with_pieces"):
            resp.media = {"tokens": ids}
            return
        pieces = TokenPieces(served.model.tokenizer)
        resp.media = {"tokens": [{"id": i, "piece": _piece(pieces, i)} for i in ids]}


def _vllm_tokens(f: RequestFields, served: ServedModel) -> dict:
    """vLLM's /tokenize: the ids the generation routes would feed for `prompt` or `messages`."""
    special = f.boolean("add_special_tokens") if f.has("add_special_tokens") else True
    if f.has("prompt"):
        text, field = f.string("prompt"), "prompt"
    else:
        extra = f.raw("chat_template_kwargs")
        if not isinstance(extra, dict):
            raise bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        plan = tool_plan(f.raw("tools"), None)  # as /v1/chat/completions renders them
        args = plan.prompt_args(served)
        text = render_chat(served, f.raw("messages"), extra, **args, **continuation(f))
        field = "messages"
    # with special tokens: the ids the generation routes feed (BOS as the model adds it, never doubled)
    ids = (
        served.prompts.encode(text, field)
        if special
        else served.model.tokenizer.encode(text, add_special_tokens=False).ids
    )
    strs = [served.model.tokenizer.id_to_token(i) for i in ids] if f.boolean("return_token_strs") else None
    return {"count": len(ids), "max_model_len": served.model.context_length, "tokens": ids, "token_strs": strs}


def _piece(pieces: TokenPieces, token: int) -> str | list[int]:
    """A token's text; its bytes when they are not valid UTF-8 alone (as llama.cpp answers)."""
    text, raw = pieces.piece(token)
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return raw


class DetokenizeResource(BodyResource):
    model = DETOKENIZE
    operations = {
        "post": Operation("Token ids back to text", DETOKENIZE, {replies.JSON: replies.DETOKENIZE}, MODEL_ERRORS)
    }

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        tokens = f.raw("tokens")
        if not isinstance(tokens, list):
            raise bad_request("'tokens' must be a list of token ids", "tokens")
        ids = check_token_ids(served, tokens, "tokens")
        text = served.model.tokenizer.decode(ids, skip_special_tokens=False)
        resp.media = {"content": text, "prompt": text}  # llama.cpp's name and vLLM's


class ApplyTemplateResource(BodyResource):
    """llama.cpp's /apply-template: the prompt text /v1/chat/completions would generate from."""

    model = APPLY_TEMPLATE
    operations = {
        "post": Operation(
            "The prompt a chat renders to", APPLY_TEMPLATE, {replies.JSON: replies.APPLY_TEMPLATE}, MODEL_ERRORS
        )
    }

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        extra = f.raw("chat_template_kwargs")
        if not isinstance(extra, dict):
            raise bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        plan = tool_plan(f.raw("tools"), f.raw("tool_choice"))  # as /v1/chat/completions renders them
        # a final assistant message is continued, as llama-server's /apply-template shows it
        continue_final = ends_with_assistant(f.raw("messages"))
        prompt = render_chat(
            served, f.raw("messages"), extra, continue_final=continue_final, **plan.prompt_args(served)
        )
        resp.media = {"prompt": prompt}
