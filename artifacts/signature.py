"""Where a bundle's signature lives, and what it must cover.

A signature (OpenSSF model-signing: a Sigstore bundle holding a DSSE envelope over an in-toto
statement of every file's sha256) sits in the bundle directory as `model.sig`, model-signing's
own default name. It is **not** in the manifest's file map: it covers manifest.json, so the
manifest cannot name its hash, and signing a bundle changes neither its manifest nor its
bundle_id (a signed and an unsigned copy of one build are the same bundle). Creating and
checking signatures is the CLI's job (cli/signing.py: the cryptography stays out of the
format); this module only names the file and lists what a signature must cover.
"""

import os
from pathlib import Path
from typing import Any

from rfc.artifacts.manifest import MANIFEST_FILE

SIGNATURE_FILE = "model.sig"
SIGNATURE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# A signature is a few KB (a key signature ~1 KB; a Sigstore one with its certificate and
# transparency-log proof ~10 KB): a larger model.sig is refused unread, pulled or local.
MAX_SIGNATURE_BYTES = 256 << 10


def present_files(root: Path) -> list[str]:
    """Every entry under `root` that is not a directory, as sorted relative POSIX paths
    (symlinks and special files included: a signature check must see them)."""
    out = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append((rel_dir / name).as_posix())
    return sorted(out)


def unlisted_files(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Files in the bundle directory that neither the manifest lists nor are the manifest or
    the signature: nothing vouches for them."""
    listed = set(manifest["files"]) | {MANIFEST_FILE, SIGNATURE_FILE}
    return [rel for rel in present_files(root) if rel not in listed]
