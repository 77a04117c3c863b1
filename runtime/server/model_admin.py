"""Model management over HTTP, an operator's act (the admin key, `--admin-api-key`; off
without one): Ollama's /api/pull, /api/delete and /api/copy on compiled bundles, and rfc's
/admin/swap (a new version under a served id) and /admin/models (what is loaded).

- `/api/pull {"model": REF}` pulls a bundle from an OCI registry (rfc push) and serves it
  under the reference itself, as Ollama names a pulled model; it loads on the first request.
  Pulling a name already served replaces it with what the registry holds now (a swap when it
  is loaded). The stream is Ollama's: `pulling manifest`, `pulling <digest>` with `total` and
  `completed` per layer, `verifying sha256 digest`, `writing manifest`, `success`.
- `/api/delete {"model"}` stops serving it (its requests in flight finish) and, for a model
  pulled through the API, deletes its files from the pull cache; a copy's name is just dropped.
- `/api/copy {"source", "destination"}` serves a model under one more name.
- `/admin/swap {"model", "source"}` replaces a served model's version by another bundle
  directory or reference; it answers once the new version serves."""

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import falcon

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import read_manifest
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import ApiError, bad_request, not_found, read_json
from rfc.runtime.server.fields import Field, Kind, RequestModel
from rfc.runtime.server.served_models import EngineHandle
from rfc.runtime.server.middleware import deferred_log
from rfc.runtime.server.model_manager import ModelManager, memory_bytes
from rfc.runtime.server.model_sources import FetchError, PullProgress
from rfc.runtime.server.models import Origin, is_model_name
from rfc.runtime.server.ollama_format import ndjson
from rfc.runtime.server.openapi import Operation, Routes
from rfc.runtime.server.response_schemas import ADMIN_MODELS, ADMIN_SWAP, JSON, NDJSON, OLLAMA_STATUS, streamed
from rfc.runtime.server.streaming import NDJSON_CONTENT_TYPE

_NAME = Field("model", Kind.STRING, description="the model's name")
PULL = RequestModel(
    "OllamaPullRequest",
    (
        _NAME.but(
            description="a registry reference of a compiled bundle (HOST/REPOSITORY[:TAG|@DIGEST]), served under "
            "this name"
        ),
        Field("name", Kind.STRING, description="deprecated: model"),
        Field(
            "insecure", Kind.BOOLEAN, False, description="plain HTTP: only for a registry on the server's own machine"
        ),
        Field("stream", Kind.BOOLEAN, True, description="NDJSON progress, one object per step (Ollama's default)"),
    ),
)
DELETE = RequestModel("OllamaDeleteRequest", (_NAME, Field("name", Kind.STRING, description="deprecated: model")))
COPY = RequestModel(
    "OllamaCopyRequest",
    (
        Field("source", Kind.STRING, required=True, description="a served model"),
        Field("destination", Kind.STRING, required=True, description="another name for it"),
    ),
)
SWAP = RequestModel(
    "SwapRequest",
    (
        Field("model", Kind.STRING, required=True, description="the served model to replace"),
        Field(
            "source",
            Kind.STRING,
            required=True,
            description="its new version: a registry reference, or a bundle directory on the server",
        ),
        Field(
            "insecure", Kind.BOOLEAN, False, description="plain HTTP: only for a registry on the server's own machine"
        ),
    ),
)
_ERRORS = (403, 404, 502, 503)
_MAX_PENDING_STEPS = 256  # progress lines a pull holds for its client at most
_WORKER_CHECK_S = 1.0  # how often a waiting pull stream checks that its worker still runs
_CLIENT_WAIT_S = 60.0  # how long a pull waits for a client that reads none of its steps

log = logging.getLogger("rfc.server")


