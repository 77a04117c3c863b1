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
from rfc.artifacts.hashing import sha256_bytes, sha256_file
from rfc.artifacts.layout import LAYOUT_FILE, WEIGHTS_FILE, WeightLayout, unpack_layout
from rfc.artifacts.manifest import MANIFEST_FILE, MAX_MANIFEST_BYTES, bundle_id, dump_manifest, parse_manifest
from rfc.artifacts.plan import PLAN_FILE, Plan, unpack_plan
from rfc.artifacts.validate import check_layout, check_plan_weights
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

    def file_map(self, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """{path: {sha256, size}} of every file written so far; entries of `known` (a map this
        writer made earlier) are reused, not hashed again (weights.bin can be gigabytes)."""
        known = known or {}
        files = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.tmp).as_posix()
                files[rel] = known.get(rel) or {"sha256": sha256_file(p), "size": p.stat().st_size}
        return files

    def commit(self, manifest_body: dict[str, Any], known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        files = self.file_map(known)
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
    """An opened bundle: parsed manifest, layout and plan, and weights.bin memory-mapped.
    Everything in it was validated by `open_bundle`; files are reached through `file`, which
    only hands out paths the manifest lists (and so hashes)."""

    root: Path
    manifest: dict[str, Any]
    layout: WeightLayout
    plan: Plan
    weights: mmap.mmap | None
    verified: bool = True

    def file(self, relpath: str) -> Path:
        if relpath not in self.manifest["files"]:
            raise BundleError(f"{relpath!r} is not a file of this bundle")
        return self.root / relpath

    def private_copy(self, relpath: str, into: Path) -> Path:
        """A copy of a bundle file in `into` (a directory only this process uses), checked
        against the manifest's size and, for a verified bundle, its sha256. A kernel library
        is loaded from such a copy: the bytes mapped are the bytes checked, and an operator
        who rewrites the bundle's file in place later cannot change code that is running
        (a write into a mapped library reaches the running process: SIGTRAP, SIGILL)."""
        meta = self.manifest["files"][relpath]
        with open(self.file(relpath), "rb") as f:
            data = f.read(meta["size"] + 1)
        if len(data) != meta["size"] or (self.verified and sha256_bytes(data) != meta["sha256"]):
            raise BundleIntegrityError(f"{relpath} changed after the bundle was verified", [relpath])
        fd, name = tempfile.mkstemp(prefix=Path(relpath).name + ".", dir=into)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(name, 0o500)
        return Path(name)

    def read_text(self, relpath: str) -> str:
        try:
            return self.file(relpath).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"cannot read {relpath} of the bundle: {e}") from None

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
    with open(path, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    return parse_manifest(data)


def _inside(root: Path, rel: str) -> Path | None:
    """root/rel when it is a regular file whose real path stays inside root (a symlink may
    not lead out of the bundle); None otherwise."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root or not os.path.isfile(real):
        return None
    return Path(real)


def verify_files(root: Path, manifest: dict[str, Any], hashes: bool = True) -> list[str]:
    """Checks every listed file (inside the bundle, the recorded size, and with `hashes` the
    recorded sha256); returns the problems found (empty when all match)."""
    problems = []
    for rel, meta in sorted(manifest["files"].items()):
        p = _inside(Path(root), rel)
        if p is None:
            problems.append(f"{rel}: missing, not a regular file, or outside the bundle")
        elif p.stat().st_size != meta["size"]:
            problems.append(f"{rel}: size {p.stat().st_size} != {meta['size']}")
        elif hashes and sha256_file(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    if hashes and bundle_id(manifest) != manifest.get("bundle_id"):
        problems.append(f"{MANIFEST_FILE}: bundle_id does not match its content")
    return problems


def open_bundle(root: Path, verify: bool = True, mmap_weights: bool = True) -> Bundle:
    """Opens and validates a bundle before anything in it is used: paths (always), hashes
    (unless verify is False: "I trust this bundle"), then the layout against weights.bin and
    the plan against the layout and the op contract.

    Weights are memory-mapped read-only (pages load on use, shared with the page cache): a
    weights.bin truncated or rewritten under a running process reaches it (SIGBUS on a
    truncated page). `mmap_weights=False` reads them into the process's own memory instead,
    checked against the manifest's hash as read: later changes to the file cannot reach it."""
    root = Path(root)
    manifest = read_manifest(root)
    for required in (LAYOUT_FILE, PLAN_FILE, WEIGHTS_FILE):
        if required not in manifest["files"]:
            raise BundleError(f"bundle {root} lacks {required}")
    problems = verify_files(root, manifest, hashes=verify)
    if problems:
        raise BundleIntegrityError(f"bundle {root} failed verification: " + "; ".join(problems[:5]), problems)
    layout = unpack_layout(_read_listed(root, manifest, LAYOUT_FILE))
    plan = unpack_plan(_read_listed(root, manifest, PLAN_FILE))
    weights_size = manifest["files"][WEIGHTS_FILE]["size"]
    check_layout(layout, weights_size)
    check_plan_weights(plan, layout)
    weights = None
    if weights_size > 0 and mmap_weights:
        with open(root / WEIGHTS_FILE, "rb") as f:
            weights = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if len(weights) != weights_size:
            weights.close()
            raise BundleError(f"{WEIGHTS_FILE} changed size while it was opened")
    elif weights_size > 0:
        weights = _read_private(
            root / WEIGHTS_FILE, weights_size, manifest["files"][WEIGHTS_FILE]["sha256"] if verify else None
        )
    return Bundle(root=root, manifest=manifest, layout=layout, plan=plan, weights=weights, verified=verify)


def _read_private(path: Path, size: int, sha256: str | None) -> mmap.mmap:
    """The file's bytes in anonymous memory (an mmap, so views of it stay zero-copy)."""
    buf = mmap.mmap(-1, size)
    with open(path, "rb") as f:
        view = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
        view.release()
        extra = f.read(1)
    if got != size or extra or (sha256 is not None and sha256_bytes(buf) != sha256):
        buf.close()
        raise BundleIntegrityError(f"{path.name} changed after the bundle was verified", [path.name])
    return buf


def read_plan(root: Path, manifest: dict[str, Any] | None = None) -> Plan:
    """A bundle's plan alone, for decisions taken before it loads (its hashes are checked
    when open_bundle loads it)."""
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    if PLAN_FILE not in manifest["files"] or _inside(root, PLAN_FILE) is None:
        raise BundleError(f"bundle {root} lacks {PLAN_FILE}")
    return unpack_plan(_read_listed(root, manifest, PLAN_FILE))


def _read_listed(root: Path, manifest: dict[str, Any], rel: str) -> bytes:
    limit = manifest["files"][rel]["size"]
    with open(root / rel, "rb") as f:
        return f.read(limit + 1)
