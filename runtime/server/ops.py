"""Operational endpoints of the seed API: /health, /ready, /models, /metrics, /traces."""

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rfc.artifacts import RFC_VERSION
from rfc.runtime.server.config import SERVICE_NAME
from rfc.runtime.server.errors import ApiError
from rfc.runtime.server.host import EngineHandle, ServedModel
from rfc.runtime.server.traces import TraceStore

_GPU_FAMILIES = ("hip", "cuda")


class HealthResource:
    """Answers throughout, loaded or not; never needs the API key."""

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        served = self._handle.served
        running = served is not None and served.engine.is_running
        engine = {"running": running, "model_loaded": served is not None}
        if self._handle.load_error:
            engine["error"] = self._handle.load_error
        checks: dict = {"engine": engine, "gpu": _device_check(served)}
        if running:
            counts = served.engine.counts()
            checks["requests"] = {"active": counts["running"], "queued": counts["waiting"]}
            checks["cache"] = {
                "pages_used": counts["pages_used"],
                "pages_total": counts["pages_total"],
                "pages_free": counts["pages_free"],
                "active_sequences": counts["sequences"],
            }
        resp.media = {
            "status": "healthy" if running else "unhealthy",
            "service": SERVICE_NAME,
            "version": RFC_VERSION,
            "checks": checks,
        }


def _device_check(served: ServedModel | None) -> dict:
    if served is None:
        return {"available": False}
    choice = served.model.device_choice
    if choice.name not in _GPU_FAMILIES:
        return {"available": False, "device": choice.name}
    check: dict = {"available": True, "device": choice.name, "target": choice.target}
    memory_info = getattr(served.model.device, "memory_info", None)  # (free, total) bytes, if the device tells
    if memory_info is not None:
        free, total = memory_info()
        check["memory"] = {
            "free_bytes": free,
            "total_bytes": total,
            "free_mb": free >> 20,
            "total_mb": total >> 20,
            "used_mb": (total - free) >> 20,
            "utilization_percent": round(100 * (total - free) / total) if total else 0,
        }
    return check


class ReadyResource:
    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self._handle.is_ready():
            raise ApiError(falcon.HTTP_503, "Service Unavailable", headers={"Retry-After": "1"})
        resp.media = {"ready": True, "service": SERVICE_NAME}


class ModelsResource:
    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        served = self._handle.require()
        manifest = served.model.manifest
        resp.media = {
            "models": [
                {
                    "path": str(served.model.bundle.root.resolve()),
                    "size": sum(f["size"] for f in manifest["files"].values()),
                    "metadata": manifest["model"].get("gguf_metadata", {}),
                }
            ],
            "tokenizer_cache": served.prompts.stats(),
        }


class MetricsResource:
    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self._registry)


class TracesResource:
    def __init__(self, traces: TraceStore):
        self._traces = traces

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=0)
        clear = req.get_param_as_bool("clear", default=False)
        resp.media = self._traces.export(limit=limit, clear=clear)
