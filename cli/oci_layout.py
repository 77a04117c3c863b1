"""How a bundle looks as an OCI artifact (CNCF ModelPack media types where they fit), and the
checks a pulled artifact passes before any of it is used. Pure functions: cli/oci.py moves
the bytes.

One layer per bundle file, uncompressed, so a layer's digest is the file's sha256 — the same
hash manifest.json records — and a new build re-uploads only the files that changed:

    manifest  application/vnd.oci.image.manifest.v1+json
              artifactType application/vnd.cncf.model.manifest.v1+json
    config    application/vnd.cncf.model.config.v1+json   (ModelPack config: name, family,
              parameter size, formats; modelfs.diff_ids = the layer digests)
    layers    weights.bin                         application/vnd.cncf.model.weight.v1.raw
              manifest.json, tokenizer.json, plan, layout, chat template
                                                  application/vnd.cncf.model.weight.config.v1.raw
              kernels/**                          application/vnd.cncf.model.code.v1.raw
              provenance.json                     application/vnd.in-toto+json
              model.sig                           application/vnd.dev.sigstore.bundle.v0.3+json
    each layer: org.cncf.model.filepath and org.opencontainers.image.title = its bundle path

The provenance is also pushed as a referrer of the bundle's manifest (`subject`), an artifact
of type application/vnd.in-toto+json whose one layer is provenance.json.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfc.artifacts import BundleError
from rfc.artifacts.hashing import canonical_json, sha256_bytes
from rfc.artifacts.manifest import MANIFEST_FILE, MAX_FILES, bundle_id, check_relpath, parse_manifest
from rfc.artifacts.manifest import MAX_MANIFEST_BYTES as MAX_BUNDLE_MANIFEST_BYTES
from rfc.artifacts.provenance import MEDIA_TYPE as IN_TOTO_MEDIA_TYPE, PROVENANCE_FILE
from rfc.artifacts.signature import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, SIGNATURE_MEDIA_TYPE
from rfc.artifacts.layout import WEIGHTS_FILE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"

FILEPATH = "org.cncf.model.filepath"
TITLE = "org.opencontainers.image.title"
# rfc's own manifest annotations (reverse-domain names, as OCI asks)
BUNDLE_ID = "io.rocmforge.rfc.bundle.id"
BUNDLE_FORMAT = "io.rocmforge.rfc.bundle.format"
RFC_VERSION = "io.rocmforge.rfc.version"
TARGETS = "io.rocmforge.rfc.targets"
SOURCE_SHA256 = "io.rocmforge.rfc.source.sha256"
SIGNED = "io.rocmforge.rfc.signed"

MAX_MANIFEST_BYTES = 4 << 20  # an OCI manifest: 4 MiB, as distribution's own limit
MAX_LAYER_BYTES = 1 << 40  # any one layer (a descriptor's size beyond this is refused as damaged)
# files whose size the bundle format bounds: refused from the descriptor, before their first byte
LAYER_LIMITS = {MANIFEST_FILE: MAX_BUNDLE_MANIFEST_BYTES, SIGNATURE_FILE: MAX_SIGNATURE_BYTES}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def layer_media_type(rel: str) -> str:
    if rel == WEIGHTS_FILE:
        return WEIGHT
    if rel == SIGNATURE_FILE:
        return SIGNATURE_MEDIA_TYPE
    if rel == PROVENANCE_FILE:
        return IN_TOTO_MEDIA_TYPE
    if rel.startswith("kernels/"):
        return CODE
    return WEIGHT_CONFIG


def bundle_layers(manifest: dict[str, Any], manifest_bytes: bytes, signature: bytes | None) -> list[dict[str, Any]]:
    """The layer descriptors, manifest.json first, then the listed files by path, then the
    signature when there is one."""
    entries = [(MANIFEST_FILE, "sha256:" + sha256_bytes(manifest_bytes), len(manifest_bytes))]
    entries += [(rel, "sha256:" + meta["sha256"], meta["size"]) for rel, meta in sorted(manifest["files"].items())]
    if signature is not None:
        entries.append((SIGNATURE_FILE, "sha256:" + sha256_bytes(signature), len(signature)))
    return [
        {"mediaType": layer_media_type(rel), "digest": digest, "size": size, "annotations": {FILEPATH: rel, TITLE: rel}}
        for rel, digest, size in entries
    ]


def model_config(manifest: dict[str, Any], layers: list[dict[str, Any]]) -> bytes:
    """The ModelPack config blob. Nothing in it varies between pushes of one bundle (no
    creation time), so the artifact's digest is a function of the bundle alone."""
    model = manifest["model"]
    config = {
        "descriptor": {"name": model["name"], "family": model["architecture"]},
        "config": {
            "architecture": "transformer",
            "format": "rfc-bundle",
            "paramSize": _param_size(model["parameter_count"]),
            "quantization": ",".join(sorted(model["formats"])),
        },
        "modelfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    return canonical_json(config)


def artifact_manifest(manifest: dict[str, Any], config: bytes, layers: list[dict[str, Any]], signed: bool) -> bytes:
    model = manifest["model"]
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODEL_ARTIFACT,
        "config": {"mediaType": MODEL_CONFIG, "digest": "sha256:" + sha256_bytes(config), "size": len(config)},
        "layers": layers,
        "annotations": {
            TITLE: model["name"],
            "org.cncf.model.name": model["name"],
            "org.cncf.model.architecture": model["architecture"],
            "org.cncf.model.format": "rfc-bundle",
            "org.cncf.model.param.size": str(model["parameter_count"]),
            "org.cncf.model.quantization": ",".join(sorted(model["formats"])),
            BUNDLE_ID: manifest["bundle_id"],
            BUNDLE_FORMAT: ".".join(map(str, manifest["format_version"])),
            RFC_VERSION: str(manifest.get("rfc_version")),
            TARGETS: ",".join(t["name"] for t in manifest["targets"]),
            SOURCE_SHA256: str(manifest.get("source", {}).get("sha256", "")),
            SIGNED: "true" if signed else "false",
        },
    }
    return canonical_json(body)


