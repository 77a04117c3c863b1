"""How the CLI reports a user error: one line on stderr, no traceback, a fixed exit status."""

import sys
from typing import NoReturn

import click

USAGE_ERROR = 2  # bad input: the model, the options or the bundle
CHECK_FAILED = 1  # a check the user asked for found a problem (rfc verify)


_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 10))
_CONTROL.update({0x7F: None})


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    # Messages may quote untrusted text: no terminal escapes or carriage returns reach the tty.
    safe = "".join(f"\\x{ord(ch):02x}" if ord(ch) in _CONTROL else ch for ch in message)
    click.echo(f"rfc: error: {safe}", err=True)
    sys.exit(status)
