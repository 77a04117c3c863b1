"""`rfc serve model.gguf` and `rfc run model.gguf`: the CLI compiles the GGUF once into a
content-addressed cache and hands the bundle to the runtime (which never sees a GGUF and
never imports the compiler: this module is the only bridge, and it lives in the CLI).

The key is the GGUF's sha256, the compile options (targets, chat template) and the rfc and
bundle-format versions: the same inputs find the bundle compiled before; anything else
compiles anew. The targets are `--arch`'s or those detected on the host (cli/host_targets.py),
so a cache shared with another kind of host never hands it a bundle built for that one. Hashing a multi-GB file takes
seconds, so digests are remembered per (path, size, mtime) in the cache's `digests.json`."""

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rfc.artifacts import FORMAT_VERSION, RFC_VERSION
from rfc.artifacts.bundle import MANIFEST_FILE
from rfc.artifacts.hashing import sha256_file
from rfc.compiler.codegen.cache import cache_root, check_private_dir

GGUF_MAGIC = b"GGUF"
_DIGESTS = "digests.json"


@dataclass(frozen=True)
class CompileRequest:
    gguf: Path
    targets: tuple[str, ...] = ("cpu",)
    chat_template: Path | None = None


def default_cache_dir() -> Path:
    return cache_root() / "bundles"


def is_gguf(path: Path) -> bool:
    """A file that starts with GGUF's magic (bundles are directories)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def cache_key(request: CompileRequest, gguf_sha256: str) -> str:
    parts = {
        "gguf": gguf_sha256,
        "targets": sorted(set(request.targets)),
        "chat_template": sha256_file(request.chat_template) if request.chat_template else None,
        "rfc": RFC_VERSION,
        "format": list(FORMAT_VERSION),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cached_bundle(
    request: CompileRequest, cache_dir: Path, on_compile: Callable[[Path, Path], None] = lambda g, b: None
) -> Path:
    """The bundle for `request`, compiled into `cache_dir` unless it is there already.
    `on_compile(gguf, bundle)` is called before a compile starts (the CLI says so)."""
    from rfc.compiler.pipeline import CompileOptions, compile_model  # the CLI's side of the boundary

    # A planted bundle here would be served as if we had compiled it: only a directory this
    # user alone can write is used.
    check_private_dir(cache_dir)
    key = cache_key(request, _digest(request.gguf, cache_dir))
    out = cache_dir / f"{_safe_stem(request.gguf)}-{key}"
    if (out / MANIFEST_FILE).is_file():
        return out
    # One compile per key at a time: a second `rfc serve` of the same GGUF waits, then reuses.
    with open(cache_dir / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / MANIFEST_FILE).is_file():
            on_compile(request.gguf, out)
            options = CompileOptions(
                model=request.gguf,
                out_dir=out,
                targets=request.targets,
                force=True,
                chat_template=request.chat_template,
                cache_dir=cache_dir.parent / "kernels",
            )
            compile_model(options)
    return out


def _digest(gguf: Path, cache_dir: Path) -> str:
    stat = gguf.stat()
    token = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    index_path = cache_dir / _DIGESTS
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if not isinstance(index, dict):
        index = {}
    digest = index.get(token)
    if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
        return digest
    digest = sha256_file(gguf)
    index[token] = digest
    tmp = index_path.with_name(f".{_DIGESTS}.{os.getpid()}")
    tmp.write_text(json.dumps(index, sort_keys=True))
    os.replace(tmp, index_path)
    return digest


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:64] or "model"