def provenance_referrer(subject: bytes, provenance: dict[str, Any], bundle: str) -> bytes:
    """An artifact manifest whose subject is the bundle's manifest: registries that speak
    the referrers API list it under the bundle; others find it through the fallback tag."""
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": IN_TOTO_MEDIA_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": "sha256:" + sha256_bytes(EMPTY_JSON), "size": len(EMPTY_JSON)},
        "layers": [provenance],
        "subject": {"mediaType": OCI_MANIFEST, "digest": "sha256:" + sha256_bytes(subject), "size": len(subject)},
        "annotations": {BUNDLE_ID: bundle, "in-toto.io/predicate-type": "https://slsa.dev/provenance/v1"},
    }
    return canonical_json(body)


def referrers_tag(digest: str) -> str:
    """The OCI 1.1 fallback tag that lists a manifest's referrers on registries without the
    referrers API (sha256:abc... -> sha256-abc...)."""
    return digest.replace(":", "-")


def add_referrer(index: dict[str, Any] | None, descriptor: dict[str, Any]) -> dict[str, Any]:
    index = (
        index
        if isinstance(index, dict) and isinstance(index.get("manifests"), list)
        else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    )
    if all(m.get("digest") != descriptor["digest"] for m in index["manifests"] if isinstance(m, dict)):
        index["manifests"].append(descriptor)
    return index


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor, as far as rfc reads one: its media type, digest and size."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Layer:
    """A bundle file as a layer: its path inside the bundle, digest and size."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class Artifact:
    """A pulled OCI manifest, typed: what kind of artifact, its config and its layers."""

    artifact_type: str | None
    config: Descriptor
    layers: tuple[Layer, ...]


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise BundleError(f"the OCI manifest's {what} is not a descriptor (an object)")
    media_type, digest, size = value.get("mediaType", ""), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or len(media_type) > 255:
        raise BundleError(f"the OCI manifest's {what} has no media type string")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise BundleError(f"the OCI manifest's {what} has no sha256 digest")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_LAYER_BYTES:
        raise BundleError(f"the OCI manifest's {what} has no size from 0 to {MAX_LAYER_BYTES >> 40} TiB")
    return Descriptor(media_type, digest, size)


def _string_map(value: Any, what: str) -> dict[str, str]:
    """OCI annotations: a map of strings to strings, or absent."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BundleError(f"the OCI manifest's {what} annotations are not a map of strings")
    return value


