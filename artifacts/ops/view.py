"""The view a shape rule gets of one op (OpView) and the checks rules share.

A rule (OpDef.check) sees the op, its buffers' shapes and, when the plan is checked against a
weight layout, its weights' shapes; it raises PlanError with the op named for anything that
does not fit. Every count and size is checked against a bound before a rule uses it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rfc.artifacts.errors import BundleError

if TYPE_CHECKING:
    from rfc.artifacts.layout import TensorEntry
    from rfc.artifacts.plan import Op, Plan

MAX_WIDTH = 1 << 24  # elements in one activation row (a vocabulary of 16M would still fit)


class PlanError(BundleError):
    """The plan is inconsistent with itself, the op contract or the weight layout."""


def need(cond: bool, message: str) -> None:
    """PlanError(message) unless cond."""
    if not cond:
        raise PlanError(message)


def bounded_int(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def finite(value: object, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    v = float(value)
    return math.isfinite(v) and lo <= v <= hi and not (open_lo and v == lo)


class OpView:
    """One op with its buffers' shapes and, when checking against a layout, its weights'."""

    def __init__(
        self, plan: Plan, buffers: dict, op: Op, where: str, entries: dict[str, TensorEntry] | None, index: int
    ):
        self.plan, self.buffers, self.op, self.where = plan, buffers, op, where
        self.entries, self.index = entries, index

    def need(self, cond: bool, message: str) -> None:
        need(cond, f"{self.where}: {message}")

    def shape(self, name: str) -> tuple:
        return tuple(self.buffers[name].shape)

    def rows(self, name: str) -> str:
        return self.shape(name)[0]

    def width(self, name: str) -> int:
        s = self.shape(name)
        return s[1] if len(s) == 2 else 1

    def float_rows(self, *names: str) -> None:
        for n in names:
            self.need(
                self.buffers[n].dtype == "f32" and len(self.shape(n)) == 2, f"{n} is not a float [rows, width] buffer"
            )

    def weight_shape(self, index: int) -> tuple[int, ...] | None:
        """The shape of the op's index-th weight; None when checking the plan alone."""
        if self.entries is None:
            return None
        return tuple(self.entries[self.op.weights[index]].shape)

    def int_attr(self, name: str, lo: int, hi: int) -> int:
        v = self.op.attr(name)
        self.need(bounded_int(v, lo, hi), f"attribute {name} = {v!r} is not an integer in [{lo}, {hi}]")
        return v

    def real_attr(self, name: str, lo: float, hi: float, open_lo: bool = False) -> float:
        v = self.op.attr(name)
        self.need(
            finite(v, lo, hi, open_lo),
            f"attribute {name} = {v!r} is not a finite number in {'(' if open_lo else '['}{lo}, {hi}]",
        )
        return float(v)

    def choice_attr(self, name: str, choices: tuple[str, ...]) -> str:
        v = self.op.attr(name)
        self.need(
            isinstance(v, str) and v in choices,
            f"attribute {name} = {str(v)[:20]!r} is not one of {', '.join(choices)}",
        )
        return v

    def i32_rows(self, name: str) -> None:
        self.need(
            self.buffers[name].dtype == "i32" and len(self.shape(name)) == 2,
            f"{name} is not an i32 [rows, width] buffer",
        )
