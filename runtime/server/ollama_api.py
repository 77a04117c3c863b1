"""Ollama's API, so Ollama clients work unchanged against `rfc serve` (point them at its
address instead of :11434): GET /, /api/version, /api/tags, /api/ps; POST /api/show,
/api/generate, /api/chat, /api/embed, /api/embeddings.

Streaming is Ollama's default: NDJSON (`application/x-ndjson`), one object per line, the last
with `done: true`. Errors are Ollama's `{"error": "..."}`. A model that is not loaded is loaded
by the request that names it (`load_duration`), and `keep_alive` says how long it stays
loaded after (runtime/server/model_manager.py). Pull, copy and delete are the operator's
(runtime/server/model_admin.py); push, create and blobs do not apply to compiled bundles: they
answer 501 saying so."""

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import falcon

from rfc.runtime.engine.engine import RequestState
from rfc.artifacts import BundleError
from rfc.artifacts.bundle import MANIFEST_FILE, read_manifest
from rfc.runtime.server import model_info
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.embeddings import embed, encode_inputs, shorten
from rfc.runtime.server.errors import ApiError, bad_request, read_json
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.generation import Answer, generation_operations, run
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.infill import fim_prompt
from rfc.runtime.server.model_manager import ModelManager
from rfc.runtime.server.model_sources import parse_keep_alive
from rfc.runtime.server.ollama_format import (
    OllamaReply,
    OllamaStreamRenderer,
    chat_prompt,
    generate_prompt,
    generation,
    output_plan,
    refuse_unsupported,
    sampling_options,
)
from rfc.runtime.server.ollama_models import CHAT, EMBED, EMBEDDINGS, GENERATE, SHOW
from rfc.runtime.server.openapi import Operation, Routes
from rfc.runtime.server.response_schemas import (
    ANY_TEXT,
    JSON,
    NDJSON,
    OLLAMA_CHAT,
    OLLAMA_EMBED,
    OLLAMA_EMBEDDING,
    OLLAMA_GENERATE,
    OLLAMA_PS,
    OLLAMA_SHOW,
    OLLAMA_TAGS,
    OLLAMA_VERSION,
    TEXT,
    streamed,
)
from rfc.runtime.server.streaming import NDJSON_MEDIA
from rfc.runtime.server.webui_routes import HTML, PAGE, WebUi, wants_html

# The Ollama API version whose shapes these routes follow (clients gate features on it).
OLLAMA_API_VERSION = "0.12.0"
# A model kept loaded for the life of the server (Ollama's keep_alive -1) expires then.
_NEVER = "2262-04-11T23:47:16Z"
# Pull, copy and delete: runtime/server/model_admin.py.
UNSUPPORTED_ROUTES = ("/api/push", "/api/create", "/api/blobs/{digest}")


def add_routes(
    routes: Routes,
    handle: EngineHandle,
    config: ServerConfig,
    webui: WebUi | None = None,
    models: ModelManager | None = None,
) -> None:
    routes.add("/", RootResource(webui))
    routes.add("/api/version", VersionResource())
    routes.add("/api/tags", TagsResource(handle, models))
    routes.add("/api/ps", PsResource(handle, models))
    routes.add("/api/show", ShowResource(handle, config))
    routes.add("/api/generate", GenerateResource(handle, config, chat=False, models=models))
    routes.add("/api/chat", GenerateResource(handle, config, chat=True, models=models))
    routes.add("/api/embed", EmbedResource(handle, config, models=models))
    routes.add("/api/embeddings", EmbedResource(handle, config, legacy=True, models=models))
    for path in UNSUPPORTED_ROUTES:
        routes.add(path, UnsupportedResource())


def _name(f: RequestFields) -> str:
    name = f.string("model") or f.string("name")  # /api/show once took `name`
    if not name:
        raise bad_request("'model' is required", "model")
    return name


def _model(handle: EngineHandle, f: RequestFields) -> tuple[str, ServedModel]:
    name = _name(f)
    return name, handle.require(name)


def _keep_alive(f: RequestFields) -> tuple[bool, float | None]:
    """(whether the request sets keep_alive, its seconds: None keeps the model loaded)."""
    if f.raw("keep_alive") is None:
        return False, None
    try:
        return True, parse_keep_alive(f.raw("keep_alive"))
    except ValueError as e:
        raise bad_request(f"'keep_alive': {e}", "keep_alive") from None


def _acquire(handle: EngineHandle, models: ModelManager | None, f: RequestFields) -> tuple[str, ServedModel, float]:
    """The model the request names, loaded if it was not (the seconds it waited), with the
    request's keep_alive (or the server's) counting from now."""
    name = _name(f)
    sent, keep_alive = _keep_alive(f)
    served, waited = handle.acquire(name)
    if models is not None:
        models.keep_alive(served.model_id, keep_alive if sent else models.policy.keep_alive_s)
    return name, served, waited


