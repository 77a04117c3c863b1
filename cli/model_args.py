"""Model arguments of `rfc serve` and `rfc run`: a bundle directory is used as it is; a GGUF
file is compiled into the bundle cache first (cli/gguf_cache.py), for the targets of `--arch` or
else this host's own (cli/host_targets.py); a registry reference
(`localhost:5000/models/demo:cpu`) is pulled into the OCI cache first (cli/oci.py)."""

import os
from collections.abc import Sequence
from pathlib import Path

import click

from rfc.cli.errors import fail
from rfc.cli.gguf_cache import CompileRequest, cache_root, cached_bundle, is_gguf
from rfc.cli.host_targets import host_targets

# A file in --models-dir whose name ends so holds one registry reference to serve.
REFERENCE_SUFFIX = ".ref"


def bundle_paths(
    paths: Sequence[Path | str],
    targets: Sequence[str] = (),
    chat_template: Path | None = None,
    cache_dir: Path | None = None,
    registry=None,
) -> list[Path]:
    """Bundle directories for `paths`; exits with one line on a GGUF that does not compile or
    a reference that does not pull (through `registry`, a RegistryOptions; None: the defaults)."""
    from rfc.cli.oci import is_reference

    out = []
    host = None  # detected once, for the first GGUF without --arch
    for path in paths:
        if is_reference(str(path)):
            out.append(_pulled(str(path), cache_root(cache_dir), registry))
            continue
        path = Path(path)
        if not is_gguf(path):
            out.append(path)  # a bundle, or not (or nothing): the manifest reader says which
            continue
        if not targets and host is None:
            host = host_targets()
        why = "--arch" if targets else host.describe()
        out.append(
            _compiled(
                CompileRequest(path, tuple(targets) or host.targets, chat_template),
                cache_root(cache_dir) / "bundles",
                why,
            )
        )
    return out


def model_names(paths: Sequence[Path | str]) -> list[str | None]:
    """The id each argument asks for: a GGUF's file name without .gguf (its cached bundle's
    directory name carries the cache key); None for a bundle or a reference (the bundle's own
    name decides)."""
    return [Path(path).stem if os.path.lexists(path) and is_gguf(Path(path)) else None for path in paths]


def model_references(models_dir: Path) -> list[str]:
    """The references named by `*.ref` files directly in `models_dir` (one per file; blank
    lines and # comments skipped), by file name: how a ConfigMap names registry bundles."""
    refs = []
    for path in sorted(Path(models_dir).glob("*" + REFERENCE_SUFFIX)):
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read {path}: {e}")
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if len(lines) != 1:
            fail(f"{path} must hold exactly one registry reference")
        refs.append(lines[0])
    return refs


def _pulled(text: str, cache_dir: Path, registry) -> Path:
    from rfc.artifacts import BundleError
    from rfc.cli.oci import OciError, parse_reference
    from rfc.cli.oci_pull import pull_bundle
    from rfc.cli.oci_cmd import registry_options

    reference = parse_reference(text)
    click.echo(f"rfc: pulling {reference} into {cache_dir / 'oci'}", err=True)
    try:
        return pull_bundle(reference, cache_dir, registry or registry_options(False))
    except (OciError, BundleError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or text}: {e.strerror or e}")


def _compiled(request: CompileRequest, cache_dir: Path, why: str) -> Path:
    """The cached bundle of `request`; the first line said names its targets and where they
    came from (`why`: --arch, or what was detected on this host), compiled now or before."""
    from rfc.compiler.errors import CompileError

    compiled = []

    def announce(gguf: Path, bundle: Path) -> None:
        compiled.append(bundle)
        click.echo(
            f"rfc: compiling {gguf} for {', '.join(request.targets)} [{why}] into {bundle} (once; later runs reuse it)",
            err=True,
        )

    try:
        bundle = cached_bundle(request, cache_dir, announce)
        if not compiled:
            click.echo(f"rfc: {request.gguf} compiled for {', '.join(request.targets)} [{why}]: {bundle}", err=True)
        return bundle
    except CompileError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or request.gguf}: {e.strerror or e}")
