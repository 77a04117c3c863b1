"""The error of a request the engine cannot take. Declared below every layer that refuses one:
the engine (runtime/engine/requests.py) and the grammar limits (runtime/sampling/grammar_limits.py)."""


class RequestError(ValueError):
    """A request the engine cannot take (too long for the context, empty prompt...)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name