def add_routes(routes: Routes, handle: EngineHandle, manager: ModelManager, config: ServerConfig) -> None:
    routes.add("/api/pull", PullResource(manager, config))
    routes.add("/api/delete", DeleteResource(handle, manager, config))
    routes.add("/api/copy", CopyResource(handle, manager, config))
    routes.add("/admin/swap", SwapResource(handle, manager, config))
    routes.add("/admin/models", ModelsResource(handle, manager, config))


def require_admin(req: falcon.Request, config: ServerConfig) -> None:
    """Model management is the operator's: the admin key's, and nobody's without one."""
    if req.context.get("admin"):
        return
    if config.admin_api_key is None:
        raise ApiError(
            falcon.HTTP_403,
            "model management is off: it needs the admin key (start the server with --admin-api-key and send it)",
            code="forbidden",
        )
    raise ApiError(falcon.HTTP_403, "model management needs the admin key (--admin-api-key)", code="forbidden")


def _fetch_error(e: FetchError) -> ApiError:
    return ApiError(
        {400: falcon.HTTP_400, 404: falcon.HTTP_404, 501: falcon.HTTP_501}.get(e.status, falcon.HTTP_502),
        str(e),
        param="model" if e.status in (400, 404) else None,
    )


class PullResource:
    operations = {
        "post": Operation(
            "Pull a compiled bundle from an OCI registry and serve it under its reference (the admin key)",
            PULL,
            streamed(OLLAMA_STATUS, stream_media=NDJSON),
            _ERRORS,
        )
    }

    def __init__(self, manager: ModelManager, config: ServerConfig):
        self._manager = manager
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = PULL.read(read_json(req, self._config.max_body_bytes))
        require_admin(req, self._config)
        name = f.string("model") or f.string("name")
        fetcher = self._manager.fetcher
        if not name:
            raise bad_request("'model' is required", "model")
        if fetcher is None:
            raise ApiError(falcon.HTTP_501, "this server cannot pull models")
        if not is_model_name(name) or not fetcher.is_reference(name):
            raise bad_request(
                "'model' must be a registry reference of a compiled bundle, "
                "HOST/REPOSITORY[:TAG|@DIGEST] (pushed with `rfc push`); rfc does not pull Ollama's "
                "models",
                "model",
            )
        insecure = f.boolean("insecure")
        if not f.boolean("stream"):
            try:
                self._manager.pull(name, insecure)
            except FetchError as e:
                raise _fetch_error(e) from None
            except (ApiError, falcon.HTTPError):
                raise
            except Exception as e:  # whatever else: a JSON error, never a traceback
                log.exception("pulling %s failed unexpectedly", name[:200])
                raise ApiError(falcon.HTTP_502, f"the pull failed: {type(e).__name__}") from None
            resp.media = {"status": "success"}
            return
        resp.content_type = NDJSON_CONTENT_TYPE
        resp.stream = _ClosingBody(self._pull_lines(name, insecure), deferred_log(req, 200, lambda: 0))

    def _pull_lines(self, name: str, insecure: bool) -> Iterator[bytes]:
        """The pull runs on a thread of its own (a client that leaves does not stop it: what
        was downloaded is kept, and a later pull resumes); its steps come back as lines."""
        # bounded: a client that reads slowly skips byte counts, never a step; one that left
        # gets nothing more (the pull goes on, its files kept for the next pull)
        steps: queue.Queue = queue.Queue(maxsize=_MAX_PENDING_STEPS)
        gone = threading.Event()

        def report(step: "PullProgress | FetchError | None") -> None:
            needed = not isinstance(step, PullProgress) or step.completed is None or step.completed == step.total
            waited_until = time.monotonic() + _CLIENT_WAIT_S
            while not gone.is_set():
                try:
                    steps.put(step, timeout=0.5)
                    return
                except queue.Full:
                    if not needed:
                        return
                    if time.monotonic() > waited_until:  # a client that stopped reading counts as gone
                        gone.set()

        def work() -> None:
            try:
                self._manager.pull(name, insecure, report)
                report(PullProgress("success"))
            except FetchError as e:
                report(e)
            except ApiError as e:  # the new version does not load (the old one still serves)
                report(FetchError(e.message, 503))
            except Exception as e:  # whatever else: the stream still ends with an error line
                log.exception("pulling %s failed unexpectedly", name[:200])
                report(FetchError(f"the pull failed: {type(e).__name__}", 500))
            finally:
                report(None)

        worker = threading.Thread(target=work, name="rfc-pull", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    step = steps.get(timeout=_WORKER_CHECK_S)
                except queue.Empty:
                    if worker.is_alive():
                        continue
                    step = FetchError("the pull ended without a result", 500)  # (never waits on a dead worker)
                if step is None:
                    break
                yield ndjson({"error": str(step)} if isinstance(step, FetchError) else step.as_json())
                if isinstance(step, FetchError):
                    break
        finally:
            gone.set()


class _ClosingBody:
    """A streamed response that runs `on_end` once however it ends (waitress calls close())."""

    def __init__(self, lines: Iterator[bytes], on_end: Callable[[], None]):
        self._lines = lines
        self._on_end = on_end
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        return self._lines

    def close(self) -> None:
        try:
            self._lines.close()
        finally:
            if not self._ended:
                self._ended = True
                self._on_end()


class DeleteResource:
    operations = {
        "delete": Operation(
            "Stop serving a model and delete what the server pulled of it (the admin key)",
            DELETE,
            {JSON: OLLAMA_STATUS},
            _ERRORS,
        )
    }

    def __init__(self, handle: EngineHandle, manager: ModelManager, config: ServerConfig):
        self._handle = handle
        self._manager = manager
        self._config = config

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = DELETE.read(read_json(req, self._config.max_body_bytes))
        require_admin(req, self._config)
        name = f.string("model") or f.string("name")
        if not name:
            raise bad_request("'model' is required", "model")
        if self._handle.unalias(name) or self._handle.unalias(name.removesuffix(":latest")):
            resp.media = {"status": "success"}
            return
        if self._manager.source(name) is None and self._manager.source(name.removesuffix(":latest")) is None:
            cached = _unserved_cache_entry(self._manager, name)
            if cached is not None:  # pulled, never served (or no longer): its files go
                try:
                    self._manager.fetcher.remove(cached)
                except Exception as e:  # (a pull holding its lock, the disk): the entry stays
                    raise ApiError(falcon.HTTP_503, f"cannot delete {name[:200]} now: {type(e).__name__}") from None
                resp.media = {"status": "success"}
                return
        model_id = _known(self._manager, name)
        source = self._manager.remove(model_id)
        still_used = any(s.bundle.resolve() == source.bundle.resolve() for s in self._manager.sources())
        if source.origin is Origin.PULLED and self._manager.fetcher is not None and not still_used:
            self._manager.fetcher.remove(source.bundle)
        resp.media = {"status": "success"}


class CopyResource:
    operations = {
        "post": Operation("Serve a model under one more name (the admin key)", COPY, {JSON: OLLAMA_STATUS}, _ERRORS)
    }

    def __init__(self, handle: EngineHandle, manager: ModelManager, config: ServerConfig):
        self._handle = handle
        self._manager = manager
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = COPY.read(read_json(req, self._config.max_body_bytes))
        require_admin(req, self._config)
        target = self._handle.resolve(f.string("source"))
        destination = f.string("destination")
        if not is_model_name(destination):
            raise bad_request(
                "'destination' must be a name of letters, digits and . _ : / @ + - (at most 256)", "destination"
            )
        if self._manager.source(destination) is not None or destination in self._handle.model_ids:
            raise bad_request(f"'{destination}' is a served model: delete it first", "destination")
        if destination != target:
            self._handle.alias(destination, target)
        resp.media = {"status": "success"}


class SwapResource:
    operations = {
        "post": Operation(
            "Replace a served model's version without ending a request (the admin key)",
            SWAP,
            {JSON: ADMIN_SWAP},
            _ERRORS,
        )
    }

    def __init__(self, handle: EngineHandle, manager: ModelManager, config: ServerConfig):
        self._handle = handle
        self._manager = manager
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = SWAP.read(read_json(req, self._config.max_body_bytes))
        require_admin(req, self._config)
        model_id = _known(self._manager, f.string("model"))
        current = self._manager.source(model_id)
        try:
            source = self._manager.fetch_source(
                model_id, f.string("source"), f.boolean("insecure"), origin=current.origin if current else Origin.PULLED
            )
        except FetchError as e:
            raise _fetch_error(e) from None
        new, previous = self._manager.replace(source)
        resp.media = {
            "model": model_id,
            "version": new.version if new else _bundle_id(source.bundle),
            "previous": previous,
            "loaded": new is not None,
            "load_seconds": round(new.load_seconds, 3) if new else 0.0,
        }


class ModelsResource:
    operations = {
        "get": Operation(
            "Every model's state: loaded, available or failed, its version and memory; "
            "versions retiring (the admin key)",
            reply={JSON: ADMIN_MODELS},
            errors=(403,),
        )
    }

    def __init__(self, handle: EngineHandle, manager: ModelManager, config: ServerConfig):
        self._handle = handle
        self._manager = manager
        self._config = config

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_admin(req, self._config)
        handle, manager = self._handle, self._manager
        models = []
        for model_id in handle.model_ids + list(handle.failed_models):
            source = manager.source(model_id)
            served = handle.loaded(model_id)
            state = (
                "loaded"
                if served
                else "available"
                if handle.is_available(model_id)
                else "failed"
                if model_id in handle.failed_models
                else "loading"
            )
            entry = {
                "id": model_id,
                "state": state,
                "origin": source.origin.value if source else None,
                "bundle": source.bundle.name if source else None,
            }
            if served is not None:
                entry.update(
                    version=served.version, memory_bytes=memory_bytes(served), expires_in=manager.expires_in(model_id)
                )
            models.append(entry)
        fetcher = manager.fetcher
        cached = fetcher.cached() if fetcher is not None else []
        in_use = {s.bundle.resolve() for s in manager.sources()}
        resp.media = {
            "models": models,
            "cached": [
                {
                    "digest": "sha256:" + c.name,
                    "name": _model_name(c),
                    "bytes": _bytes(c),
                    "served": c.resolve() in in_use,
                }
                for c in cached
            ],
            "aliases": handle.aliases,
            "retiring": [
                {"id": r.model_id, "version": r.version, "memory_bytes": r.memory_bytes, "why": r.why}
                for r in manager.retiring()
            ],
        }


def _known(manager: ModelManager, name: str) -> str:
    for candidate in (name, name.removesuffix(":latest")):
        if manager.source(candidate) is not None:
            return candidate
    raise not_found(f"model '{name}' not found", code="model_not_found")


def _unserved_cache_entry(manager: ModelManager, name: str) -> Path | None:
    """The pulled bundle `name` names by digest (`sha256:HEX`, or a reference pinned with
    @sha256:HEX) if it is in the pull cache and no model serves it."""
    if manager.fetcher is None or "sha256:" not in name:
        return None
    digest = name.rsplit("sha256:", 1)[1]
    served = {s.bundle.resolve() for s in manager.sources()}
    for bundle in manager.fetcher.cached():
        if bundle.name == digest and bundle.resolve() not in served:
            return bundle
    return None


def _model_name(bundle: Path) -> str:
    try:
        return str(read_manifest(bundle).get("model", {}).get("name", ""))
    except (BundleError, AttributeError):
        return ""


def _bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def _bundle_id(bundle: Path) -> str:
    return str(read_manifest(bundle).get("bundle_id", ""))
