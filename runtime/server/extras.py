"""Routes beside generation: OpenAI's /v1/embeddings, llama.cpp's /tokenize, /detokenize and
/apply-template (same request and reply shapes), and the integrations of seed 003. Each takes
an optional `model` (the default model when absent)."""

import base64

import falcon

from rfc.runtime.server import integrations
from rfc.runtime.server.chat_prompt import render_chat
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.embeddings import embed, encode_inputs, shorten
from rfc.runtime.server.errors import bad_request, read_json
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.generation import check_token_ids, model_for
from rfc.runtime.server.host import EngineHandle, ServedModel
from rfc.runtime.server.openai_format import TokenPieces
from rfc.runtime.server.structured import openai_tools

ENCODINGS = ("float", "base64")


def add_routes(app: falcon.App, handle: EngineHandle, config: ServerConfig) -> None:
    app.add_route("/v1/embeddings", EmbeddingsResource(handle, config))
    app.add_route("/tokenize", TokenizeResource(handle, config))
    app.add_route("/detokenize", DetokenizeResource(handle, config))
    app.add_route("/apply-template", ApplyTemplateResource(handle, config))
    integrations.add_routes(app, handle)


class _BodyResource:
    def __init__(self, handle: EngineHandle, config: ServerConfig, any_name_if_single: bool = False):
        self._handle = handle
        self._config = config
        self._any_name = any_name_if_single

    def body(self, req: falcon.Request) -> tuple[RequestFields, ServedModel]:
        body = read_json(req, self._config.max_body_bytes)
        return RequestFields(body), model_for(self._handle, body, self._any_name)


class EmbeddingsResource(_BodyResource):
    """OpenAI's /v1/embeddings. The official SDK asks for base64 unless told otherwise: the
    vector's float32 bytes, little-endian."""

    def __init__(self, handle: EngineHandle, config: ServerConfig):
        super().__init__(handle, config, any_name_if_single=True)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f, served = self.body(req)
        encoding = f.string("encoding_format", "float")
        if encoding not in ENCODINGS:
            raise bad_request(f"'encoding_format' must be one of {', '.join(ENCODINGS)}", "encoding_format")
        result = embed(served, encode_inputs(served, f.raw("input"), "input"), self._config.pooling, False, "input")
        dims = f.integer("dimensions", None)
        data = []
        for i, vector in enumerate(result.vectors):
            vector = shorten(vector, dims, "dimensions")
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64" else vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        resp.media = {"object": "list", "data": data, "model": served.model_id, "usage": usage}


class TokenizeResource(_BodyResource):
    """llama.cpp's /tokenize: `content`, `add_special` (default false), `with_pieces`."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f, served = self.body(req)
        content = f.string("content", required=True)
        if not f.boolean("parse_special", True):
            raise bad_request("parse_special: false is not supported (special tokens in the text are always parsed)", "parse_special")
        ids = served.model.tokenizer.encode(content, add_special_tokens=f.boolean("add_special", False)).ids
        if not f.boolean("with_pieces", False):
            resp.media = {"tokens": ids}
            return
        pieces = TokenPieces(served.model.tokenizer)
        resp.media = {"tokens": [{"id": i, "piece": _piece(pieces, i)} for i in ids]}


def _piece(pieces: TokenPieces, token: int) -> str | list[int]:
    """A token's text; its bytes when they are not valid UTF-8 alone (as llama.cpp answers)."""
    text, raw = pieces.piece(token)
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return raw


class DetokenizeResource(_BodyResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f, served = self.body(req)
        tokens = f.raw("tokens")
        if not isinstance(tokens, list):
            raise bad_request("'tokens' must be a list of token ids", "tokens")
        ids = check_token_ids(served, tokens, "tokens")
        resp.media = {"content": served.model.tokenizer.decode(ids, skip_special_tokens=False)}


class ApplyTemplateResource(_BodyResource):
    """llama.cpp's /apply-template: the prompt text /v1/chat/completions would generate from."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f, served = self.body(req)
        extra = f.raw("chat_template_kwargs", {})
        if not isinstance(extra, dict):
            raise bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        tools = openai_tools(f.raw("tools")) or None  # rendered as /v1/chat/completions renders them
        if f.raw("tool_choice") == "none":
            tools = None
        resp.media = {"prompt": render_chat(served, f.raw("messages"), extra, tools=tools)}

