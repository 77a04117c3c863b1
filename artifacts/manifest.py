"""The manifest: magic, format version, provenance, model description and file hashes."""

import json
from pathlib import PurePosixPath
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


MAX_MANIFEST_BYTES = 16 << 20
MAX_FILES = 4096
MAX_PATH = 1024

# Manifest fields that name files of the bundle, per target entry.
TARGET_PATH_KEYS = ("kernels", "program")
TARGET_PATH_LIST_KEYS = ("sources",)


def check_relpath(path: Any, what: str) -> str:
    """A path inside the bundle: relative, normalized, plain components, no way out."""
    ok = isinstance(path, str) and 0 < len(path) <= MAX_PATH and "\\" not in path and "\0" not in path
    if ok:
        parts = path.split("/")
        ok = (
            not path.startswith("/")
            and all(p not in ("", ".", "..") and len(p) <= 255 for p in parts)
            and PurePosixPath(path).as_posix() == path
        )
    if not ok:
        shown = repr(path)[:80]
        raise BundleError(f"{MANIFEST_FILE}: {what} {shown} is not a plain relative path inside the bundle")
    return path


def manifest_paths(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, path) for every file the manifest refers to outside its file map."""
    paths = []
    tok = manifest.get("tokenizer")
    if isinstance(tok, dict) and "file" in tok:
        paths.append(("tokenizer file", tok["file"]))
    if manifest.get("chat_template") is not None:
        paths.append(("chat_template", manifest["chat_template"]))
    if manifest.get("provenance") is not None:
        paths.append(("provenance", manifest["provenance"]))
    for i, t in enumerate(manifest.get("targets") or []):
        if not isinstance(t, dict):
            raise BundleError(f"{MANIFEST_FILE}: target {i} is not an object")
        for key in TARGET_PATH_KEYS:
            if t.get(key):
                paths.append((f"target {i} {key}", t[key]))
        for key in TARGET_PATH_LIST_KEYS:
            values = t.get(key) or []
            if not isinstance(values, list):
                raise BundleError(f"{MANIFEST_FILE}: target {i} {key} is not a list")
            paths.extend((f"target {i} {key}", v) for v in values)
    return paths


def check_manifest_paths(manifest: dict[str, Any]) -> None:
    """Every file path is plain and relative, and every path the manifest uses is in the
    hashed file map: nothing outside the bundle, nothing unhashed, is ever opened."""
    files = manifest["files"]
    for rel, meta in files.items():
        check_relpath(rel, "file")
        size = meta.get("size") if isinstance(meta, dict) else None
        digest = meta.get("sha256") if isinstance(meta, dict) else None
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or size < 0
            or not isinstance(digest, str)
            or len(digest) != 64
        ):
            raise BundleError(f"{MANIFEST_FILE}: the entry of {rel} has no valid sha256 and size")
    for what, path in manifest_paths(manifest):
        check_relpath(path, what)
        if path not in files:
            raise BundleError(f"{MANIFEST_FILE}: {what} {path} is not in the hashed file map")


def parse_manifest(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{MANIFEST_FILE} is not valid JSON: {str(e)[:200]}") from None
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
    if not isinstance(manifest["files"], dict) or len(manifest["files"]) > MAX_FILES:
        raise BundleError(f"{MANIFEST_FILE}: files is not a map of at most {MAX_FILES} entries")
    if not isinstance(manifest["targets"], list) or not isinstance(manifest["model"], dict):
        raise BundleError(f"{MANIFEST_FILE}: targets is not a list or model is not an object")
    check_manifest_paths(manifest)
    return manifest
