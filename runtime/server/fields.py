"""Typed access to the fields of a JSON request body; a wrong field is a 400 that names it.

A field that is absent or null takes its default; unknown fields are ignored (clients send
extras meant for other servers)."""

from rfc.runtime.server.errors import bad_request
from rfc.runtime.values import is_finite_number, shown


class RequestFields:
    def __init__(self, body: dict):
        self._body = body

    def has(self, name: str) -> bool:
        return self._body.get(name) is not None

    def raw(self, name: str, default=None):
        value = self._body.get(name)
        return default if value is None else value

    def string(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self._present(name, default, required)
        if value is not None and not isinstance(value, str):
            raise bad_request(f"'{name}' must be a string", name)
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._present(name, default, False)
        if not isinstance(value, bool):
            raise bad_request(f"'{name}' must be a boolean", name)
        return value

    def integer(self, name: str, default: int | None, minimum: int | None = None, maximum: int | None = None) -> int | None:
        value = self._present(name, default, False)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"'{name}' must be an integer, got {shown(value)}", name)
        self._check_range(name, value, minimum, maximum)
        return value

    def number(self, name: str, default: float | None, minimum: float | None = None, maximum: float | None = None) -> float | None:
        value = self._present(name, default, False)
        if value is None:
            return None
        if not is_finite_number(value):
            raise bad_request(f"'{name}' must be a finite number, got {shown(value)}", name)
        self._check_range(name, value, minimum, maximum)
        return float(value)

    def _present(self, name: str, default, required: bool):
        value = self._body.get(name)
        if value is None:
            if required:
                raise bad_request(f"'{name}' is required", name)
            return default
        return value

    @staticmethod
    def _check_range(name: str, value, minimum, maximum) -> None:
        if minimum is not None and value < minimum:
            raise bad_request(f"'{name}' must be >= {minimum}, got {shown(value)}", name)
        if maximum is not None and value > maximum:
            raise bad_request(f"'{name}' must be <= {maximum}, got {shown(value)}", name)
