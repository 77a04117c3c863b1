"""Build cache (like tinygrad's Compiler.compile_cached), keyed by content and checked on read.

A cached binary ends up inside bundles that verify, so the cache is trusted no further than
its checks: entries live in a directory only this user can write (refused otherwise), each
binary is stored under the sha256 of its bytes (`objects/<digest>`), a key file maps the
build inputs (source, command line, toolchain version) to that digest, and a read re-hashes
the bytes against the digest before using them. An entry that fails the check is dropped
and rebuilt. CI and anyone who wants no cache at all pass `--no-cache`.
"""

import hashlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rfc.compiler.errors import CompileError

_DIGEST = re.compile(r"[0-9a-f]{64}")


def cache_root(cache_dir: Path | None = None) -> Path:
    """rfc's cache: `cache_dir` (the CLI's `--cache-dir`), else $RFC_CACHE_DIR, else
    $XDG_CACHE_HOME/rfc, else ~/.cache/rfc. Compiled kernels live in <root>/kernels, bundles
    compiled from GGUFs in <root>/bundles, pulled OCI bundles in <root>/oci."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("RFC_CACHE_DIR"):
        return Path(os.environ["RFC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rfc"


def default_cache_dir() -> Path:
    """The build cache of in-process compiles: the same directory `rfc compile` uses."""
    return cache_root() / "kernels"


class BuildCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def fetch(self, key_parts: list[str], build: Callable[[], bytes]) -> bytes:
        """The binary for these build inputs: from the cache when an intact entry exists."""
        self._check_root()
        key = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()
        key_path = self.root / "keys" / key[:2] / key
        data = self._read(key_path)
        if data is not None:
            return data
        data = build()
        digest = hashlib.sha256(data).hexdigest()
        _atomic_write(self.root / "objects" / digest[:2] / digest, data)
        _atomic_write(key_path, digest.encode())
        return data

    def _read(self, key_path: Path) -> bytes | None:
        try:
            digest = key_path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not _DIGEST.fullmatch(digest):
            return self._drop(key_path, "its key file is malformed")
        try:
            data = (self.root / "objects" / digest[:2] / digest).read_bytes()
        except OSError:
            return self._drop(key_path, "its binary is missing")
        if hashlib.sha256(data).hexdigest() != digest:
            return self._drop(key_path, "its binary does not match its recorded sha256")
        return data

    def _drop(self, key_path: Path, why: str) -> None:
        print(f"rfc: warning: ignoring build cache entry {key_path.name[:16]}: {why}; rebuilding", file=sys.stderr)
        try:
            key_path.unlink()
        except OSError:
            pass
        return None

    def _check_root(self) -> None:
        check_private_dir(self.root)


def check_private_dir(path: Path) -> None:
    """Create `path` (mode 0700) or refuse it when another user owns it or could write to it:
    a cache is only as trustworthy as who can write it. (Whoever can write the directory
    above can only swap `path` for a directory of their own, which the owner check refuses.)"""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError as e:
        raise CompileError(f"cannot use the cache {path}: {e.strerror or e} (use --cache-dir or --no-cache)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CompileError(f"the cache {path} is not a directory (use --cache-dir or --no-cache)")
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CompileError(
            f"the cache {path} is writable by other users or owned by another user; what it holds would "
            "be used unchecked (use --cache-dir or --no-cache)"
        )


def cached_build(cache: BuildCache | None, key_parts: list[str], build: Callable[[], bytes]) -> bytes:
    return build() if cache is None else cache.fetch(key_parts, build)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: concurrent compiles never see half a binary
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
