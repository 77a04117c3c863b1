"""The manifest: magic, format version, provenance, model description and file hashes."""

import json
from typing import Any

from rfc.artifacts.errors import BundleError, BundleVersionError
from rfc.artifacts.hashing import canonical_json, sha256_bytes
from rfc.artifacts.version import BUNDLE_MAGIC, FORMAT_VERSION

MANIFEST_FILE = "manifest.json"


def bundle_id(manifest: dict[str, Any]) -> str:
    """Derived from the content: the manifest (which holds every file's hash) minus the id."""
    body = {k: v for k, v in manifest.items() if k != "bundle_id"}
    return sha256_bytes(canonical_json(body))[:24]


def dump_manifest(manifest: dict[str, Any]) -> bytes:
    # Readable and canonical: sorted keys, fixed indentation, trailing newline.
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{MANIFEST_FILE} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("magic") != BUNDLE_MAGIC:
        raise BundleError(f"{MANIFEST_FILE} does not start an rfc bundle (magic {BUNDLE_MAGIC!r} missing)")
    version = manifest.get("format_version")
    if not (isinstance(version, list) and len(version) == 2 and all(isinstance(v, int) for v in version)):
        raise BundleError(f"{MANIFEST_FILE} has no valid format_version")
    if version[0] != FORMAT_VERSION[0]:
        raise BundleVersionError(
            f"bundle format version {version[0]}.{version[1]} is not supported by this rfc "
            f"(reads {FORMAT_VERSION[0]}.x); recompile the model with this rfc version"
        )
    for key in ("files", "model", "targets", "bundle_id"):
        if key not in manifest:
            raise BundleError(f"{MANIFEST_FILE} lacks {key!r}")
    return manifest
