"""Ollama's keep_alive as rfc reads it (runtime/server/model_sources.py): Go durations as
time.ParseDuration writes them, or a number of seconds; negative is forever (None), 0 unloads
once idle; anything else is a ValueError (the route's 400 naming keep_alive)."""

import math

import pytest

from rfc.runtime.server.model_sources import MAX_KEEP_ALIVE_S, parse_keep_alive


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h0m0s", 3600.0),
        ("1.5s", 1.5),
        ("300ms", 0.3),
        ("2h45m10.5s", 9910.5),
        ("0", 0.0),
        (0, 0.0),
        ("0s", 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("45", 45.0),
        (" 10m ", 600.0),
        ("-1", None),
        (-1, None),
        ("-5m", None),
        ("-1ns", None),
        (MAX_KEEP_ALIVE_S + 1, None),  # longer than ten years: forever
    ],
)
def test_durations(value, seconds):
    got = parse_keep_alive(value)
    assert got == seconds if seconds is None else math.isclose(got, seconds)


@pytest.mark.parametrize(
    "value", ["", "five minutes", "5x", "m5", "1h-30m", "--1", True, None, [], {}, float("nan"), "nan"]
)
def test_refusals(value):
    with pytest.raises(ValueError):
        parse_keep_alive(value)
