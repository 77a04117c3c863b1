"""Which bundles one `rfc serve` serves, under which ids, with how much KV cache each.

Built once at the edge (the CLI) from the bundle arguments, `--models-dir`, `--kv-pages` and
the memory budget; the loading thread then loads them in order. Ids come from the bundles' manifests (the
model's name), so they are known before anything loads."""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import MANIFEST_FILE, read_manifest, read_plan
from rfc.artifacts.layout import WEIGHTS_FILE
from rfc.runtime.engine.kv_budget import KvShare
from rfc.runtime.engine.assemble import LoadOptions
from rfc.runtime.model.loader import check_ctx_size


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# A model pulled while serving is named by its reference (`registry:5000/models/x:tag`), as
# Ollama names a pulled model; so is a copy (Ollama's tag) of any model.
_PULLED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}")


class Origin(Enum):
    """Where a served model came from: what SIGHUP re-reads and what /api/delete removes."""

    ARGUMENT = "argument"  # named on the command line
    MODELS_DIR = "models-dir"  # found in --models-dir (re-read on SIGHUP)
    PULLED = "pulled"  # pulled or swapped in through the API (its pulled files are the server's)


@dataclass(frozen=True)
class ModelSource:
    model_id: str
    bundle: Path
    load: LoadOptions = LoadOptions()
    required: bool = True  # named on the command line: the server stops if it cannot load it
    origin: Origin = Origin.ARGUMENT
    eager: bool = True  # loaded at startup; else at the first request that names it (--max-loaded-models)


@dataclass(frozen=True)
class ModelPolicy:
    """When models load and unload while the server runs (Ollama's OLLAMA_KEEP_ALIVE and
    OLLAMA_MAX_LOADED_MODELS): `keep_alive_s` None keeps a loaded model loaded; a number of
    seconds unloads it that long after its last request (a request may set its own, Ollama's
    keep_alive). `max_loaded` None lets every model be loaded at once; N loads N at most, the
    least recently used idle one making room for another."""

    keep_alive_s: float | None = None
    max_loaded: int | None = None

    def __post_init__(self) -> None:
        if self.keep_alive_s is not None and self.keep_alive_s < 0:
            raise ValueError("keep_alive_s must not be negative (None: forever)")
        if self.max_loaded is not None and self.max_loaded < 1:
            raise ValueError("--max-loaded-models must be at least 1")


def is_model_name(name: str) -> bool:
    """A name a model may be pulled or copied to."""
    return bool(_PULLED_ID.fullmatch(name))


@dataclass(frozen=True)
class BrokenModel:
    """A bundle of --models-dir that cannot be served: reported (log, /v1/models), skipped."""

    model_id: str
    bundle: Path
    error: str


def sort_out(bundles: Sequence[Path], optional: Sequence[bool]) -> tuple[list[Path], list[bool], list[BrokenModel]]:
    """The bundles whose manifest and plan read, with their `optional` flags, and the optional
    ones that do not (a required one that does not raises its BundleError)."""
    good, flags, broken = [], [], []
    for bundle, opt in zip(bundles, optional):
        try:
            read_plan(bundle, read_manifest(bundle))
        except BundleError as e:
            if not opt:
                raise
            broken.append(BrokenModel(Path(bundle).name, Path(bundle), str(e)))
            continue
        good.append(bundle)
        flags.append(opt)
    return good, flags, broken


