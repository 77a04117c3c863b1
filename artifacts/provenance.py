"""The bundle's build provenance: an in-toto Statement (v1) with a SLSA Provenance (v1)
predicate, written by the compiler as `provenance.json` and listed in the manifest's file map.

It says what went in (the GGUF's sha256 and size, the targets and options, rfc's version,
each toolchain's version, SOURCE_DATE_EPOCH when the build had one) and what came out (every
other bundle file with its sha256: the manifest lists this file's hash in turn, so the
manifest is the one file the statement cannot name). Nothing in it varies between two
builds of the same inputs: no time of day, no host, no path, no user, so it keeps the bundle
byte-reproducible (docs/reproducible.md). A signature over the bundle covers it like any file.
"""

import json
from pathlib import Path
from typing import Any

from rfc.artifacts.errors import BundleError
from rfc.artifacts.version import FORMAT_VERSION, RFC_VERSION

PROVENANCE_FILE = "provenance.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
# URIs naming rfc's compile as a build type and as a builder (SLSA asks for URIs; these name
# no web page, so they are URNs).
BUILD_TYPE = "urn:rfc:buildtype:compile:v1"
BUILDER_ID = "urn:rfc:builder:rfc-compile"
# The OCI media type of a DSSE-less in-toto statement (in-toto's attestation spec).
MEDIA_TYPE = "application/vnd.in-toto+json"
MAX_PROVENANCE_BYTES = 4 << 20


def provenance_statement(
    files: dict[str, dict[str, Any]],
    source: dict[str, Any],
    targets: list[dict[str, Any]],
    options: dict[str, Any],
    source_date_epoch: int | None,
) -> dict[str, Any]:
    """The statement for a bundle whose other files are `files` ({path: {sha256, size}}),
    compiled from `source` ({file, sha256, size}) for the manifest's `targets` entries with the
    compile `options` (JSON values: what the user chose)."""
    toolchains = {t["name"]: t["toolchain"] for t in targets if t.get("toolchain")}
    builder_version = {"rfc": RFC_VERSION}
    for version in toolchains.values():
        builder_version[_program(version)] = version
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": rel, "digest": {"sha256": meta["sha256"]}} for rel, meta in sorted(files.items())],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "model": {"file": source["file"], "sha256": source["sha256"], "size": source["size"]},
                    "targets": [t["name"] for t in targets],
                    **options,
                },
                "internalParameters": {
                    "rfc_version": RFC_VERSION,
                    "format_version": list(FORMAT_VERSION),
                    "source_date_epoch": source_date_epoch,
                    "toolchains": toolchains,
                    "compile_commands": {t["name"]: t["compile_command"] for t in targets if t.get("compile_command")},
                },
                "resolvedDependencies": [
                    {
                        "name": source["file"],
                        "digest": {"sha256": source["sha256"]},
                        "annotations": {"size": source["size"]},
                    },
                ],
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": builder_version}},
        },
    }


def dump_provenance(statement: dict[str, Any]) -> bytes:
    return (json.dumps(statement, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def read_provenance(root: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The bundle's statement (None for a bundle without one), after checking its type; its
    bytes are checked against the manifest like any file's by `verify_files`."""
    rel = manifest.get("provenance")
    if rel is None:
        return None
    try:
        with open(Path(root) / rel, "rb") as f:
            data = f.read(MAX_PROVENANCE_BYTES + 1)
        statement = json.loads(data)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"cannot read {rel} of the bundle: {str(e)[:200]}") from None
    if (
        not isinstance(statement, dict)
        or statement.get("_type") != STATEMENT_TYPE
        or statement.get("predicateType") != SLSA_PROVENANCE_V1
    ):
        raise BundleError(f"{rel} is not an in-toto statement with a SLSA provenance predicate")
    return statement


def provenance_summary(statement: dict[str, Any]) -> dict[str, Any]:
    """What `rfc inspect` shows of a statement."""
    build = statement["predicate"]["buildDefinition"]
    internal = build.get("internalParameters", {})
    return {
        "build_type": build.get("buildType"),
        "model": build.get("externalParameters", {}).get("model"),
        "targets": build.get("externalParameters", {}).get("targets"),
        "rfc_version": internal.get("rfc_version"),
        "toolchains": internal.get("toolchains", {}),
        "source_date_epoch": internal.get("source_date_epoch"),
        "subjects": len(statement.get("subject", [])),
    }


def _program(version: str) -> str:
    """The toolchain's program from its version line ("cc (Debian 12.2.0-14) 12.2.0" -> cc,
    "nvcc: Cuda compilation tools..." -> nvcc)."""
    head = version.split()[0] if version.split() else "toolchain"
    return head.rstrip(":")
