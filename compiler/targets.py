"""Compile targets: the table lives in rfc.artifacts.targets (the runtime reads it too)."""

from rfc.artifacts.targets import Family, Target, TargetError, parse_target as _parse
from rfc.compiler.errors import CompileError

__all__ = ["Family", "Target", "parse_target", "parse_targets"]


def parse_target(name: str) -> Target:
    try:
        return _parse(name)
    except TargetError as e:
        raise CompileError(str(e)) from None


def parse_targets(names: tuple[str, ...]) -> tuple[Target, ...]:
    """The targets to build, in order, without repeats; none at all is a bundle that only the
    numpy reference device runs."""
    targets: list[Target] = []
    for n in names:
        t = parse_target(n)
        if t not in targets:
            targets.append(t)
    return tuple(targets)
