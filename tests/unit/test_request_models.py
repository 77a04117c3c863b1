"""Request models (runtime/server/fields.py) and the OpenAPI document made from them
(runtime/server/openapi.py): a handler can only read what its model declares, every declared
field is checked, and the document covers every route and method the app answers."""

import falcon
import falcon.testing
import jsonschema
import pytest
from openapi_spec_validator import validate

from rfc.runtime.server import EngineHandle, ServerConfig, create_app
from rfc.runtime.server.errors import ERROR_SCHEMAS, ApiError, Dialect, error_body
from rfc.runtime.server.fields import Field, Kind, RequestModel, UndeclaredField
from rfc.runtime.server.openapi import OPENAPI_PATH, Operation, Routes, document

MODEL = RequestModel(
    "Example",
    (
        Field("n", Kind.INTEGER, 1, minimum=1, maximum=4),
        Field("p", Kind.NUMBER, 0.5, 0.0, 1.0, exclusive_minimum=True),
        Field("name", Kind.STRING, required=True),
        Field("mode", Kind.STRING, "a", enum=("a", "b")),
        Field("items", Kind.JSON, [], schema={"type": "array"}),
    ),
)


def _refused(body: dict) -> ApiError:
    with pytest.raises(ApiError) as e:
        MODEL.read(body)
    assert e.value.status.startswith("400")
    return e.value


def test_fields_take_defaults_and_check_types_and_ranges():
    f = MODEL.read({"name": "x", "n": 2.0, "p": None})
    assert (f.integer("n"), f.number("p"), f.string("mode"), f.raw("items")) == (2, 0.5, "a", [])
    assert _refused({}).message == "'name' is required"
    assert _refused({"name": "x", "n": 5}).message == "'n' must be <= 4, got 5"
    assert _refused({"name": "x", "n": True}).param == "n"
    assert _refused({"name": "x", "p": 0}).message == "'p' must be > 0.0, got 0"
    assert _refused({"name": "x", "p": 10**400}).param == "p"
    assert _refused({"name": "x", "mode": "c"}).message == "'mode' must be one of a, b"


def test_every_declared_field_is_checked_even_when_unread():
    # a handler that never reads `n` on this request still refuses a wrong one
    assert _refused({"name": "x", "n": "many"}).param == "n"


def test_a_nested_model_names_its_fields_by_path():
    with pytest.raises(ApiError) as e:
        MODEL.read({"name": "x", "n": 0}, "options.")
    assert e.value.param == "options.n"


def test_a_closed_model_refuses_fields_it_does_not_declare():
    assert MODEL.read({"name": "x", "extra": 1}).string("name") == "x"  # open: extras are other servers'
    closed = RequestModel("Closed", MODEL.fields, closed=True)
    assert closed.read({"name": "x", "n": 2}).integer("n") == 2
    for body, prefix, field in (({"name": "x", "extra": 1}, "", "extra"), ({"name": "x", "k" * 999: 1}, "o.", None)):
        with pytest.raises(ApiError) as e:
            closed.read(body, prefix)
        assert e.value.status.startswith("400") and len(e.value.message) < 300
        assert field is None or (e.value.param == field and e.value.message.startswith(f"'{field}' is not a field"))
    schema = closed.json_schema()
    assert schema["additionalProperties"] is False and "additionalProperties" not in MODEL.json_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "extra": 1}, schema)


def test_reading_an_undeclared_field_or_another_kind_is_a_bug():
    f = MODEL.read({"name": "x"})
    with pytest.raises(UndeclaredField):
        f.integer("max_tokens")
    with pytest.raises(UndeclaredField):
        f.string("n")
    with pytest.raises(UndeclaredField):
        f.has("stream")


def test_the_schema_says_what_the_reader_takes():
    schema = MODEL.json_schema()
    assert schema["required"] == ["name"]
    n = schema["properties"]["n"]
    assert n["type"] == ["integer", "null"] and (n["minimum"], n["maximum"], n["default"]) == (1, 4, 1)
    assert schema["properties"]["p"]["exclusiveMinimum"] == 0.0
    for body in ({"name": "x", "n": 3, "mode": None}, {"name": "x", "items": [1]}):
        jsonschema.validate(body, schema)
        MODEL.read(body)
    for body in ({"name": "x", "n": 9}, {"n": 1}, {"name": "x", "mode": "z"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)
        _refused(body)


@pytest.mark.parametrize("keys", [(), ("k",)])
def test_the_document_is_valid_and_covers_every_route(keys):
    app = create_app(EngineHandle(["m"]), ServerConfig(api_keys=keys))
    client = falcon.testing.TestClient(app)
    r = client.simulate_get(OPENAPI_PATH)  # no key needed, like the probes
    assert r.status_code == 200
    doc = r.json
    validate(doc)
    ops = {(path, method) for path, item in doc["paths"].items() for method in item}
    for path in (
        "/generate",
        "/v1/chat/completions",
        "/v1/messages",
        "/api/chat",
        "/status/{request_id}",
        OPENAPI_PATH,
    ):
        assert any(p == path for p, _ in ops), path
    assert ("post", "/cancel/{request_id}") in {(m, p) for p, m in ops}
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "413", "415", "503"} <= set(chat["responses"]) and ("401" in chat["responses"]) == bool(keys)
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert "messages" in doc["components"]["schemas"]["ChatCompletionRequest"]["required"]


def test_a_responder_without_an_operation_is_refused():
    class Undocumented:
        operations = {"get": Operation("get")}

        def on_get(self, req, resp): ...

        def on_post(self, req, resp): ...

    with pytest.raises(AssertionError, match="responders"):
        Routes(falcon.App()).add("/x", Undocumented())


@pytest.mark.parametrize(
    "path, dialect",
    [
        ("/generate", Dialect.NATIVE),
        ("/v1/completions", Dialect.OPENAI),
        ("/v1/messages", Dialect.ANTHROPIC),
        ("/api/chat", Dialect.OLLAMA),
    ],
)
@pytest.mark.parametrize("status", [400, 401, 404, 413, 500, 503])
def test_every_error_matches_its_dialects_schema(path, dialect, status):
    jsonschema.validate(error_body(path, status, "message", "field", "code"), ERROR_SCHEMAS[dialect])


def test_the_document_of_no_routes_is_still_an_openapi_document():
    validate(document([], ServerConfig()))
