"""GET /v1/integrations and /v1/integrations/health in the integrations API's shapes (docs/serve.md): the compute
backends this server knows (hip, cuda, cpu, the numpy reference) as integrations, whether
each can run here, its version (the ISA of the compiled targets), and the models it serves.

A GPU backend counts as available when one of the served bundles has a target for it that
this machine runs: rfc only ever runs what was compiled for it. Probing a driver is not free
(HIP and CUDA initialise), so each answer is computed once per server."""

import functools
import platform

import falcon
import numpy as np

from rfc.runtime.devices import probe_reason
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.openapi import Operation, Routes
from rfc.runtime.server.response_schemas import INTEGRATIONS, INTEGRATIONS_HEALTH, JSON

BACKENDS = ("hip", "cuda", "cpu", "reference")
_DEVICE_NAMES = {"hip": "hip", "cuda": "cuda", "cpu": "cpu", "reference": "ref"}


def add_routes(routes: Routes, handle: EngineHandle) -> None:
    routes.add("/v1/integrations", IntegrationsResource(handle))
    routes.add("/v1/integrations/health", IntegrationsHealthResource(handle))


@functools.lru_cache(maxsize=64)
def _probe(family: str, target: str) -> str | None:
    return probe_reason(family, target)


def backend_health(backend: str, served: list[ServedModel]) -> dict:
    models = [s.model_id for s in served if s.model.device_choice.name == _DEVICE_NAMES[backend]]
    if backend == "reference":
        return {
            "available": True,
            "version": f"numpy {np.__version__}",
            "status": "healthy" if models else "idle",
            "models": models,
            "targets": [],
        }
    targets = sorted({t["name"] for s in served for t in s.model.manifest["targets"] if t["family"] == backend})
    isa = sorted(
        {f for s in served for t in s.model.manifest["targets"] if t["family"] == backend for f in t.get("isa", [])}
    )
    reasons = {t: _probe(backend, t) for t in targets}
    runnable = [t for t, reason in reasons.items() if reason is None]
    if backend == "cpu":
        version = " ".join([platform.machine(), *isa]) if runnable else None
    else:
        version = ", ".join(runnable) or None
    health = {
        "available": bool(runnable),
        "version": version,
        "status": "healthy" if models else ("idle" if runnable else "unavailable"),
        "models": models,
        "targets": targets,
    }
    if not runnable:
        health["reason"] = (
            "; ".join(f"{t}: {r}" for t, r in reasons.items()) or f"no served bundle is compiled for {backend}"
        )
    return health


class IntegrationsResource:
    operations = {"get": Operation("The compute backends", reply={JSON: INTEGRATIONS}, errors=(503,))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._handle.check_up()
        served = self._handle.all_served()
        resp.media = {
            "integrations": list(BACKENDS),
            "available": [b for b in BACKENDS if backend_health(b, served)["available"]],
        }


class IntegrationsHealthResource:
    operations = {"get": Operation("Each compute backend's state", reply={JSON: INTEGRATIONS_HEALTH}, errors=(503,))}

    def __init__(self, handle: EngineHandle):
        self._handle = handle

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._handle.check_up()
        served = self._handle.all_served()
        resp.media = {b: backend_health(b, served) for b in BACKENDS}