def parse_artifact(data: bytes) -> Artifact:
    """A pulled OCI manifest decoded into typed values (as containerd decodes into typed
    structs): every field rfc reads has its type checked here, before any use."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"the OCI manifest is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        m = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BundleError("the OCI manifest is not JSON") from None
    if not isinstance(m, dict) or m.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        raise BundleError("not an OCI image manifest (an index or another kind of manifest)")
    artifact_type = m.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise BundleError("the OCI manifest's artifactType is not a string")
    config = _descriptor(m.get("config"), "config")
    layers = m.get("layers")
    if not isinstance(layers, list) or not layers or len(layers) > MAX_FILES + 3:
        raise BundleError("the artifact's layers are missing or too many")
    out = []
    for i, value in enumerate(layers):
        d = _descriptor(value, f"layer {i}")
        path = _string_map(value.get("annotations"), f"layer {i}").get(FILEPATH)
        out.append(Layer(check_relpath(path, "layer path"), d.digest, d.size))
    return Artifact(artifact_type, config, tuple(out))


def check_artifact(data: bytes) -> tuple[Artifact, list[tuple[str, str, int]]]:
    """A pulled OCI manifest: (the artifact, [(bundle path, digest, size)]) after checking it is
    an rfc bundle whose every layer names a plain path inside the bundle, once, and whose
    manifest.json and model.sig layers are no larger than those files may be (before a byte
    of them is downloaded)."""
    artifact = parse_artifact(data)
    kind = artifact.artifact_type or artifact.config.media_type
    if kind != MODEL_ARTIFACT and artifact.config.media_type != MODEL_CONFIG:
        raise BundleError(f"not an rfc bundle (artifact type {kind[:80]!r})")
    out, seen = [], set()
    for layer in artifact.layers:
        if layer.path in seen:
            raise BundleError(f"layer {layer.path} appears twice")
        limit = LAYER_LIMITS.get(layer.path)
        if limit is not None and layer.size > limit:
            raise BundleError(
                f"layer {layer.path} is {layer.size} bytes, more than the {_size(limit)} such a file may be"
            )
        seen.add(layer.path)
        out.append((layer.path, layer.digest, layer.size))
    if MANIFEST_FILE not in seen:
        raise BundleError(f"the artifact has no {MANIFEST_FILE} layer")
    return artifact, out


def check_bundle_layers(manifest_bytes: bytes, layers: list[tuple[str, str, int]]) -> dict[str, Any]:
    """The bundle's own manifest (from its verified layer) must list exactly the other layers,
    with the same digests and sizes: then the layers are the bundle, nothing more or less."""
    manifest = parse_manifest(manifest_bytes)
    if bundle_id(manifest) != manifest.get("bundle_id"):
        raise BundleError(f"{MANIFEST_FILE}: bundle_id does not match its content")
    files = {rel: (digest, size) for rel, digest, size in layers if rel not in (MANIFEST_FILE, SIGNATURE_FILE)}
    listed = {rel: ("sha256:" + meta["sha256"], meta["size"]) for rel, meta in manifest["files"].items()}
    if files != listed:
        differ = sorted(set(files) ^ set(listed)) or sorted(r for r in files if files[r] != listed[r])
        raise BundleError(f"the artifact's layers do not match its {MANIFEST_FILE}: {', '.join(differ[:5])}")
    return manifest


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _param_size(n: int) -> str:
    """ModelPack's paramSize: a count with at most one decimal and a scale letter (260K, 1.1B)."""
    for scale, letter in ((10**15, "Q"), (10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + letter
    return str(n)


def signature_bytes(root: Path) -> bytes | None:
    path = Path(root) / SIGNATURE_FILE
    if not path.is_file() or path.is_symlink():
        return None
    if path.stat().st_size > MAX_SIGNATURE_BYTES:
        raise BundleError(f"{path}: larger than the {_size(MAX_SIGNATURE_BYTES)} a signature may be")
    return path.read_bytes()
