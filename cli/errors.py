"""How the CLI reports a user error: one line on stderr, no traceback, a fixed exit status."""

import sys
from typing import NoReturn

import click

USAGE_ERROR = 2  # bad input: the model, the options or the bundle
CHECK_FAILED = 1  # a check the user asked for found a problem (rfc verify)


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    click.echo(f"rfc: error: {message}", err=True)
    sys.exit(status)
