"""`rfc sign BUNDLE --key KEY`, and the trust options `rfc verify` and `rfc serve` share."""

import os
from pathlib import Path

import click

from rfc.artifacts import BundleError
from rfc.cli.errors import fail

KEY_PASSWORD_ENV = "RFC_SIGNING_KEY_PASSWORD"


def signer_options(f):
    """--key (with --certificate / --certificate-chain) or --sigstore, for compile and sign."""
    f = click.option(
        "--sigstore",
        "sigstore",
        is_flag=True,
        help="Sign keyless with Sigstore and the CI's OIDC identity (needs the network; not reproducible).",
    )(f)
    f = click.option(
        "--signing-certificate",
        "signing_certificate",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        default=None,
        help="With --key: sign with this certificate for the key (PEM).",
    )(f)
    f = click.option(
        "--signing-chain",
        "signing_chain",
        multiple=True,
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="With --signing-certificate: the certificates up to the root (repeatable).",
    )(f)
    return f


def make_signer(key: Path | None, certificate: Path | None, chain: tuple[Path, ...], sigstore: bool):
    """The signer the options ask for, None for none; one line and exit 2 on a contradiction."""
    from rfc.cli.signing import KeySigner, SigstoreSigner

    if sigstore and key:
        fail("choose a key or --sigstore, not both")
    if (certificate or chain) and not key:
        fail("--signing-certificate and --signing-chain sign with a key: give it")
    if sigstore:
        return SigstoreSigner()
    if key is None:
        return None
    return KeySigner(
        private_key=key, password=os.environ.get(KEY_PASSWORD_ENV), certificate=certificate, chain=tuple(chain)
    )


def sign_or_fail(bundle: Path, signer) -> Path:
    from rfc.cli.signing import SignatureError, sign_bundle

    try:
        return sign_bundle(bundle, signer)
    except (SignatureError, BundleError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or bundle}: {e.strerror or e}")


@click.command("sign")
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help=f"PEM EC private key (P-256/384/521; password from ${KEY_PASSWORD_ENV}). Signatures are "
    f"deterministic (RFC 6979).",
)
@signer_options
def sign_cmd(
    bundle: Path, key: Path | None, signing_certificate: Path | None, signing_chain: tuple[Path, ...], sigstore: bool
) -> None:
    """Sign every file of BUNDLE (OpenSSF model-signing) into BUNDLE/model.sig."""
    signer = make_signer(key, signing_certificate, signing_chain, sigstore)
    if signer is None:
        fail("give --key KEY (or --sigstore)")
    click.echo(f"signed {bundle} -> {sign_or_fail(bundle, signer)}", err=True)


def trust_options(f):
    """What a signature must verify against: a public key, a certificate chain, or a keyless
    Sigstore identity."""
    f = click.option("--oidc-issuer", default=None, help="With --identity: the OIDC issuer that certified it.")(f)
    f = click.option(
        "--identity",
        default=None,
        help="Keyless Sigstore signer identity (e-mail or workflow URI); needs --oidc-issuer.",
    )(f)
    f = click.option(
        "--certificate-chain",
        "certificate_chain",
        multiple=True,
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Verify a certificate signature against these PEM certificates (repeatable).",
    )(f)
    return f


def make_trust(
    public_key: Path | None, certificate_chain: tuple[Path, ...], identity: str | None, oidc_issuer: str | None
):
    """The trust the options name, None for none."""
    from rfc.cli.signing import CertificateTrust, PublicKeyTrust, SigstoreTrust

    given = [x for x in (public_key, certificate_chain or None, identity) if x]
    if len(given) > 1:
        fail("verify against one of a public key, a certificate chain or a Sigstore identity")
    if identity or oidc_issuer:
        if not (identity and oidc_issuer):
            fail("--identity and --oidc-issuer go together")
        return SigstoreTrust(identity, oidc_issuer)
    if certificate_chain:
        return CertificateTrust(tuple(certificate_chain))
    return PublicKeyTrust(public_key) if public_key else None


def check_signatures(bundles: list[Path], trust) -> dict[Path, Path]:
    """Every bundle is signed as `trust` requires, or one line and exit 2: run before anything
    of a bundle is loaded. Returns each bundle's real path, the directory that was verified
    (a bundle reached through a link is served from there)."""
    from rfc.cli.signing import SignatureError, verify_signature

    verified = {}
    for bundle in bundles:
        try:
            verified[bundle] = verify_signature(bundle, trust)
        except SignatureError as e:
            fail(str(e))
    return verified
