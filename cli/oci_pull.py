"""Pulling a bundle from an OCI registry (cli/oci.py speaks to it) into a content-addressed
cache, `<cache>/oci/`:

    blobs/sha256/<hex>         every layer, verified against its digest as it downloads
    blobs/sha256/<hex>.partial an interrupted download, resumed with an HTTP Range request
    bundles/<manifest hex>/    the bundle, its files hard links to the blobs (read-only)
    locks/<hex>.lock           one download of a digest at a time, across processes

A second `rfc pull` of a digest another process is downloading waits for it (until its own
deadline) and reuses the blob. Nothing is used before its digest is checked: the OCI manifest
against the digest the reference names (or the registry's answer for a tag), each layer
against its descriptor, and the bundle's manifest.json against the layers
(cli/oci_layout.py); the loader then re-hashes the files against manifest.json as for any
bundle."""

import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rfc.artifacts import BundleError
from rfc.artifacts.manifest import MANIFEST_FILE
from rfc.cli import oci_layout as layout
from rfc.cli.oci import OciError, OciNotFound, OciRefused, Progress, Reference, Registry, RegistryOptions

_REMOVE_WAIT_S = 10.0  # how long a removal waits for a pull holding its files' locks


Check = Callable[[Path], None]  # raises OciRefused: the assembled bundle must not enter the cache


def pull_bundle(
    reference: Reference,
    cache_dir: Path,
    options: RegistryOptions,
    progress: Progress | None = None,
    check: Check | None = None,
) -> Path:
    """The bundle `reference` names, in the cache (pulled unless it is there already);
    `progress` hears each step and each layer's bytes. `check` runs on the assembled bundle
    before it enters the cache (and on a cached one before it is returned).

    Every request has --registry-timeout, the whole pull --pull-timeout. A refused pull (any
    OciRefused: a damaged or oversized artifact, a digest mismatch, `check`) leaves nothing
    behind: the blobs it downloaded that no other bundle holds are deleted with it. An
    interrupted one (the network, a timeout) keeps its partial download for the next pull."""
    report: Progress = progress or (lambda *_: None)
    from rfc.compiler.codegen.cache import check_private_dir  # the CLI's side of the boundary
    from rfc.compiler.errors import CompileError

    oci = Path(cache_dir) / "oci"
    try:
        check_private_dir(oci)
    except CompileError as e:
        raise OciError(str(e)) from None
    deadline = time.monotonic() + options.pull_timeout_s
    registry = Registry(reference, options, deadline)
    if reference.digest and (oci / "bundles" / reference.digest.split(":")[1] / MANIFEST_FILE).is_file():
        out = oci / "bundles" / reference.digest.split(":")[1]  # pinned and pulled before: no registry round trip
        if check is not None:
            check(out)
        return out
    report("pulling manifest", None, None, None)
    found = registry.get_manifest(reference.ref)
    if found is None:
        raise OciNotFound(f"{reference}: no such artifact in the registry")
    data, digest = found
    try:
        _, layers = layout.check_artifact(data)
    except BundleError as e:
        raise OciRefused(f"{reference}: {e}") from None
    out = oci / "bundles" / digest.split(":")[1]
    if (out / MANIFEST_FILE).is_file():
        if check is not None:
            check(out)
        return out
    blobs = oci / "blobs" / "sha256"
    for directory in (blobs, oci / "locks", out.parent):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fetched: list[Path] = []  # blobs this pull brought in: deleted again if it is refused
    try:
        manifest_layer = next(layer for layer in layers if layer[0] == MANIFEST_FILE)
        _fetch(registry, blobs, oci / "locks", manifest_layer[1], manifest_layer[2], report, fetched)
        try:
            layout.check_bundle_layers(_blob(blobs, manifest_layer[1]).read_bytes(), layers)
        except BundleError as e:
            raise OciRefused(f"{reference}: {e}") from None
        for _, blob_digest, size in layers:
            if blob_digest != manifest_layer[1]:
                _fetch(registry, blobs, oci / "locks", blob_digest, size, report, fetched)
        report("verifying sha256 digest", None, None, None)  # (each layer was checked as it arrived)
        report("writing manifest", None, None, None)
        with _locked(oci / "locks" / f"{out.name}.lock", deadline):
            if not (out / MANIFEST_FILE).is_file():
                _assemble(out, blobs, layers, check)
    except OciRefused:
        _forget(oci, fetched, deadline)
        raise
    return out


