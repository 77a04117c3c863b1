"""The `rfc` command line. Commands parse arguments and call one interface function each."""

import sys

import click

from rfc.artifacts import RFC_VERSION
from rfc.cli.compile_cmd import compile_cmd, tokenizer_cmd
from rfc.cli.bundle_cmd import inspect_cmd, verify_cmd
from rfc.cli.client_cmd import cancel_cmd, generate_cmd, health_cmd, models_cmd, status_cmd
from rfc.cli.oci_cmd import pull_cmd, push_cmd
from rfc.cli.sign_cmd import sign_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(RFC_VERSION, prog_name="rfc")
def cli() -> None:
    """rfc: compile GGUF models into reproducible kernel bundles, then run and serve them."""


cli.add_command(compile_cmd)
cli.add_command(tokenizer_cmd)
cli.add_command(inspect_cmd)
cli.add_command(verify_cmd)
cli.add_command(sign_cmd)
cli.add_command(push_cmd)
cli.add_command(pull_cmd)
for _client_cmd in (generate_cmd, status_cmd, cancel_cmd, models_cmd, health_cmd):  # stdlib-only HTTP clients
    cli.add_command(_client_cmd)


def _add_runtime_commands() -> None:
    # Imported here so that `rfc compile` on a CI box never loads the runtime's servers.
    from rfc.cli.bench_cmd import bench_cmd
    from rfc.cli.run_cmd import run_cmd

    cli.add_command(run_cmd)
    cli.add_command(bench_cmd)
    try:
        from rfc.cli.serve_cmd import serve_cmd
    except ImportError:
        return
    cli.add_command(serve_cmd)


def main() -> None:
    _add_runtime_commands()
    sys.exit(cli.main(prog_name="rfc", standalone_mode=True))
