"""Request models: every route's JSON body declared once, as frozen `Field`s, and read through.

A handler reads its body through its route's `RequestModel` (`CHAT.read(body).integer(
"max_tokens")`): the type, range, default and presence checks come from the Field, and the
OpenAPI document (runtime/server/openapi.py) is generated from the same Fields, so the two
cannot disagree. Reading a field the model does not declare is a programming error
(`UndeclaredField`, a 500 that the tests catch), never a silent default.

A field that is absent or null takes its default; unknown fields are ignored (clients send
extras meant for other servers), except in a `closed` model (a body whose published schema
forbids other fields, as OpenAI's embeddings request does): there one is a 400 naming it. A structured field (messages,
tools, response_format…) is `Kind.JSON`: the reader hands it over as sent and its handler checks it, in more detail and
with more precise messages than a schema validator would; its `schema` documents what the
handler accepts and must never be stricter than it (the fuzz test holds it to that)."""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from enum import Enum
from typing import Any

from rfc.runtime.server.errors import bad_request
from rfc.runtime.text.values import is_finite_number, shown


class Kind(Enum):
    STRING = "string"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    NUMBER = "number"
    JSON = "json"  # checked by its handler against `Field.schema`


class UndeclaredField(LookupError):
    """A handler read a field its request model does not declare (a bug, not a client error)."""


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    default: Any = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    required: bool = False
    enum: tuple[str, ...] = ()  # strings: the values accepted
    exclusive_minimum: bool = False  # `minimum` itself is refused
    description: str = ""
    schema: Mapping | None = None  # Kind.JSON: the shapes its handler accepts

    def but(self, **changes: Any) -> "Field":
        """This field with other settings (another default, range or description)."""
        return replace(self, **changes)

    def read(self, body: Mapping, path: str) -> Any:
        """The field's value in `body`, checked; `path` names it in messages (`options.top_p`)."""
        value = body.get(self.name)
        if value is None:
            if self.required:
                raise bad_request(f"'{path}' is required", path)
            return self.default
        return _CHECKS[self.kind](self, value, path)

    def json_schema(self, nullable: bool = True) -> dict:
        """The field's shape; optional body fields may be null (a query parameter cannot)."""
        if self.kind is Kind.JSON:
            schema = dict(self.schema or {})
        else:
            schema = {"type": self.kind.value}
            if self.enum:
                schema["enum"] = list(self.enum)
            if self.minimum is not None:
                schema["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
            if self.maximum is not None:
                schema["maximum"] = self.maximum
        if nullable and not self.required:  # null is the default, as absence is
            schema = {"anyOf": [schema, {"type": "null"}]} if self.kind is Kind.JSON else _nullable(schema)
        if self.description:
            schema["description"] = self.description
        if self.default is not None:
            schema["default"] = self.default
        return schema


def _nullable(schema: dict) -> dict:
    out = dict(schema, type=[schema["type"], "null"])
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _string(f: Field, value: object, path: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"'{path}' must be a string", path)
    if f.enum and value not in f.enum:
        raise bad_request(f"'{path}' must be one of {', '.join(f.enum)}", path)
    return value


def _boolean(f: Field, value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"'{path}' must be a boolean", path)
    return value


def _integer(f: Field, value: object, path: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{path}' must be an integer, got {shown(value)}", path)
    _check_range(f, value, path)
    return value


def _number(f: Field, value: object, path: str) -> float:
    if not is_finite_number(value):
        raise bad_request(f"'{path}' must be a finite number, got {shown(value)}", path)
    _check_range(f, value, path)
    return float(value)


def _check_range(f: Field, value: int | float, path: str) -> None:
    # integers of any size are compared, never converted
    if f.minimum is not None and (value < f.minimum or (f.exclusive_minimum and value == f.minimum)):
        raise bad_request(
            f"'{path}' must be {'>' if f.exclusive_minimum else '>='} {f.minimum}, got {shown(value)}", path
        )
    if f.maximum is not None and value > f.maximum:
        raise bad_request(f"'{path}' must be <= {f.maximum}, got {shown(value)}", path)


_CHECKS = {
    Kind.STRING: _string,
    Kind.BOOLEAN: _boolean,
    Kind.INTEGER: _integer,
    Kind.NUMBER: _number,
    Kind.JSON: lambda f, value, path: value,
}


@dataclass(frozen=True)
class RequestModel:
    """One JSON body: its fields, and its name as a schema of the OpenAPI document."""

    name: str
    fields: tuple[Field, ...]
    description: str = ""
    example: Mapping | None = None  # a body that works (the document shows it; fuzzers start from it)
    closed: bool = False  # a field it does not declare is a 400 (its published schema forbids others)
    _index: dict = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {f.name: f for f in self.fields}
        assert len(index) == len(self.fields), f"{self.name} declares a field twice"
        object.__setattr__(self, "_index", index)

    def field(self, name: str) -> Field:
        try:
            return self._index[name]
        except KeyError:
            raise UndeclaredField(f"{self.name} does not declare the field '{name}'") from None

    def read(self, body: Mapping, prefix: str = "") -> "RequestFields":
        """`body` read and checked (`prefix`: where a nested model sits, for messages: `options.`)."""
        return RequestFields(self, body, prefix)

    def json_schema(self) -> dict:
        return {
            "type": "object",
            "properties": {f.name: f.json_schema() for f in self.fields},
            **(
                {"required": [f.name for f in self.fields if f.required]}
                if any(f.required for f in self.fields)
                else {}
            ),
            **({"description": self.description} if self.description else {}),
            **({"examples": [self.example]} if self.example is not None else {}),
            **({"additionalProperties": False} if self.closed else {}),
        }


class RequestFields:
    """A body read through its model. Every declared field is checked when the body is read,
    whether or not this request goes on to use it (an option the request's path ignores is
    refused as surely as one it uses); each accessor checks the field's declared kind too."""

    def __init__(self, model: RequestModel, body: Mapping, prefix: str = ""):
        self.model = model
        self._body = body
        if model.closed:
            unknown = next((k for k in body if k not in model._index), None)
            if unknown is not None:
                name = unknown if len(unknown) <= 64 else shown(unknown)  # a key is a client's string
                raise bad_request(
                    f"'{prefix}{name}' is not a field of this request "
                    f"(it takes {', '.join(f.name for f in model.fields)})",
                    prefix + name,
                )
        self._values = {f.name: f.read(body, prefix + f.name) for f in model.fields}

    def has(self, name: str) -> bool:
        self.model.field(name)
        return self._body.get(name) is not None

    def string(self, name: str) -> str | None:
        return self._read(name, Kind.STRING)

    def boolean(self, name: str) -> bool:
        return self._read(name, Kind.BOOLEAN)

    def integer(self, name: str) -> int | None:
        return self._read(name, Kind.INTEGER)

    def number(self, name: str) -> float | None:
        return self._read(name, Kind.NUMBER)

    def raw(self, name: str) -> Any:
        """A structured field as sent (its default when absent or null), for its handler to check."""
        return self._read(name, Kind.JSON)

    def sent(self, name: str) -> Any:
        """A field as the client sent it (None when absent): for replies that echo it."""
        self.model.field(name)
        return self._body.get(name)

    def _read(self, name: str, kind: Kind) -> Any:
        f = self.model.field(name)
        if f.kind is not kind:
            raise UndeclaredField(f"{self.model.name}.{name} is declared {f.kind.value}, read as {kind.value}")
        return self._values[name]


def at_default(value: object, *defaults: object) -> bool:
    """Whether a field another server defines, which this one does not implement, was left
    unset (null) or at one of its defaults: those are accepted, any other value refused. A
    boolean matches only a boolean default (True == 1 in Python)."""
    return value is None or any(value == d and isinstance(value, bool) == isinstance(d, bool) for d in defaults)


def read_query(req, f: Field):
    """A query parameter (falcon parses it: a wrong value is its 400, naming the parameter)."""
    if f.kind is Kind.INTEGER:
        return req.get_param_as_int(f.name, min_value=f.minimum, max_value=f.maximum, default=f.default)
    if f.kind is Kind.BOOLEAN:
        return req.get_param_as_bool(f.name, default=f.default)
    if f.kind is Kind.STRING:
        value = req.get_param(f.name, default=f.default)
        if value is not None and f.enum and value not in f.enum:
            raise bad_request(f"query parameter '{f.name}' must be one of {', '.join(f.enum)}", f.name)
        return value
    raise UndeclaredField(f"query parameters of kind {f.kind.value} are not read")