class RootResource:
    """Ollama's liveness answer, which Ollama clients GET (some compare the text). A browser
    (`Accept: text/html`) gets the web chat page instead, unless it is off (`--no-webui`)."""

    def __init__(self, webui: WebUi | None = None):
        self._webui = webui
        reply = {TEXT: ANY_TEXT, **({HTML: ANY_TEXT} if webui else {})}
        summary = "Ollama's liveness answer" + (
            "; the web chat page for a browser (Accept: text/html)" if webui else ""
        )
        self.operations = {"get": Operation(summary, reply=reply), "head": Operation(summary, reply=reply)}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._webui is not None:
            resp.vary = ("Accept",)  # one URL, two answers: caches must keep them apart
            if wants_html(req):
                self._webui.send(resp, PAGE)
                return
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "Ollama is running"

    on_head = on_get


class VersionResource:
    operations = {"get": Operation("The Ollama API version these routes follow", reply={JSON: OLLAMA_VERSION})}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"version": OLLAMA_API_VERSION}


class TagsResource:
    operations = {
        "get": Operation("The served models, loaded or not, and their other names", reply={JSON: OLLAMA_TAGS})
    }

    def __init__(self, handle: EngineHandle, models: ModelManager | None = None):
        self._handle = handle
        self._models = models

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        entries = {s.model_id: _entry(s) for s in self._handle.all_served()}
        for model_id in self._handle.available_ids:
            source = self._models.source(model_id) if self._models is not None else None
            if source is not None:
                try:
                    entries[model_id] = _manifest_entry(model_id, source.bundle)
                except (BundleError, OSError):
                    continue  # deleted under the server: loading it would say so
        for alias, target in self._handle.aliases.items():
            if target in entries:
                entries[alias] = {**entries[target], "name": alias, "model": alias}
        resp.media = {"models": list(entries.values())}


class PsResource:
    operations = {"get": Operation("The loaded models", reply={JSON: OLLAMA_PS})}

    def __init__(self, handle: EngineHandle, models: ModelManager | None = None):
        self._handle = handle
        self._models = models

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = []
        for s in self._handle.all_served():
            size = model_info.bundle_size(s)
            on_gpu = s.model.device_choice.name.is_gpu
            expires = self._models.expires_in(s.model_id) if self._models is not None else None
            expires_at = (
                _NEVER if expires is None else (datetime.now(timezone.utc) + timedelta(seconds=expires)).isoformat()
            )
            models.append(
                {
                    **_entry(s),
                    "expires_at": expires_at,
                    "size": size,
                    "size_vram": size if on_gpu else 0,
                    "context_length": s.model.context_length,
                }
            )
        resp.media = {"models": models}


def _entry(served: ServedModel) -> dict:
    details = model_info.details(served)
    return {
        "name": served.model_id,
        "model": served.model_id,
        "modified_at": model_info.loaded_at(served),
        "size": model_info.model_size(served),
        "digest": model_info.digest(served),
        "details": {"parent_model": "", **{k: v for k, v in details.items() if k != "size"}},
    }


def _manifest_entry(model_id: str, bundle: Path) -> dict:
    """A model that is not loaded, from its bundle's manifest (BundleError if it is gone)."""
    manifest = read_manifest(bundle)
    details = model_info.manifest_details(manifest)
    modified = datetime.fromtimestamp((bundle / MANIFEST_FILE).stat().st_mtime, timezone.utc)
    return {
        "name": model_id,
        "model": model_id,
        "modified_at": modified.isoformat().replace("+00:00", "Z"),
        "size": model_info.manifest_model_size(manifest),
        "digest": model_info.manifest_digest(manifest),
        "details": {"parent_model": "", **{k: v for k, v in details.items() if k != "size"}},
    }


class ShowResource:
    operations = {"post": Operation("A model's details", SHOW, {JSON: OLLAMA_SHOW}, (404,))}

    def __init__(self, handle: EngineHandle, config: ServerConfig):
        self._handle = handle
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, served = _model(self._handle, SHOW.read(read_json(req, self._config.max_body_bytes)))
        manifest = served.model.manifest
        model = manifest["model"]
        info = {**model.get("gguf_metadata", {}), "general.parameter_count": model["parameter_count"]}
        flags = model_info.capabilities(served)
        flags["tools"] = flags["tools"] or (flags["completion"] and self._config.ollama_generic_tools)
        caps = ["completion"] * flags["completion"] + [
            name
            for name, key in (("embedding", "embeddings"), ("tools", "tools"), ("thinking", "thinking"))
            if flags[key]
        ]
        template = served.chat.source if model_info.has_chat_template(served) else "{{ .Prompt }}"
        resp.media = {
            "modelfile": f"# compiled by rfc into bundle {manifest.get('bundle_id', '')}\nFROM "
            f"{manifest.get('source', {}).get('file', '')}\n",
            # model_info is the GGUF's metadata (the trained context); num_ctx is what this server serves
            "parameters": f"num_ctx {served.model.context_length}",
            "template": template,
            "details": {"parent_model": "", **{k: v for k, v in model_info.details(served).items() if k != "size"}},
            "model_info": info,
            "capabilities": caps,
            "modified_at": model_info.loaded_at(served),
        }


