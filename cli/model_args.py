"""Model arguments of `rfc serve` and `rfc run`: a bundle directory is used as it is; a GGUF
file is compiled into the bundle cache first (cli/gguf_cache.py)."""

from collections.abc import Sequence
from pathlib import Path

import click

from rfc.cli.errors import fail
from rfc.cli.gguf_cache import CompileRequest, cache_root, cached_bundle, is_gguf


def bundle_paths(paths: Sequence[Path], targets: Sequence[str] = (), chat_template: Path | None = None,
                 cache_dir: Path | None = None) -> list[Path]:
    """Bundle directories for `paths`; exits with one line on a GGUF that does not compile."""
    out = []
    for path in paths:
        if not is_gguf(path):
            out.append(path)  # a bundle, or not: the manifest reader says which
            continue
        out.append(_compiled(CompileRequest(path, tuple(targets) or ("cpu",), chat_template), cache_root(cache_dir) / "bundles"))
    return out


def model_names(paths: Sequence[Path]) -> list[str | None]:
    """The id each argument asks for: a GGUF's file name without .gguf (its cached bundle's
    directory name carries the cache key); None for a bundle (its own name decides)."""
    return [path.stem if is_gguf(path) else None for path in paths]


def _compiled(request: CompileRequest, cache_dir: Path) -> Path:
    from rfc.compiler.errors import CompileError

    def announce(gguf: Path, bundle: Path) -> None:
        click.echo(f"rfc: compiling {gguf} for {', '.join(request.targets)} into {bundle} (once; later runs reuse it)", err=True)

    try:
        return cached_bundle(request, cache_dir, announce)
    except CompileError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or request.gguf}: {e.strerror or e}")
