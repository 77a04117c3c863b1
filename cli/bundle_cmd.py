"""`rfc inspect` and `rfc verify`: read a bundle through rfc.artifacts alone."""

import json
from pathlib import Path

import click

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import open_bundle, read_manifest, read_plan, verify_files
from rfc.artifacts.provenance import provenance_summary, read_provenance
from rfc.artifacts.signature import SIGNATURE_FILE, unlisted_files
from rfc.cli.errors import CHECK_FAILED, fail
from rfc.cli.sign_cmd import make_trust, trust_options


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_cmd(bundle: Path, as_json: bool) -> None:
    """Describe a compiled BUNDLE: model, parameters, formats, targets, sizes, id."""
    try:
        m = read_manifest(bundle)
        summary = _summary(m)
        statement = read_provenance(bundle, m)
        summary["provenance"] = provenance_summary(statement) if statement else None
        summary["signed"] = (bundle / SIGNATURE_FILE).is_file()
        plan = read_plan(bundle, m)
        summary["recurrent_state"] = _state_summary(plan)
        summary["kv_bytes_per_token"] = _kv_bytes(plan)
        summary["rope"] = any(op.kind == "rope" for op in plan.ops)
    except BundleError as e:
        fail(str(e))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        fail(f"manifest.json of {bundle} is malformed ({type(e).__name__}: {str(e)[:100]})")
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(
        f"bundle      {bundle}  (id {summary['bundle_id']}, format {summary['format_version']}, rfc "
        f"{summary['rfc_version']})"
    )
    click.echo(
        f"model       {summary['model']}  ({summary['architecture']}, {summary['parameter_count']:,} parameters)"
    )
    click.echo(f"source      {summary['source'].get('file')}  sha256 {summary['source'].get('sha256', '')[:16]}…")
    click.echo("formats     " + ", ".join(f"{k}×{v}" for k, v in summary["formats"].items()))
    click.echo("targets     " + ", ".join(summary["targets"]))
    # a model whose plan rotates nothing (ALiBi, learned or no positions) shows no RoPE settings
    shown = {k: v for k, v in summary["hparams"].items() if summary["rope"] or k not in _ROPE_FIELDS}
    click.echo("hparams     " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    click.echo(f"size        {summary['total_size']:,} bytes")
    state = summary["recurrent_state"]
    if state:
        click.echo(
            f"state       {state['bytes_per_sequence']:,} bytes per sequence ({state['tensors']} tensors, "
            f"layers {', '.join(map(str, state['layers']))}), none per token beyond the KV cache"
        )
    if summary.get("kv_bytes_per_token"):
        click.echo(
            "kv cache    bytes per token: "
            + ", ".join(f"{t} {n:,}" for t, n in summary["kv_bytes_per_token"].items())
            + " (--cache-type-k/-v)"
        )
    click.echo(
        "signature   " + (f"{SIGNATURE_FILE} (check it: rfc verify --public-key PUB)" if summary["signed"] else "none")
    )
    prov = summary["provenance"]
    if prov:
        epoch = prov["source_date_epoch"]
        click.echo(
            f"provenance  {m['provenance']}: SLSA v1, {prov['subjects']} files, built by rfc "
            f"{prov['rfc_version']}" + (f", SOURCE_DATE_EPOCH={epoch}" if epoch is not None else "")
        )
        model = prov["model"] or {}
        click.echo(f"  from      {model.get('file')}  sha256 {model.get('sha256')}  {model.get('size', 0):,} bytes")
        for target, version in sorted(prov["toolchains"].items()):
            click.echo(f"  {target:<9} {version}")
    else:
        click.echo("provenance  none")
    for name, size in sorted(summary["files"].items()):
        click.echo(f"  {size:>14,}  {name}")


_ROPE_FIELDS = frozenset(("n_rot", "rope_style", "rope_freq_base", "rope_freq_scale", "rope_scaling_type",
                          "rope_freq_factors"))  # fmt: skip


def _kv_bytes(plan) -> dict[str, int]:
    """Bytes a cached token takes per KV-cache type (K and V alike; {} where no type fits)."""
    from rfc.artifacts.kv_cache_type import CacheType, CacheTypeError, KvCacheTypes

    def serves(t: CacheType) -> bool:  # what the loader accepts (KvCacheTypes.check: whole blocks, one geometry)
        try:
            KvCacheTypes(t, t).check(plan.kv, plan.kv_geometries())
        except CacheTypeError:
            return False
        return True

    return {t.value: KvCacheTypes(t, t).token_bytes(plan.kv) for t in CacheType if serves(t)}


def _state_summary(plan) -> dict | None:
    """A hybrid model's recurrent state per sequence (the plan's StateSpec); None without."""
    state = plan.state
    if not state.tensors:
        return None
    return {
        "tensors": len(state.tensors),
        "layers": sorted({t.layer for t in state.tensors}),
        "bytes_per_sequence": state.slot_bytes,
    }


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
@click.option(
    "--public-key",
    "public_key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Also check BUNDLE/model.sig against this PEM public key: every file, none added or missing.",
)
@trust_options
def verify_cmd(
    bundle: Path,
    public_key: Path | None,
    certificate_chain: tuple[Path, ...],
    identity: str | None,
    oidc_issuer: str | None,
) -> None:
    """Re-hash every file of BUNDLE against its manifest (and its signature, with a key)."""
    trust = make_trust(public_key, certificate_chain, identity, oidc_issuer)
    try:
        m = read_manifest(bundle)
    except BundleError as e:
        fail(str(e))
    problems = verify_files(bundle, m)
    if trust is not None:
        problems += [f"{rel}: in the bundle but not in its manifest" for rel in unlisted_files(bundle, m)]
        from rfc.cli.signing import SignatureError, verify_signature

        try:
            verify_signature(bundle, trust)
        except SignatureError as e:
            problems.append(str(e))
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
    click.echo(
        f"ok: {len(m['files'])} files match the manifest of bundle {m['bundle_id']}"
        + (f"; {SIGNATURE_FILE} is a valid signature of every file" if trust is not None else "")
    )
