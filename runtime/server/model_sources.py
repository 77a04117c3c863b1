"""Where new model versions come from while the server runs, as the server sees it: a
`BundleFetcher` turns what an operator names (a registry reference, a bundle directory) into a
checked bundle directory. The command line provides it (cli/model_fetch.py: pulling, signature
checks), so the runtime neither speaks to registries nor compiles; this module holds only the
contract and the values crossing it, and Ollama's keep_alive durations."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rfc.runtime.server.models import BrokenModel, ModelSource


@dataclass(frozen=True)
class PullProgress:
    """One step of a pull, in the words of Ollama's /api/pull stream."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def as_json(self) -> dict:
        return {
            k: v
            for k, v in (
                ("status", self.status),
                ("digest", self.digest),
                ("total", self.total),
                ("completed", self.completed),
            )
            if v is not None
        }


class FetchError(Exception):
    """What an operator named cannot be served; `status` is the HTTP status that says why
    (400: not a reference or a bundle, or refused: unsigned, damaged; 404: not in the registry;
    502: the registry failed)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class BundleFetcher(Protocol):
    def fetch(
        self, source: str, insecure: bool | None = None, progress: Callable[[PullProgress], None] | None = None
    ) -> Path:
        """The bundle `source` names, checked (pulled into the cache if it is a reference;
        `insecure` None: as the server was started, --insecure)."""

    def is_reference(self, source: str) -> bool:
        """Whether `source` names a registry artifact (else: a path)."""

    def remove(self, bundle: Path) -> bool:
        """Deletes a bundle this fetcher pulled (True), leaves anything else (False)."""

    def cached(self) -> list[Path]:
        """Every bundle in the pull cache, served or not."""


@dataclass(frozen=True)
class Rescan:
    """The models of --models-dir as they are now (SIGHUP): what to serve, what cannot be."""

    sources: tuple[ModelSource, ...]  # the models-dir ones
    broken: tuple[BrokenModel, ...] = ()


# Ollama's keep_alive: a Go duration ("5m", "1h30m", "-1s"), or a number of seconds.
_DURATION = re.compile(r"([-+]?)((?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+|0)")
_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_KEEP_ALIVE_S = 10 * 365 * 86400.0  # longer is forever


def parse_keep_alive(value: object) -> float | None:
    """Seconds to keep a model loaded after its last request: None keeps it forever (any
    negative duration, as Ollama), 0 unloads it when idle. ValueError when unreadable."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "5m" or a number of seconds')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[-+]?\d+(?:\.\d*)?", text):
            seconds = float(text)
        else:
            m = _DURATION.fullmatch(text)
            if m is None:
                raise ValueError(f'\'{value[:40]}\' is not a duration (such as "5m", "1h30m", "-1")')
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(m[2]))
            seconds = -seconds if m[1] == "-" else seconds
    else:
        raise ValueError('expected a duration such as "5m" or a number of seconds')
    if seconds != seconds:  # nan
        raise ValueError('expected a duration such as "5m" or a number of seconds')
    return None if seconds < 0 or seconds > MAX_KEEP_ALIVE_S else seconds