@dataclass(frozen=True)
class KvPages:
    """How the KV-cache pages are divided between models (the `--kv-pages` policy):
    `total` pages split evenly over the models not named in `per_model`, which get exactly
    their own count. Neither: the models without a count share the memory budget evenly
    (`--gpu-memory-utilization` on a GPU, `--kv-memory` on the host; runtime/engine/kv_budget.py)."""

    total: int | None = None
    per_model: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, values: Sequence[str]) -> "KvPages":
        """From flag values: "N" (the total) or "ID=N" (one model's pages), repeatable."""
        total, per_model = None, {}
        for value in values:
            name, sep, count = value.rpartition("=")
            try:
                pages = int(count)
            except ValueError:
                raise ValueError(f"--kv-pages '{value}': expected N or MODEL=N with N a number of pages") from None
            if pages < 1:
                raise ValueError(f"--kv-pages '{value}': the number of pages must be positive")
            if sep:
                per_model[name] = pages
            else:
                total = pages
        return cls(total, per_model)

    def pages_for(self, model_ids: Sequence[str]) -> dict[str, int | None]:
        unknown = sorted(set(self.per_model) - set(model_ids))
        if unknown:
            raise ValueError(f"--kv-pages names unknown models {', '.join(unknown)} (serving {', '.join(model_ids)})")
        rest = [m for m in model_ids if m not in self.per_model]
        share = None
        if self.total is not None and rest:
            left = self.total - sum(self.per_model.values())
            share = left // len(rest)
            if share < 1:
                raise ValueError(f"--kv-pages {self.total} leaves no pages for {', '.join(rest)}")
        return {m: self.per_model.get(m, share) for m in model_ids}


def _usable_id(name: object) -> str | None:
    """A model name that works as an id in every API (GGUF names may be prose)."""
    return name if isinstance(name, str) and _ID.fullmatch(name) else None


def discover_bundles(models_dir: Path) -> list[Path]:
    """Every bundle directly inside `models_dir` (a folder holding a manifest), by name."""
    if not models_dir.is_dir():
        raise BundleError(f"{models_dir}: not a directory")
    return sorted(p for p in models_dir.iterdir() if (p / MANIFEST_FILE).is_file())


def plan_models(
    bundles: Sequence[Path],
    load: LoadOptions,
    kv: KvPages = KvPages(),
    names: Sequence[str | None] = (),
    optional: Sequence[bool] = (),
    max_loaded: int | None = None,
) -> tuple[ModelSource, ...]:
    """Ids and load options for each bundle. The id is `names[i]` when given (the CLI passes
    a GGUF's file name for the bundle it compiled), else the model's name when it makes a
    usable id, else the bundle's directory name; when two bundles would share an id, their
    directory names tell them apart. `optional` bundles come from --models-dir.

    With `max_loaded` (--max-loaded-models), only the first `max_loaded` models load at
    startup and the memory budget is split over that many: a server offering more models than
    fit accounts memory for the loaded ones only (the others load on demand, runtime/server/
    model_manager.py, each taking a share of the budget as it loads)."""
    if not bundles:
        raise BundleError("no bundle to serve (name one or more bundles, or --models-dir with bundles in it)")
    manifests = [read_manifest(b) for b in bundles]
    given = list(names) + [None] * (len(bundles) - len(names))
    wanted = [g or _usable_id(m["model"].get("name")) or Path(b).name for g, m, b in zip(given, manifests, bundles)]
    ids = [name if wanted.count(name) == 1 else Path(b).name for name, b in zip(wanted, bundles)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise BundleError(
            f"several bundles would be served as {', '.join(duplicates)}: give each its own directory name"
        )
    if load.ctx_size is not None:  # each model serves min(N, its own): N above them all is a mistake
        check_ctx_size(load.ctx_size, {i: read_plan(b, m).context_length for i, b, m in zip(ids, bundles, manifests)})
    pages = kv.pages_for(ids)
    counts = [pages[i] or load.kv_blocks for i in ids]
    eager = [max_loaded is None or n < max_loaded for n in range(len(ids))]
    weights = [int(m["files"].get(WEIGHTS_FILE, {}).get("size", 0)) if e else 0 for m, e in zip(manifests, eager)]
    # the budget's shares: one per budgeted model that can be loaded at once
    budgeted = min(sum(c is None for c in counts), max_loaded or len(ids))
    optional = list(optional) + [False] * (len(bundles) - len(optional))
    return tuple(
        ModelSource(
            i,
            Path(b),
            replace(
                load,
                kv_blocks=c,
                kv_share=KvShare(
                    models=max(1, budgeted),
                    left=max(1, sum(x is None for x, e in zip(counts[n:], eager[n:]) if e)),
                    reserve_bytes=sum(weights[n + 1 :]),
                ),
            ),
            required=not optional[n],
            origin=Origin.MODELS_DIR if optional[n] else Origin.ARGUMENT,
            eager=eager[n],
        )
        for n, (i, b, c) in enumerate(zip(ids, bundles, counts))
    )
