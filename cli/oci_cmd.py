"""`rfc push BUNDLE REF` and `rfc pull REF [-o DIR]`: bundles in OCI registries (cli/oci.py)."""

import os
from pathlib import Path

import click

from rfc.artifacts import BundleError
from rfc.cli.errors import fail


DEFAULT_TIMEOUT_S = 60.0  # (cli/oci.py's defaults, here without importing it)
DEFAULT_PULL_TIMEOUT_S = 3600.0


def registry_options(
    insecure: bool, timeout_s: float = DEFAULT_TIMEOUT_S, pull_timeout_s: float = DEFAULT_PULL_TIMEOUT_S
):
    """The registry settings from the flags and the environment (the CLI is the edge)."""
    from rfc.cli.oci import RegistryOptions

    docker_config = os.environ.get("DOCKER_CONFIG")
    return RegistryOptions(
        insecure=insecure,
        docker_config=Path(docker_config) / "config.json" if docker_config else None,
        timeout_s=timeout_s,
        pull_timeout_s=pull_timeout_s,
    )


def insecure_option(f):
    return click.option(
        "--insecure",
        envvar="RFC_INSECURE_REGISTRY",
        is_flag=True,
        help="Speak plain HTTP to the registry: only for a registry on this machine (localhost, 127.0.0.1, ::1).",
    )(f)


def timeout_options(f):
    """--registry-timeout and --pull-timeout, for every command that pulls."""
    f = click.option(
        "--pull-timeout",
        envvar="RFC_PULL_TIMEOUT",
        default=DEFAULT_PULL_TIMEOUT_S,
        show_default=True,
        type=click.FloatRange(min=0.1, max=7 * 86400.0),
        help="Seconds one pull may take in all, manifest to last byte; then it stops (what arrived is "
        "kept for the next pull).",
    )(f)
    return registry_timeout_option(f)


def registry_timeout_option(f):
    return click.option(
        "--registry-timeout",
        envvar="RFC_REGISTRY_TIMEOUT",
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        type=click.FloatRange(min=0.1, max=86400.0),
        help="Seconds to connect to the registry, and the longest it may stay silent in a request.",
    )(f)


def parse_ref(text: str):
    from rfc.cli.oci import parse_reference

    ref = parse_reference(text)
    if ref is None:
        fail(
            f"{text!r} is not a registry reference (REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST], e.g. "
            f"localhost:5000/models/demo:cpu)"
        )
    return ref


@click.command("push")
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("reference")
@insecure_option
@registry_timeout_option
def push_cmd(bundle: Path, reference: str, insecure: bool, registry_timeout: float) -> None:
    """Push BUNDLE to an OCI registry as REFERENCE (one layer per file: only changed files upload)."""
    from rfc.cli.oci import OciError, push_bundle

    ref = parse_ref(reference)
    try:
        result = push_bundle(bundle, ref, registry_options(insecure, registry_timeout))
    except (OciError, BundleError) as e:
        fail(str(e))
    click.echo(
        f"rfc: pushed {len(result.uploaded)} layers ({len(result.reused)} already in the registry)"
        + (f"; provenance attached as {result.referrer}" if result.referrer else ""),
        err=True,
    )
    click.echo(f"{ref.registry}/{ref.repository}@{result.digest}")


@click.command("pull")
@click.argument("reference")
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Copy the bundle here (default: print its path in the cache).",
)
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option(
    "--cache-dir",
    envvar="RFC_CACHE_DIR",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="rfc's cache (default: ~/.cache/rfc); pulled artifacts go in DIR/oci. Must be writable by you alone.",
)
@insecure_option
@timeout_options
def pull_cmd(
    reference: str,
    out_dir: Path | None,
    force: bool,
    cache_dir: Path | None,
    insecure: bool,
    registry_timeout: float,
    pull_timeout: float,
) -> None:
    """Pull the bundle REFERENCE names into the cache (digests checked), and print where it is."""
    from rfc.cli.gguf_cache import cache_root
    from rfc.cli.oci import OciError
    from rfc.cli.oci_pull import export_bundle, pull_bundle

    ref = parse_ref(reference)
    try:
        path = pull_bundle(ref, cache_root(cache_dir), registry_options(insecure, registry_timeout, pull_timeout))
        if out_dir is not None:
            path = export_bundle(path, out_dir, force)
    except (OciError, BundleError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or reference}: {e.strerror or e}")
    click.echo(str(path))
