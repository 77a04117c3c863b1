"""Signing and verifying bundles with OpenSSF model-signing (the CLI's side: the runtime and
rfc.artifacts never import it).

The signature is model-signing's own format (a Sigstore bundle holding a DSSE envelope over an
in-toto statement listing every file of the directory with its sha256), written as
`model.sig` in the bundle (artifacts/signature.py): upstream `model_signing verify` checks it
too. It covers every file, manifest.json and provenance.json included; only the signature
itself is left out. Verification hashes the directory afresh, so a changed byte, a file
added or removed, or a signature made with another key is refused.

Key signing is ECDSA (P-256, P-384 or P-521: the curves model-signing's key signer takes; it
has no ed25519 signer). A plain ECDSA signature draws a random nonce, so two signatures of one
bundle differ; here the nonce is derived from the key and the message (RFC 6979) and the
signed statement is serialized with sorted keys, so `rfc compile --sign` stays
byte-reproducible. Verifiers cannot tell the difference (docs/reproducible.md).
"""

import base64
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import read_manifest, verify_files
from rfc.artifacts.signature import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, unlisted_files


class SignatureError(Exception):
    """A bundle has no valid signature for the trust asked for; the message is one line."""


@dataclass(frozen=True)
class PublicKeyTrust:
    """Signatures made with the private half of this PEM public key."""

    public_key: Path


@dataclass(frozen=True)
class CertificateTrust:
    """Signatures by a certificate that chains to these PEM certificates."""

    chain: tuple[Path, ...]


@dataclass(frozen=True)
class SigstoreTrust:
    """Keyless Sigstore signatures by this identity (an e-mail or a CI workflow's URI), as
    certified by this OIDC issuer (needs the network: Fulcio's roots and Rekor)."""

    identity: str
    oidc_issuer: str


Trust = PublicKeyTrust | CertificateTrust | SigstoreTrust


@dataclass(frozen=True)
class KeySigner:
    """A PEM EC private key (and, to sign with a certificate, its certificate and chain)."""

    private_key: Path
    password: str | None = None
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SigstoreSigner:
    """Keyless Sigstore signing with the CI's ambient OIDC token (GitHub Actions: `id-token:
    write`); not reproducible: the certificate and the transparency-log entry are new each time."""

    identity_token: str | None = None


Signer = KeySigner | SigstoreSigner


def sign_bundle(root: Path, signer: Signer) -> Path:
    """Writes root/model.sig over every file of the bundle; refuses a bundle that does not
    verify or holds files its manifest does not list (a signature would vouch for them)."""
    manifest = read_manifest(root)
    problems = verify_files(root, manifest) + [
        f"{rel}: not listed in the manifest" for rel in unlisted_files(root, manifest)
    ]
    if problems:
        raise BundleError(f"will not sign {root}: " + "; ".join(problems[:5]))
    from model_signing import manifest as ms_manifest
    from model_signing._signing import signing as ms_signing

    files = _hashing_config().hash(Path(root))
    # The statement's subject names the bundle by its id, not by this directory's name, so the
    # signature does not depend on where the bundle was written.
    serialization = ms_manifest.SerializationType.from_args(files.serialization_type)
    items = [serialization.new_item(rd.identifier, rd.digest) for rd in files.resource_descriptors()]
    payload = ms_signing.Payload(ms_manifest.Manifest(f"rfc-bundle-{manifest['bundle_id']}", items, serialization))
    signature = _signer(signer).sign(payload)
    out = Path(root) / SIGNATURE_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE_FILE}.", dir=root)
    os.close(fd)
    try:
        signature.write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def verify_signature(root: Path, trust: Trust) -> Path:
    """Raises SignatureError (one line) unless root/model.sig is a valid signature, under
    `trust`, of exactly the files in the bundle directory. Returns the directory verified: the
    bundle root resolved once to its real path (so `models/x -> builds/v1` verifies builds/v1);
    serve that path, not the link, and a link changed afterwards cannot swap in an unchecked
    bundle. Links inside the bundle are still refused."""
    given = Path(root)
    root = Path(os.path.realpath(given))
    signature = root / SIGNATURE_FILE
    if not root.is_dir():
        raise SignatureError(f"{given} is not a bundle directory")
    if not signature.is_file() or signature.is_symlink():
        raise SignatureError(f"bundle {given} is not signed (no {SIGNATURE_FILE})")
    if signature.stat().st_size > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            f"bundle {given}: {SIGNATURE_FILE} is larger than the {MAX_SIGNATURE_BYTES >> 10} KiB a "
            f"signature may be: refused unread"
        )
    try:
        from model_signing import verifying
    except ImportError:
        raise SignatureError("signatures need the distribute extra: pip install 'rfc[distribute]'") from None

    config = verifying.Config().set_hashing_config(_hashing_config())
    try:
        if isinstance(trust, PublicKeyTrust):
            config.use_elliptic_key_verifier(public_key=trust.public_key)
        elif isinstance(trust, CertificateTrust):
            config.use_certificate_verifier(certificate_chain=list(trust.chain))
        else:
            config.use_sigstore_verifier(identity=trust.identity, oidc_issuer=trust.oidc_issuer)
    except (OSError, ValueError, TypeError) as e:
        raise SignatureError(f"cannot use the verification key: {_one_line(e)}") from None
    try:
        config.verify(root, signature)
    except Exception as e:  # model-signing raises ValueError, cryptography's InvalidSignature, KeyError on bad JSON...
        raise SignatureError(f"bundle {given}: signature check failed: {_reason(e)}") from None
    return root