def _forget(oci: Path, fetched: list[Path], deadline: float) -> None:
    """Deletes the blobs a refused pull downloaded, unless a bundle holds them meanwhile."""
    for blob in fetched:
        try:
            with _locked(oci / "locks" / f"{blob.name}.lock", deadline):
                if blob.stat().st_nlink == 1:
                    blob.unlink()
        except (OSError, OciError):
            pass  # (gone already, or locked past the deadline: left for `remove_bundle`'s sweep)


def _fetch(
    registry: Registry, blobs: Path, locks: Path, digest: str, size: int, report: Progress, fetched: list[Path]
) -> None:
    path = _blob(blobs, digest)
    status = f"pulling {digest.split(':')[1][:12]}"  # Ollama's words for a layer
    if path.is_file():
        report(status, digest, size, size)
        return
    with _locked(locks / f"{digest.split(':')[1]}.lock", registry.deadline):
        if path.is_file():  # another process pulled it while we waited
            report(status, digest, size, size)
            return
        partial = path.with_name(path.name + ".partial")
        resumed = partial.exists()
        report(status, digest, size, partial.stat().st_size if resumed else 0)
        held = lambda have: report(status, digest, size, have)  # noqa: E731
        try:
            registry.download_blob(digest, size, partial, held)
        except OciRefused:
            if not resumed:
                raise
            registry.download_blob(digest, size, partial, held)  # the kept prefix was bad: once more from the start
        os.chmod(partial, 0o444)
        os.replace(partial, path)
        fetched.append(path)


def _assemble(out: Path, blobs: Path, layers: list[tuple[str, str, int]], check: Check | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, digest, _ in layers:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(_blob(blobs, digest), dest)
            except OSError:
                shutil.copyfile(_blob(blobs, digest), dest)
                os.chmod(dest, 0o444)
        os.chmod(tmp, 0o755)
        if check is not None:
            check(tmp)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_bundle(bundle: Path, cache_dir: Path) -> bool:
    """Deletes a pulled bundle from the cache, and the blobs that were its files and that no
    other pulled bundle shares (hard links: a blob linked from nowhere else has one link left).
    False for a bundle outside the cache, which is not the cache's to delete."""
    oci = Path(cache_dir) / "oci"
    bundle = Path(bundle)
    if bundle.parent.resolve() != (oci / "bundles").resolve() or not (bundle / MANIFEST_FILE).is_file():
        return False
    inodes = {(st.st_dev, st.st_ino) for st in (p.stat() for p in bundle.rglob("*") if p.is_file())}
    deadline = time.monotonic() + _REMOVE_WAIT_S
    with _locked(oci / "locks" / f"{bundle.name}.lock", deadline):
        shutil.rmtree(bundle)
    for blob in (oci / "blobs" / "sha256").glob("*"):
        st = blob.stat()
        if (st.st_dev, st.st_ino) in inodes and st.st_nlink == 1:
            try:
                with _locked(oci / "locks" / f"{blob.name}.lock", deadline):
                    blob.unlink(missing_ok=True)
            except OciError:
                pass  # a pull holds it: it is that pull's now
    return True


def cached_bundles(cache_dir: Path) -> list[Path]:
    """Every bundle pulled into the cache (a directory named by its artifact's digest)."""
    bundles = Path(cache_dir) / "oci" / "bundles"
    if not bundles.is_dir():
        return []
    return sorted(
        p for p in bundles.iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name) and (p / MANIFEST_FILE).is_file()
    )


def export_bundle(cached: Path, out_dir: Path, force: bool = False) -> Path:
    """A plain copy of a cached bundle at `out_dir` (files writable like any compile output)."""
    if out_dir.exists():
        if not force:
            raise OciError(f"output {out_dir} exists (use --force to replace it)")
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for src in sorted(p for p in cached.rglob("*") if p.is_file()):
            dest = tmp / src.relative_to(cached)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        os.chmod(tmp, 0o755)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


class _locked:
    """An exclusive lock file, across processes; waited for until `deadline` at most."""

    def __init__(self, path: Path, deadline: float | None = None):
        self.path = path
        self.deadline = deadline

    def __enter__(self):
        self.f = open(self.path, "w")
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | (fcntl.LOCK_NB if self.deadline is not None else 0))
                return self
            except BlockingIOError:
                if time.monotonic() >= self.deadline:
                    self.f.close()
                    raise OciError(f"another pull held {self.path.name} past --pull-timeout: stopped") from None
                time.sleep(0.1)

    def __exit__(self, *exc):
        self.f.close()


def _blob(blobs: Path, digest: str) -> Path:
    return blobs / digest.split(":")[1]
