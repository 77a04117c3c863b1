"""Operational endpoints of the native API (docs/native-api.md): /health, /ready, /models, /metrics, /traces."""

from collections.abc import Sequence

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rfc.artifacts import RFC_VERSION
from rfc.runtime.engine.assemble import LoadedModel
from rfc.runtime.server.config import SERVICE_NAME, ServerConfig
from rfc.runtime.server.errors import ApiError
from rfc.runtime.server.fields import Field, Kind, read_query
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.lifecycle import Lifecycle
from rfc.runtime.server.model_info import bundle_size, model_card
from rfc.runtime.server.openapi import Operation
from rfc.runtime.server.response_schemas import ANY_TEXT, HEALTH, JSON, MODELS, READY, TEXT, TRACES
from rfc.runtime.server.traces import TraceStore


class HealthResource:
    """Answers throughout, loaded or not; never needs the API key."""

    operations = {
        "get": Operation("Liveness: the engine, device, requests and KV cache", reply={JSON: HEALTH}, public=True)
    }

    def __init__(self, handle: EngineHandle, lifecycle: Lifecycle):
        self._handle = handle
        self._lifecycle = lifecycle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Several models: the native API's checks sum over them, and `models` has each one's own.
        every = self._handle.all_served()
        running = self._handle.is_ready()
        engine = {"running": running, "model_loaded": bool(every) and running}
        if self._handle.load_error:
            engine["error"] = self._handle.load_error
        if self._handle.failed_models:
            engine["failed_models"] = self._handle.failed_models
        if self._lifecycle.draining:
            engine["draining"] = True  # still alive (a liveness probe must not restart it), no longer ready
        checks: dict = {"engine": engine, "gpu": _device_check(self._handle.served, every)}
        if running and every:  # (every model may be unloaded: loaded on demand)
            per_model = {s.model_id: s.engine.counts() for s in every}
            counts = {k: sum(c[k] for c in per_model.values()) for k in next(iter(per_model.values()))}
            checks["requests"] = {"active": counts["running"], "queued": counts["waiting"]}
            checks["cache"] = _cache_check(counts)
            checks["models"] = {
                s.model_id: {
                    "requests": {"active": c["running"], "queued": c["waiting"]},
                    "cache": _cache_check(c),
                    "kv": _kv_check(s.model),
                }
                for s, c in ((s, per_model[s.model_id]) for s in every)
            }
        resp.media = {
            "status": "healthy" if running else "unhealthy",
            "service": SERVICE_NAME,
            "version": RFC_VERSION,
            "checks": checks,
        }


def _cache_check(counts: dict[str, int]) -> dict[str, int]:
    check = {
        "pages_used": counts["pages_used"],
        "pages_total": counts["pages_total"],
        "pages_free": counts["pages_free"],
        "active_sequences": counts["sequences"],
    }
    if counts.get("state_slots_total", 0):
        # a hybrid model's recurrent-state slots beside its pages; the native API's cache block
        # (docs/native-api.md, GET /health) has exactly the four keys above, so other models keep to them
        check["state_slots_used"] = counts.get("state_slots_used", 0)
        check["state_slots_total"] = counts["state_slots_total"]
    return check


def _kv_check(model: LoadedModel) -> dict:
    """How the model's KV pool stores a token (--cache-type-k/-v) and what it takes."""
    types = model.kv_pool.cache_types
    return {
        "cache_type_k": types.k.value,
        "cache_type_v": types.v.value,
        "bytes_per_token": model.kv_bytes_per_token,
        "pool_bytes": kv_pool_bytes(model),
    }


