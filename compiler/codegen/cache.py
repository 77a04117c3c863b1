"""Build cache keyed by source hash (like tinygrad's Compiler.compile_cached).

The key covers the source text, the command line and the toolchain's version string, so a
cached binary is only reused for exactly the same build.
"""

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "rfc" / "kernels"


def cached_build(cache_dir: Path | None, key_parts: list[str], build: Callable[[], bytes]) -> bytes:
    if cache_dir is None:
        return build()
    key = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()
    path = Path(cache_dir) / key[:2] / key
    if path.is_file():
        return path.read_bytes()
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # atomic: concurrent compiles never see half a binary
    return data
