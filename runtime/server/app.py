"""The Falcon app factory (falcon's examples/look pattern): collaborators come in, the app
goes out. The model may still be loading when the app starts serving: resources ask the
EngineHandle and answer 503 until it is ready."""

import falcon
from prometheus_client import CollectorRegistry

from rfc.runtime.server import (
    anthropic_api,
    model_admin,
    native,
    ollama_api,
    openai_api,
    responses_api,
    service_routes,
    rerank,
    utility_routes,
)
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import handle_unexpected, serialize_error
from rfc.runtime.server.served_models import EngineHandle
from rfc.runtime.server.lifecycle import Lifecycle
from rfc.runtime.server.middleware import ApiKeyMiddleware, RequestLogMiddleware
from rfc.runtime.server.model_manager import ModelManager
from rfc.runtime.server.models import ModelSource
from rfc.runtime.server.openapi import OPENAPI_PATH, OpenApiResource, Routes
from rfc.runtime.server.replica_metrics import ReplicaMetrics
from rfc.runtime.server.telemetry import Telemetry, build_telemetry
from rfc.runtime.server.webui_routes import ROUTE as WEBUI_ROUTE, WebUi, WebUiAssetResource


def create_app(
    handle: EngineHandle,
    config: ServerConfig = ServerConfig(),
    telemetry: Telemetry | None = None,
    lifecycle: Lifecycle | None = None,
    models: ModelManager | None = None,
) -> falcon.App:
    """`telemetry` must be the observer the handle's engine reports to (see serve.py); a
    fresh one is made when omitted (an app whose engine runs unobserved). `lifecycle` counts
    the responses in flight and says when the server drains; `models` loads, unloads and
    replaces the handle's models (omitted: an app over models loaded by its caller)."""
    lifecycle = lifecycle or Lifecycle()
    telemetry = telemetry or build_telemetry(handle, config)
    models = models or ModelManager(handle, lifecycle, _loads_nothing)
    registry = CollectorRegistry(auto_describe=True)  # the app's own, never the global one
    registry.register(telemetry.metrics)
    registry.register(ReplicaMetrics(handle, models))

    middleware: list = [RequestLogMiddleware(lifecycle)]
    if config.cors_origins:
        origins = "*" if "*" in config.cors_origins else list(config.cors_origins)
        middleware.append(falcon.CORSMiddleware(allow_origins=origins, expose_headers=["X-Request-Id", "Retry-After"]))
    webui = WebUi() if config.webui else None
    middleware.append(ApiKeyMiddleware(config.api_keys, config.admin_api_key, is_open=_open_routes(config, webui)))
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)

    routes = Routes(app)
    routes.add("/generate", native.GenerateResource(handle, config))
    routes.add("/generate/stream", native.GenerateResource(handle, config, stream=True))
    routes.add("/status/{request_id:int}", native.StatusResource(handle))
    routes.add("/cancel/{request_id:int}", native.CancelResource(handle))
    routes.add("/models", service_routes.ModelsResource(handle))
    routes.add("/health", service_routes.HealthResource(handle, lifecycle))
    routes.add("/ready", service_routes.ReadyResource(handle, lifecycle))
    routes.add("/metrics", service_routes.MetricsResource(registry, public=config.public_metrics))
    routes.add("/traces", service_routes.TracesResource(telemetry.traces, config))

    routes.add("/v1/models", openai_api.ModelListResource(handle))
    routes.add("/v1/models/{model_id:path}", openai_api.ModelResource(handle))
    routes.add("/v1/completions", openai_api.CompletionsResource(handle, config))
    routes.add("/v1/chat/completions", openai_api.ChatCompletionsResource(handle, config))
    # Further APIs, each in its own module: the Responses API, /v1/embeddings, Anthropic's
    # Messages, Ollama's /api, llama.cpp's /tokenize family and the /v1/integrations routes.
    responses_api.add_routes(routes, handle, config)
    anthropic_api.add_routes(routes, handle, config)
    ollama_api.add_routes(routes, handle, config, webui, models)
    model_admin.add_routes(routes, handle, models, config)
    if webui is not None:  # the page itself is at /, for browsers (ollama_api.RootResource)
        routes.add(WEBUI_ROUTE, WebUiAssetResource(webui))
    utility_routes.add_routes(routes, handle, config)
    rerank.add_routes(routes, handle, config)
    # the document of all the routes above, and of itself
    routes.add(OPENAPI_PATH, OpenApiResource(routes.all, config))
    return app


def _open_routes(config: ServerConfig, webui: WebUi | None):
    """Requests that need no key besides the probes: the web page's files, and /metrics when
    the operator opens it (--public-metrics)."""
    if not config.public_metrics:
        return webui.is_open if webui else None
    return lambda req: req.path == "/metrics" or (webui is not None and webui.is_open(req))


def _loads_nothing(source: ModelSource):
    raise RuntimeError(f"this app cannot load {source.model_id}: its models are loaded by its caller")