def _hashing_config():
    """Every file by sha256, symlinks refused, only the signature left out: model-signing's
    default also skips .git*, which would let a `.gitignore` planted in a bundle pass."""
    from model_signing import hashing

    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False, ignore_paths=[Path(SIGNATURE_FILE)])
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    )


def _signer(signer: Signer):
    if isinstance(signer, SigstoreSigner):
        from model_signing._signing import sign_sigstore

        return sign_sigstore.Signer(
            use_ambient_credentials=signer.identity_token is None, identity_token=signer.identity_token
        )
    try:
        if signer.certificate is not None:
            from model_signing._signing import sign_certificate

            return sign_certificate.Signer(signer.private_key, signer.certificate, list(signer.chain))
        return _DeterministicKeySigner(signer.private_key, signer.password)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise SignatureError(f"cannot use the signing key {signer.private_key}: {_one_line(e)}") from None


def _deterministic_key_signer_class():
    from cryptography.hazmat.primitives.asymmetric import ec
    from model_signing._signing import sign_ec_key, sign_sigstore_pb
    from model_signing._signing import signing as ms_signing
    from sigstore_models import intoto as intoto_pb
    from sigstore_models.bundle import v1 as bundle_pb

    class DeterministicKeySigner(sign_ec_key.Signer):
        """model-signing's EC key signer, with two changes that make equal bundles get equal
        signature bytes: the statement is JSON with sorted keys (protobuf's JSON printer
        orders map keys by hash seed), and ECDSA's nonce comes from RFC 6979."""

        def sign(self, payload):
            raw = json.dumps(_message_dict(payload.statement.pb), sort_keys=True, indent=2).encode()
            algorithm = ec.ECDSA(
                sign_ec_key.get_ec_key_hash(self._private_key.public_key()), deterministic_signing=True
            )
            sig = self._private_key.sign(sign_sigstore_pb.pae(raw), algorithm)
            envelope = intoto_pb.Envelope(
                payload=base64.b64encode(raw),
                payload_type=ms_signing._IN_TOTO_JSON_PAYLOAD_TYPE,
                signatures=[intoto_pb.Signature(sig=base64.b64encode(sig), keyid="")],
            )
            return sign_sigstore_pb.Signature(
                bundle_pb.Bundle(
                    media_type=sign_sigstore_pb._BUNDLE_MEDIA_TYPE,
                    verification_material=self._get_verification_material(),
                    dsse_envelope=envelope,
                )
            )

    return DeterministicKeySigner


def _DeterministicKeySigner(private_key: Path, password: str | None):
    return _deterministic_key_signer_class()(private_key, password.encode() if password else None)


def _message_dict(message) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(message)


def _reason(e: Exception) -> str:
    text = _one_line(e) or type(e).__name__
    if type(e).__name__ == "InvalidSignature":
        return "the signature does not match (another key, or the signed statement was changed)"
    if not text.startswith("Signature mismatch"):
        return text[:400]
    # model-signing's mismatch message quotes both digests of every changed file: name the files
    found = []
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)", text)
    if changed:
        found.append("changed since signing: " + ", ".join(changed))
    for kind, what in (("Extra", "not covered by the signature"), ("Missing", "signed but missing")):
        m = re.search(kind + r" files found in model '[^']*': ([^\"\]]+)", text) or re.search(
            kind + r" files in model '[^']*': ([^\"\]]+)", text
        )
        if m:
            found.append(f"{what}: {m.group(1).strip(chr(39))}")
    return "; ".join(found)[:400] or text[:400]


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
