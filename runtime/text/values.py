"""Client values in checks and messages. JSON numbers arrive as Python ints of any size and
strings of any length: `math.isfinite(10**400)` raises OverflowError and `repr` of a
5,000-digit int raises ValueError, so checks and error messages go through these."""

import math

import numpy as np

_SHOWN_CHARS = 60


def is_finite_number(value: object) -> bool:
    """A JSON number (not a bool) that converts to a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    if isinstance(value, int) and value.bit_length() > 1023:
        return False
    return math.isfinite(value)


def shown(value: object) -> str:
    """A short, safe rendering of a client value for an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (str, bytes, list, dict, tuple)) and len(value) > _SHOWN_CHARS:
        text = repr(value[:_SHOWN_CHARS] if not isinstance(value, dict) else "{…}")
        return f"{text}… ({len(value)} long)"
    text = repr(value)
    return text if len(text) <= 2 * _SHOWN_CHARS else text[: 2 * _SHOWN_CHARS] + "…"
