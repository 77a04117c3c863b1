"""Typed errors of the compiler. The CLI prints them as one line and exits with status 2."""


class CompileError(Exception):
    """The input model or the options cannot be compiled."""
