"""`rfc inspect` and `rfc verify`: read a bundle through rfc.artifacts alone."""

import json
from pathlib import Path

import click

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import open_bundle, read_manifest, verify_files
from rfc.cli.errors import CHECK_FAILED, fail


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_cmd(bundle: Path, as_json: bool) -> None:
    """Describe a compiled BUNDLE: model, parameters, formats, targets, sizes, id."""
    try:
        m = read_manifest(bundle)
        summary = _summary(m)
    except BundleError as e:
        fail(str(e))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        fail(f"manifest.json of {bundle} is malformed ({type(e).__name__}: {str(e)[:100]})")
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(f"bundle      {bundle}  (id {summary['bundle_id']}, format {summary['format_version']}, rfc {summary['rfc_version']})")
    click.echo(f"model       {summary['model']}  ({summary['architecture']}, {summary['parameter_count']:,} parameters)")
    click.echo(f"source      {summary['source'].get('file')}  sha256 {summary['source'].get('sha256', '')[:16]}…")
    click.echo("formats     " + ", ".join(f"{k}×{v}" for k, v in summary["formats"].items()))
    click.echo("targets     " + ", ".join(summary["targets"]))
    click.echo("hparams     " + ", ".join(f"{k}={v}" for k, v in summary["hparams"].items()))
    click.echo(f"size        {summary['total_size']:,} bytes")
    for name, size in sorted(summary["files"].items()):
        click.echo(f"  {size:>14,}  {name}")


def _summary(m: dict) -> dict:
    return {
        "bundle_id": m["bundle_id"],
        "format_version": ".".join(map(str, m["format_version"])),
        "rfc_version": m.get("rfc_version"),
        "model": m["model"]["name"],
        "architecture": m["model"]["architecture"],
        "parameter_count": m["model"]["parameter_count"],
        "formats": m["model"]["formats"],
        "targets": [t["name"] for t in m["targets"]],
        "source": m.get("source", {}),
        "hparams": m["model"]["hparams"],
        "files": {name: f["size"] for name, f in m["files"].items()},
        "total_size": sum(f["size"] for f in m["files"].values()),
    }


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
def verify_cmd(bundle: Path) -> None:
    """Re-hash every file of BUNDLE against its manifest."""
    try:
        m = read_manifest(bundle)
    except BundleError as e:
        fail(str(e))
    problems = verify_files(bundle, m)
    if not problems:
        # hashes match: now what they vouch for must make sense (layout, plan, shapes)
        try:
            open_bundle(bundle, verify=False).close()
        except BundleError as e:
            problems.append(str(e))
    if problems:
        for p in problems:
            click.echo(f"rfc: verify: {p}", err=True)
        raise SystemExit(CHECK_FAILED)
    click.echo(f"ok: {len(m['files'])} files match the manifest of bundle {m['bundle_id']}")