class GenerateResource:
    """/api/generate (`chat=False`) and /api/chat."""

    def __init__(self, handle: EngineHandle, config: ServerConfig, chat: bool, models: ModelManager | None = None):
        self._handle = handle
        self._config = config
        self._chat = chat
        self._models = models
        self._model = CHAT if chat else GENERATE
        reply = streamed(OLLAMA_CHAT if chat else OLLAMA_GENERATE, stream_media=NDJSON)
        self.operations = generation_operations("Answer a chat" if chat else "Generate text", self._model, reply)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = self._model.read(read_json(req, self._config.max_body_bytes))
        if self._unloads(f):
            resp.media = OllamaReply(_name(f), self._chat).unloaded()
            return
        name, served, waited = _acquire(self._handle, self._models, f)
        refuse_unsupported(f)
        options = sampling_options(f)
        stream = f.boolean("stream")  # Ollama streams unless told not to
        plan = output_plan(served, f, self._chat, self._config.ollama_generic_tools)
        chat_ids: list[int] | None = None
        if self._chat:
            found_chat = chat_prompt(served, f, plan)
            prompt, chat_ids = found_chat if found_chat is not None else (None, None)
            context: list[int] = []
        else:
            found = generate_prompt(served, f, plan)
            context, prompt = found if found is not None else ([], None)
        if prompt is None:
            resp.media = OllamaReply(name, self._chat, load_seconds=waited).loaded()
            return
        if not self._chat and f.string("suffix"):  # fill in the middle, in the model's FIM tokens (not the template)
            prompt_ids = context + fim_prompt(served, f.string("prompt"), f.string("suffix"))
        elif chat_ids:
            prompt_ids = chat_ids
        else:
            prompt_ids = context + served.prompts.encode(prompt, "messages" if self._chat else "prompt")
        spec = plan.output_spec(served, prompt)

        def answer(state: RequestState) -> Answer:
            reply = OllamaReply(name, self._chat, state, spec, waited)
            return Answer(
                whole=lambda _events: reply.final(reply.whole()), stream=OllamaStreamRenderer(reply), media=NDJSON_MEDIA
            )

        run(served, generation(served, options, prompt_ids, plan), req, resp, stream, answer)

    def _unloads(self, f: RequestFields) -> bool:
        """An empty prompt with keep_alive 0 (`ollama stop`) unloads the model, once idle,
        without loading it first."""
        empty = not (f.raw("messages") if self._chat else f.string("prompt"))
        if not empty or _keep_alive(f) != (True, 0.0):
            return False
        model_id = self._handle.resolve(_name(f))
        if self._models is not None:
            self._models.keep_alive(model_id, 0.0)  # the keep-alive thread unloads it when idle
        return True


class EmbedResource:
    """/api/embed (`input`, a string or a list) and the older /api/embeddings (`prompt`)."""

    def __init__(
        self, handle: EngineHandle, config: ServerConfig, legacy: bool = False, models: ModelManager | None = None
    ):
        self._handle = handle
        self._config = config
        self._legacy = legacy
        self._models = models
        self._model = EMBEDDINGS if legacy else EMBED
        self.operations = {
            "post": Operation(
                "Embed text", self._model, {JSON: OLLAMA_EMBEDDING if legacy else OLLAMA_EMBED}, (404, 503)
            )
        }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = self._model.read(read_json(req, self._config.max_body_bytes))
        name, served, waited = _acquire(self._handle, self._models, f)
        field = "prompt" if self._legacy else "input"
        if not self._legacy and f.raw("input") == []:
            resp.media = {
                "model": name,
                "embeddings": [],
                "total_duration": int(waited * 1e9),
                "load_duration": int(waited * 1e9),
                "prompt_eval_count": 0,
            }
            return
        started = time.time()
        inputs = encode_inputs(served, f.raw(field), field)
        result = embed(served, inputs, self._config.pooling, f.boolean("truncate"), field)
        dims = f.integer("dimensions")
        vectors = [shorten(v, dims, "dimensions").tolist() for v in result.vectors]
        if self._legacy:
            resp.media = {"embedding": vectors[0]}
            return
        resp.media = {
            "model": name,
            "embeddings": vectors,
            "total_duration": int((time.time() - started + waited) * 1e9),
            "load_duration": int(waited * 1e9),
            "prompt_eval_count": result.prompt_tokens,
        }


class UnsupportedResource:
    operations = {
        m: Operation("Not supported: rfc serves compiled bundles", reply={}, errors=(501,))
        for m in ("get", "post", "delete", "head", "put")
    }

    def _refuse(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        raise ApiError(
            falcon.HTTP_501,
            f"{req.path} is not supported: rfc serves compiled bundles. Compile a GGUF with `rfc compile MODEL.gguf` "
            "(or pass the .gguf to `rfc serve`) instead of pulling or creating models",
        )

    on_get = on_post = on_delete = on_head = on_put = _refuse
