"""`rfc compile` and `rfc tokenizer`."""

import os
import json
import sys
from pathlib import Path

import click

from rfc.cli.errors import fail
from rfc.cli.sign_cmd import KEY_PASSWORD_ENV, make_signer, sign_or_fail, signer_options


@click.command("compile")
@click.argument("model", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--arch",
    "targets",
    multiple=True,
    metavar="TARGET",
    help="Target: cpu (x86-64-v3, default: portable), cpu-avx512, cpu-amx, cpu-generic, gfx* (AMD) or sm_* "
    "(NVIDIA). Repeat for several.",
)
@click.option(
    "--reference-only",
    is_flag=True,
    help="Build no kernels: the bundle runs on the numpy reference device only (`--device ref`).",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Bundle directory (default: bundles/<model name>).",
)
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option(
    "--chat-template",
    "chat_template",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Jinja chat template file to use instead of the GGUF's own (as llama-server's --chat-template-file).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option(
    "--cache-dir",
    envvar="RFC_CACHE_DIR",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="rfc's cache (default: ~/.cache/rfc); compiled kernels go in DIR/kernels. Must be writable by you alone.",
)
@click.option("--no-cache", envvar="RFC_NO_CACHE", is_flag=True, help="Build every kernel afresh; use no cache (CI).")
@click.option(
    "--sign",
    "sign_key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help=f"Sign the bundle with this PEM EC private key (model.sig; password from ${KEY_PASSWORD_ENV}); "
    f"deterministic, "
    "so the signed bundle stays byte-reproducible.",
)
@signer_options
def compile_cmd(
    model: Path | None,
    targets: tuple[str, ...],
    reference_only: bool,
    out_dir: Path | None,
    force: bool,
    chat_template: Path | None,
    quiet: bool,
    cache_dir: Path | None,
    no_cache: bool,
    sign_key: Path | None,
    signing_certificate: Path | None,
    signing_chain: tuple[Path, ...],
    sigstore: bool,
) -> None:
    """Compile MODEL (a GGUF file; default: the embedded demo model) into a bundle."""
    from rfc.cli.gguf_cache import cache_root
    from rfc.compiler.errors import CompileError
    from rfc.compiler.pipeline import CompileOptions, compile_model, demo_model_path

    if reference_only and targets:
        fail("--reference-only builds no kernels: it cannot be combined with --arch")
    signer = make_signer(sign_key, signing_certificate, signing_chain, sigstore)
    model = model or demo_model_path()
    out_dir = out_dir or Path("bundles") / model.stem
    progress = _BarProgress() if (not quiet and sys.stderr.isatty()) else None
    kernels = None if no_cache else cache_root(cache_dir) / "kernels"
    options = CompileOptions(
        model=model,
        out_dir=out_dir,
        targets=() if reference_only else targets or ("cpu",),
        force=force,
        cache_dir=kernels,
        chat_template=chat_template,
        source_date_epoch=_source_date_epoch(),
    )
    try:
        result = compile_model(options, progress)
    except CompileError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or model}: {e.strerror or e}")
    if signer is not None:
        sign_or_fail(result.out_dir, signer)
    if not quiet:
        click.echo(
            f"compiled {model.name} -> {result.out_dir} ({_human(result.size)}, "
            f"{', '.join(t['name'] for t in result.manifest['targets']) or 'reference device only'}) in "
            f"{result.seconds:.1f}s",
            err=True,
        )
        if not targets and not reference_only:  # after success: an error stays one line
            from rfc.cli.host_targets import compile_hint, host_targets

            click.echo(f"rfc: {compile_hint(host_targets())}", err=True)


def _source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org): recorded in the bundle's provenance."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    if not value.isdigit():
        fail(f"SOURCE_DATE_EPOCH must be a non-negative integer of seconds, not {value[:40]!r}")
    return int(value)


@click.command("tokenizer")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write tokenizer.json.",
)
def tokenizer_cmd(model: Path, out: Path) -> None:
    """Write the Hugging Face tokenizer.json built from MODEL's vocabulary."""
    from rfc.compiler.errors import CompileError
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.tokenizer import TokenizerError, build_tokenizer, strip_spec

    try:
        metadata = read_gguf(model).metadata
        if metadata.get("tokenizer.ggml.model") == "t5":
            fail("a Unigram ('t5') vocabulary tokenizes as llama.cpp does only with rfc's runtime, which "
                 "searches it as llama.cpp does (a tokenizer.json alone cannot say how): compile a bundle "
                 "with `rfc compile`")  # fmt: skip
        text, _ = build_tokenizer(metadata)
        strip = strip_spec(metadata)
    except (CompileError, TokenizerError) as e:
        fail(str(e))
    if strip is not None:  # the nearest tokenizer.json can say: its lstrip / rstrip drop any whitespace
        document = json.loads(text)
        for token in document["added_tokens"]:
            token["lstrip"], token["rstrip"] = token["id"] in strip["lstrip"], token["id"] in strip["rstrip"]
        text = json.dumps(document, ensure_ascii=False)
        click.echo(
            "note: llama.cpp drops the ASCII whitespace beside some of this vocabulary's special tokens; "
            "tokenizer.json's lstrip / rstrip drop any whitespace (a no-break space too): a bundle "
            "tokenizes exactly",
            err=True,
        )
    out.write_text(text, encoding="utf-8")


class _BarProgress:
    def start(self, total: int) -> None:
        self._bar = click.progressbar(length=total, label="tensors", file=sys.stderr)
        self._bar.__enter__()

    def advance(self, name: str) -> None:
        self._bar.update(1)

    def finish(self) -> None:
        self._bar.__exit__(None, None, None)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
