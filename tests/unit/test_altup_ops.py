"""gemma3n's AltUp ops and gaussian_topk in a plan: validate_plan takes them as artifacts/plan.py
documents them and refuses, one line each, a stream count out of range, an active stream past
the last, coefficient rows of the wrong width, streams that are not whole, a prediction written
over its own input, and a sparsity row too short for an unbiased std."""

import dataclasses

import pytest

from rfc.artifacts.errors import BundleError
from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan, validate_plan

N, E = 4, 16


def _plan(*ops: Op, **widths: int) -> Plan:
    buffers = {
        "x": E,
        "y": (N - 1) * E,
        "hs": N * E,
        "c16": N * N,
        "pred": N * E,
        "act": E,
        "c4": N,
        "out": N * E,
        **widths,
    }
    ends = (Buffer("tokens", ("T",), "i32"), Buffer("logits", ("R", 8)), Buffer("hidden", ("R", E)))
    return Plan(
        (*ends, *(Buffer(n, ("T", w)) for n, w in buffers.items())),
        ops,
        KVSpec(1, 1, 8),
        "tokens",
        "logits",
        "hidden",
        8,
        E,
        64,
    )


GOOD = (
    Op("altup_stack", ("x", "y"), ("hs",), (), {"n_altup": N}),
    Op("altup_predict", ("hs", "c16"), ("pred", "act"), (), {"n_altup": N, "active": 0}),
    Op("altup_correct", ("pred", "x", "c4"), ("out", "act"), ("scale",), {"n_altup": N, "active": 3}),
    Op("altup_add", ("out", "x"), ("out", "act"), (), {"n_altup": N, "first": 0}),
    Op("altup_add", ("out", "x"), ("pred", "y"), (), {"n_altup": N, "first": 1}),
    Op("altup_merge", ("out", "y"), ("x",), (), {"n_altup": N, "active": 1}),
    Op("gaussian_topk", ("x",), ("x",), (), {"std_mul": 1.6448533535003662}),
)


def test_the_ops_as_documented_pass():
    validate_plan(_plan(*GOOD))


@pytest.mark.parametrize("index,change,message", [
    (1, {"attrs": {"n_altup": 1, "active": 0}}, "n_altup = 1"),
    (1, {"attrs": {"n_altup": 17, "active": 0}}, "n_altup = 17"),
    (1, {"attrs": {"n_altup": N, "active": N}}, "active = 4"),
    (1, {"inputs": ("hs", "c4")}, "coefs[T, 16]"),
    (2, {"inputs": ("pred", "x", "c16")}, "coefs[T, 4]"),
    (0, {"inputs": ("y", "x")}, "inputs are not"),
    (1, {"outputs": ("hs", "act")}, "pred is hs"),
    (2, {"outputs": ("pred", "act")}, "out is pred"),
    (4, {"attrs": {"n_altup": N, "first": 2}}, "sub width 48 is not streams 2.. of 4"),
    (4, {"attrs": {"n_altup": N, "first": 4}}, "first = 4"),
    (3, {"outputs": ("out", "out")}, "sub is hs or out"),
    (5, {"inputs": ("out", "c16")}, "u[T, 48]"),
])  # fmt: skip
def test_malformed_ops_are_refused(index, change, message):
    ops = list(GOOD)
    ops[index] = dataclasses.replace(ops[index], **change)
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        validate_plan(_plan(*ops))
    assert "\n" not in str(e.value)


def test_streams_must_be_whole_and_topk_rows_long_enough():
    with pytest.raises(BundleError, match="is not 4 streams"):
        validate_plan(
            _plan(Op("altup_predict", ("hs", "c16"), ("pred", "act"), (), {"n_altup": N, "active": 0}), hs=N * E + 1)
        )
    with pytest.raises(BundleError, match="fewer than 2 values"):
        validate_plan(_plan(Op("gaussian_topk", ("one",), ("one",), (), {"std_mul": 1.0}), one=1))
