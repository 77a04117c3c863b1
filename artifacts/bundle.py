"""Reading and writing bundle directories.

A bundle is a directory: manifest.json plus the files it lists with their sha256. Writers
build the bundle in a temporary sibling directory and rename it into place at the end, so
a failed compile never leaves a partial bundle behind.
"""

import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfc.artifacts.errors import BundleError, BundleIntegrityError
from rfc.artifacts.hashing import sha256_file
from rfc.artifacts.layout import LAYOUT_FILE, WEIGHTS_FILE, WeightLayout, unpack_layout
from rfc.artifacts.manifest import MANIFEST_FILE, bundle_id, dump_manifest, parse_manifest
from rfc.artifacts.plan import PLAN_FILE, Plan, unpack_plan
from rfc.artifacts.version import BUNDLE_MAGIC, FORMAT_VERSION, RFC_VERSION

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class BundleWriter:
    """Collects files in a temporary directory; `commit` writes the manifest and renames."""

    def __init__(self, out_dir: Path, force: bool = False):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not force:
            raise BundleError(f"output {self.out_dir} exists (use --force to replace it)")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".tmp", dir=self.out_dir.parent))

    def path(self, relpath: str) -> Path:
        p = self.tmp / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_bytes(self, relpath: str, data: bytes) -> None:
        self.path(relpath).write_bytes(data)

    def commit(self, manifest_body: dict[str, Any]) -> dict[str, Any]:
        files = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.tmp).as_posix()
                files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        manifest = {
            "magic": BUNDLE_MAGIC,
            "format_version": list(FORMAT_VERSION),
            "rfc_version": RFC_VERSION,
            **manifest_body,
            "files": files,
        }
        manifest["bundle_id"] = bundle_id(manifest)
        (self.tmp / MANIFEST_FILE).write_bytes(dump_manifest(manifest))
        os.chmod(self.tmp, 0o755)
        if self.out_dir.exists():
            if not self.force:
                raise BundleError(f"output {self.out_dir} exists (use --force to replace it)")
            old = self.out_dir.with_name(f".{self.out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            self.out_dir.rename(old)
            self.tmp.rename(self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.out_dir)
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            self.abort()


@dataclass
class Bundle:
    """An opened bundle: parsed manifest, layout and plan, and weights.bin memory-mapped."""

    root: Path
    manifest: dict[str, Any]
    layout: WeightLayout
    plan: Plan
    weights: mmap.mmap | None

    def file(self, relpath: str) -> Path:
        return self.root / relpath

    def read_text(self, relpath: str) -> str:
        return (self.root / relpath).read_text(encoding="utf-8")

    def close(self) -> None:
        if self.weights is not None:
            self.weights.close()
            self.weights = None


def read_manifest(root: Path) -> dict[str, Any]:
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{root} has no {MANIFEST_FILE}: not an rfc bundle")
    return parse_manifest(path.read_bytes())


def verify_files(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Re-hashes every listed file; returns the problems found (empty when all match)."""
    problems = []
    for rel, meta in sorted(manifest["files"].items()):
        p = Path(root) / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta["size"]:
            problems.append(f"{rel}: size {p.stat().st_size} != {meta['size']}")
        elif sha256_file(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    if bundle_id(manifest) != manifest.get("bundle_id"):
        problems.append(f"{MANIFEST_FILE}: bundle_id does not match its content")
    return problems


def open_bundle(root: Path, verify: bool = True) -> Bundle:
    root = Path(root)
    manifest = read_manifest(root)
    if verify:
        problems = verify_files(root, manifest)
        if problems:
            raise BundleIntegrityError(f"bundle {root} failed verification: " + "; ".join(problems), problems)
    for required in (LAYOUT_FILE, PLAN_FILE, WEIGHTS_FILE):
        if required not in manifest["files"]:
            raise BundleError(f"bundle {root} lacks {required}")
    layout = unpack_layout((root / LAYOUT_FILE).read_bytes())
    plan = unpack_plan((root / PLAN_FILE).read_bytes())
    weights = None
    if (root / WEIGHTS_FILE).stat().st_size > 0:
        with open(root / WEIGHTS_FILE, "rb") as f:
            weights = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if layout.total_bytes() > (len(weights) if weights is not None else 0):
        raise BundleError(f"{WEIGHTS_FILE} is shorter than its layout says")
    return Bundle(root=root, manifest=manifest, layout=layout, plan=plan, weights=weights)