def _device_check(served: ServedModel | None, every: Sequence[ServedModel] = ()) -> dict:
    """The seed's gpu block: a GPU's memory from its driver, plus the KV pools' bytes of the
    models on it; a cpu or ref device is no GPU ({"available": false}, as the native API has it)."""
    if served is None:
        return {"available": False}
    choice = served.model.device_choice
    if not choice.name.is_gpu:
        return {"available": False, "device": choice.name}
    check: dict = {"available": True, "device": choice.name, "target": choice.target}
    memory_info = getattr(served.model.device, "memory_info", None)  # (free, total) bytes, if the device tells
    if memory_info is not None:
        free, total = memory_info()
        used = total - free
        check["memory"] = {
            "free_bytes": free,
            "total_bytes": total,
            "used_bytes": used,
            "free_mb": free >> 20,
            "total_mb": total >> 20,
            "used_mb": used >> 20,
            "utilization_percent": round(100 * used / total) if total else 0,
            "kv_cache_bytes": sum(
                kv_pool_bytes(s.model) for s in every or (served,) if s.model.device_choice == choice
            ),
        }
    return check


def kv_pool_bytes(model: LoadedModel) -> int:
    """Bytes of a loaded model's KV pool (K and V of every layer, every block)."""
    return model.kv_pool.num_blocks * model.kv_pool.block_size * model.kv_bytes_per_token


class ReadyResource:
    operations = {
        "get": Operation(
            "Readiness: 200 once every model is loaded, 503 before and while draining",
            reply={JSON: READY},
            errors=(503,),
            public=True,
        )
    }

    def __init__(self, handle: EngineHandle, lifecycle: Lifecycle):
        self._handle = handle
        self._lifecycle = lifecycle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._lifecycle.draining or not self._handle.is_ready():
            raise ApiError(falcon.HTTP_503, "Service Unavailable", headers={"Retry-After": "1"})
        resp.media = {"ready": True, "service": SERVICE_NAME}


class ModelsResource:
    operations = {"get": Operation("The served models", reply={JSON: MODELS}, errors=(503,))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._handle.check_up()
        every = self._handle.all_served()
        stats = [s.prompts.stats() for s in every]
        resp.media = {
            "models": [
                {
                    # the native API's three fields, then the model card's. `path` is the model file
                    # the bundle was compiled from, as the compiler recorded it (its name), and
                    # `bundle` the name of the bundle's directory: never a path of the serving
                    # machine (docs/security.md, "Who sees what")
                    "path": s.model.manifest.get("source", {}).get("file", ""),
                    "bundle": s.model.bundle.root.name,
                    "size": bundle_size(s),
                    "metadata": s.model.manifest["model"].get("gguf_metadata", {}),
                    **model_card(s),
                    "tokenizer_cache": stats[i],
                }
                for i, s in enumerate(every)
            ],
            "tokenizer_cache": {k: sum(st[k] for st in stats) for k in ("hits", "misses", "bytes")},
        }


class MetricsResource:
    """Needs the API key when keys are set, unless `public` (--public-metrics): scrapers of
    /metrics (Prometheus' pod annotations, llm-d's endpoint picker) send none."""

    def __init__(self, registry: CollectorRegistry, public: bool = False):
        self._registry = registry
        self.operations = {"get": Operation("Prometheus metrics", reply={TEXT: ANY_TEXT}, public=public)}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self._registry)


class TracesResource:
    """Traces name every request's id, and an id opens its text to whoever may call /status
    with it: so they are the admin key's (`--admin-api-key`), or everyone's only when the
    operator says so (`--public-traces`, the native API's open endpoint)."""

    LIMIT = Field("limit", Kind.INTEGER, minimum=0, description="the newest N traces; absent: all")
    CLEAR = Field("clear", Kind.BOOLEAN, False, description="drop the traces kept")
    operations = {
        "get": Operation("Sampled requests as OTLP JSON", reply={JSON: TRACES}, errors=(400, 403), query=(LIMIT, CLEAR))
    }

    def __init__(self, traces: TraceStore, config: ServerConfig):
        self._traces = traces
        self._public = config.public_traces

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not (self._public or req.context.get("admin")):
            raise ApiError(
                falcon.HTTP_403,
                "traces are private: send the admin key (--admin-api-key), or start the server with --public-traces",
                code="forbidden",
            )
        limit = read_query(req, self.LIMIT)
        clear = read_query(req, self.CLEAR)
        resp.media = self._traces.export(limit=limit, clear=clear)
