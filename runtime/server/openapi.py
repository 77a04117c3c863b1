"""The OpenAPI 3.1 document of every route (`GET /openapi.json`), generated from what the
handlers run on: each resource declares an `Operation` per method it answers — its request
model (runtime/server/fields.py), the fields of its query, its reply and the errors it can
answer — and the router's own path templates give the path parameters. Creating the app
checks that every responder of every route is declared and every declaration answered."""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import falcon

from rfc.artifacts import RFC_VERSION
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import ERROR_SCHEMAS, dialect_of
from rfc.runtime.server.fields import Field, RequestModel
from rfc.runtime.server.response_schemas import JSON, OBJECT

OPENAPI_PATH = "/openapi.json"
METHODS = ("get", "post", "put", "delete", "head", "patch")
# What every JSON body can be refused with (errors.read_json): malformed or invalid, too
# large, not sent as JSON.
BODY_ERRORS = (400, 413, 415)
# Loading, a full queue or a draining server (Retry-After); a `model` that is not served.
MODEL_ERRORS = (404, 503)
_CONVERTER_SCHEMAS = {"int": {"type": "integer"}, "path": {"type": "string"}, None: {"type": "string"}}
_FIELD = re.compile(r"{(\w+)(?::(\w+))?}")


@dataclass(frozen=True)
class Operation:
    summary: str
    body: RequestModel | None = None
    reply: Mapping[str, dict] = field(default_factory=lambda: {JSON: OBJECT})  # 200's media types and shapes
    errors: tuple[int, ...] = ()  # statuses besides 200; the body's and the API key's are added
    query: tuple[Field, ...] = ()
    public: bool = False  # answered without an API key (docs/security.md)
    links: Mapping[str, dict] = field(default_factory=dict)  # OpenAPI links of the 200 reply


@dataclass(frozen=True)
class Route:
    template: str  # falcon's, with converters: /status/{request_id:int}
    resource: object


class Routes:
    """The app's routes, kept in order so the document can list them."""

    def __init__(self, app: falcon.App):
        self._app = app
        self.all: list[Route] = []

    def add(self, template: str, resource: object) -> None:
        _check_declared(template, resource)
        self._app.add_route(template, resource)
        self.all.append(Route(template, resource))


def operations(resource: object) -> Mapping[str, Operation]:
    return getattr(resource, "operations", {})


def _check_declared(template: str, resource: object) -> None:
    answered = {m for m in METHODS if callable(getattr(resource, f"on_{m}", None))}
    declared = set(operations(resource))
    assert answered == declared, f"{template}: responders {sorted(answered)} but operations {sorted(declared)}"


def document(routes: Sequence[Route], config: ServerConfig) -> dict:
    """The document of `routes` as this configuration serves them (an API key adds 401s)."""
    keyed = bool(config.api_keys)
    paths: dict[str, dict] = {}
    schemas: dict[str, dict] = {f"{d.value.capitalize()}Error": s for d, s in ERROR_SCHEMAS.items()}
    for route in routes:
        path = _FIELD.sub(r"{\1}", route.template)
        params = [
            {"name": name, "in": "path", "required": True, "schema": _CONVERTER_SCHEMAS[converter or None]}
            for name, converter in _FIELD.findall(route.template)
        ]
        entry = paths.setdefault(path, {})
        for method, op in operations(route.resource).items():
            entry[method] = _operation(path, method, op, params, keyed and not op.public)
            if op.body is not None:
                schemas[op.body.name] = op.body.json_schema()
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "rfc",
            "version": RFC_VERSION,
            "description": "rfc's native API with its OpenAI, Anthropic, Ollama and llama.cpp dialects "
            "(docs/serve.md).",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if keyed:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        }
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc


def _operation(path: str, method: str, op: Operation, params: list[dict], keyed: bool) -> dict:
    dialect = dialect_of(path)
    error_ref = {"$ref": f"#/components/schemas/{dialect.value.capitalize()}Error"}
    error = {"description": "error", "content": {JSON: {"schema": error_ref}}}
    statuses = set(op.errors) | (set(BODY_ERRORS) if op.body is not None else set())
    if method == "post":
        statuses.add(503)  # a draining server refuses new work
    if keyed:
        statuses.add(401)
    out: dict = {
        "operationId": operation_id(method, path),
        "summary": op.summary,
        "tags": [dialect.value],
        "parameters": params
        + [
            {"name": f.name, "in": "query", "required": False, "schema": f.json_schema(nullable=False)}
            for f in op.query
        ],
        "responses": {
            **(
                {
                    "200": {
                        "description": "success",
                        "content": {media: {"schema": s} for media, s in op.reply.items()},
                        **({"links": dict(op.links)} if op.links else {}),
                    }
                }
                if op.reply
                else {}
            ),
            **{str(s): error for s in sorted(statuses)},
        },
    }
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{op.body.name}"}}},
        }
    if not keyed:
        out["security"] = []
    return out


def operation_id(method: str, path: str) -> str:
    return method + re.sub(r"\W+", "_", path).rstrip("_")


def request_links(expression: str) -> dict[str, dict]:
    """Links from a reply that holds a request id (`expression`: where) to /status and /cancel."""
    return {
        name: {"operationId": operation_id(method, f"/{name}/{{request_id}}"), "parameters": {"request_id": expression}}
        for method, name in (("get", "status"), ("post", "cancel"))
    }


class OpenApiResource:
    """`GET /openapi.json`. Open like the probes: it holds the API's shape, which rfc's source
    publishes anyway, and nothing of the models, the requests or this machine; client
    generators and fuzzers fetch it before they hold a key."""

    operations = {"get": Operation("This document", public=True)}

    def __init__(self, routes: Sequence[Route], config: ServerConfig):
        self._routes = routes
        self._config = config
        self._body: bytes | None = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._body is None:  # the routes are all added by the first request
            self._body = json.dumps(document(self._routes, self._config)).encode()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
