"""Which models are loaded, changed while the server serves, without ending a request.

- **On demand.** A known model that is not loaded (`--max-loaded-models`, or unloaded after
  its keep-alive) is loaded by the first request that names it; with `max_loaded` models
  loaded, the least recently used idle one is unloaded to make room. Each load takes its share
  of the KV budget then, so memory is accounted for the loaded models only.
- **Keep-alive.** A model unused for its keep-alive (`--keep-alive`, or Ollama's per-request
  `keep_alive`) is unloaded; the next request loads it again.
- **Swap.** A new version (another bundle or reference under the same id) is loaded while the
  old one serves; then new requests get the new one, and the old one is freed once every
  request that could hold it has ended.

Retiring a version (swap, unload, delete) never ends a request. A request takes its model
after its HTTP response has started (the request-log middleware counts responses, each with a
ticket: runtime/server/lifecycle.py), so once the handle serves the new version, only
responses started before that moment can hold the old one: it is stopped when they have all
ended, then dropped, and the manager checks that nothing kept it alive."""

import gc
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import falcon

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import read_manifest, read_plan
from rfc.artifacts.layout import WEIGHTS_FILE
from rfc.runtime.engine.kv_budget import DEFAULT_HOST_KV_FRACTION, KvBudgetError, KvShare, host_memory_bytes
from rfc.runtime.engine.assemble import LoadOptions
from rfc.runtime.server.errors import ApiError, not_found, unavailable
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.lifecycle import Lifecycle
from rfc.runtime.server.model_sources import BundleFetcher, FetchError, PullProgress, Rescan
from rfc.runtime.server.models import ModelPolicy, ModelSource, Origin
from rfc.runtime.server.service_routes import kv_pool_bytes

log = logging.getLogger("rfc.server")

REAP_INTERVAL_S = 0.5  # how often keep-alives are checked


@dataclass
class _Entry:
    source: ModelSource
    keep_alive_s: float | None
    last_used: float
    # the source's version when it was taken (a path in --models-dir may point elsewhere by
    # the next SIGHUP, so it is read now, not then)
    version: tuple[str, str] = ("", "")

    def __post_init__(self) -> None:
        self.version = _version(self.source)

    def take(self, source: ModelSource) -> None:
        self.source, self.version = source, _version(source)


@dataclass
class Retiring:
    """A version no longer handed to new requests, waiting for those that hold it."""

    model_id: str
    version: str
    memory_bytes: int
    why: str
    served: ServedModel | None  # dropped once stopped, so nothing here keeps it alive


def memory_bytes(served: ServedModel) -> int:
    """What a loaded version holds: its weights and its KV pool."""
    weights = int(served.model.manifest["files"].get(WEIGHTS_FILE, {}).get("size", 0))
    return weights + kv_pool_bytes(served.model)


class ModelManager:
    """The handle's `ModelDemand`, and every change to the set of loaded models. `load` turns a
    ModelSource into a started ServedModel (serve.py binds the engines' shared parts);
    `fetcher` resolves what an operator names (None: nothing can be pulled or swapped in)."""

    def __init__(
        self,
        handle: EngineHandle,
        lifecycle: Lifecycle,
        load: Callable[[ModelSource], ServedModel],
        policy: ModelPolicy = ModelPolicy(),
        fetcher: BundleFetcher | None = None,
        template: LoadOptions = LoadOptions(),
    ):
        self._handle = handle
        self._lifecycle = lifecycle
        self._load = load
        self.policy = policy
        self.fetcher = fetcher
        self._template = template  # the load options of models added while serving
        self._lock = threading.Lock()  # the entries and the retiring list
        self._changing = threading.RLock()  # one load, swap, unload or removal at a time
        self._entries: dict[str, _Entry] = {}
        self._retiring: list[Retiring] = []
        self._counts: Counter = Counter()  # event_counts()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        handle.demand = self

    # -- startup -------------------------------------------------------------------------------
    def register(self, sources: tuple[ModelSource, ...]) -> None:
        """The models named at startup; those not loaded at startup become available."""
        with self._lock:
            for source in sources:
                self._entries[source.model_id] = _Entry(source, self.policy.keep_alive_s, time.monotonic())
        for source in sources:
            if not source.eager:
                self._handle.make_available(source.model_id)

    def start_eager(self, model_id: str) -> ServedModel | None:
        """Loads a model named at startup (the loading thread; errors are the caller's), as it
        is now: a swap or a pull may have replaced it meanwhile (then it loads on demand)."""
        with self._changing:
            entry = self._entry(model_id)
            if self._handle.is_available(model_id) or self._handle.loaded(model_id) is not None:
                return None
            served = self._load(entry.source)
            self._handle.attach(served)
            self._touch(model_id)
            self._count("loads", model_id)
            return served

    def start_reaper(self) -> None:
        self._reaper = threading.Thread(target=self._reap, name="rfc-keep-alive", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        """Stops the keep-alive thread and every retiring engine (the server is exiting)."""
        self._stop.set()
        with self._lock:
            retiring = [r.served for r in self._retiring if r.served is not None]
        for served in retiring:
            served.engine.stop()

    # -- ModelDemand ---------------------------------------------------------------------------
    def load(self, model_id: str) -> ServedModel:
        with self._changing:
            served = self._handle.loaded(model_id)
            if served is not None:
                return served
            entry = self._entry(model_id)
            if not self._handle.is_available(model_id):
                raise unavailable(f"the model '{model_id}' is loading; retry when /ready returns 200", 2)
            self._make_room(model_id)
            source = self._budgeted(entry.source)
            try:
                served = self._load(source)
            except KvBudgetError as e:
                raise unavailable(f"the model '{model_id}' cannot be loaded now: {e}", 5) from None
            except (BundleError, OSError, ValueError, RuntimeError) as e:
                log.error("cannot load %s: %s", model_id, e)
                self._handle.fail_model(model_id, f"{source.bundle.name}: {e}")
                raise ApiError(
                    falcon.HTTP_503,
                    f"model '{model_id}' cannot be served: {e}",
                    param="model",
                    code="model_unavailable",
                ) from None
            self._handle.attach(served)
            self._touch(model_id)
            self._count("loads", model_id)
            log.info("loaded %s (version %s) on demand in %.2f s", model_id, served.version, served.load_seconds)
            return served

    def used(self, model_id: str) -> None:
        self._touch(model_id)

    # -- keep-alive ----------------------------------------------------------------------------
    def keep_alive(self, model_id: str, seconds: float | None) -> None:
        """A request's keep_alive for its model (None: forever), from now on."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is not None:
                entry.keep_alive_s, entry.last_used = seconds, time.monotonic()

    def expires_in(self, model_id: str) -> float | None:
        """Seconds until the model unloads if unused (None: never)."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None or entry.keep_alive_s is None:
                return None
            return max(0.0, entry.last_used + entry.keep_alive_s - time.monotonic())

    def _reap(self) -> None:
        while not self._stop.wait(REAP_INTERVAL_S):
            self._reap_once()

    def _reap_once(self) -> None:
        """(A function of its own: a loop variable left holding a model would keep it alive.)"""
        for served in self._handle.all_served():
            expires = self.expires_in(served.model_id)
            if expires is None:
                continue
            if not served.engine.is_idle():
                self._touch(served.model_id)  # the keep-alive counts from the last request's end
            elif expires <= 0:
                self.unload(served.model_id, "keep_alive expired")

    # -- changes -------------------------------------------------------------------------------
    def unload(self, model_id: str, why: str = "unloaded") -> bool:
        """Frees the model (once its requests end); it stays known and loads on demand."""
        with self._changing:
            if self._handle.loaded(model_id) is None:
                return False
            self._retire(self._handle.make_available(model_id), why)
            self._count("unloads", model_id)
            return True

    def replace(self, source: ModelSource) -> tuple[ServedModel | None, str | None]:
        """Serves `source` under its id: loaded at once (the old version serving meanwhile) if
        the old one is loaded, else on demand. Returns (the new version if loaded, the old
        version's name if one was loaded). On a load failure the old version keeps serving."""
        model_id = source.model_id
        with self._changing:
            entry = self._entry(model_id)
            old = self._handle.loaded(model_id)
            source = replace(source, load=replace(source.load, kv_blocks=entry.source.load.kv_blocks))
            if old is None:
                with self._lock:
                    entry.take(source)
                self._handle.make_available(model_id)
                return None, None
            try:
                new = self._load(self._budgeted(source, replacing=old))
            except (BundleError, OSError, ValueError, RuntimeError) as e:
                raise unavailable(
                    f"the new version of '{model_id}' cannot be loaded ({e}); the old one still serves", 5
                ) from None
            with self._lock:
                entry.take(source)
            previous = self._handle.attach(new)
            self._touch(model_id)
            self._count("swaps", model_id)
            self._count("loads", model_id)
            log.info(
                "swapped %s: version %s serves new requests (loaded in %.2f s); %s retires when its requests end",
                model_id,
                new.version,
                new.load_seconds,
                old.version,
            )
            if previous is not None:
                self._retire(previous, f"replaced by {new.version}")
            return new, old.version

    def add(self, source: ModelSource) -> None:
        """A new model id, loaded on demand."""
        with self._changing:
            with self._lock:
                self._entries[source.model_id] = _Entry(source, self.policy.keep_alive_s, time.monotonic())
            self._handle.make_available(source.model_id)

    def remove(self, model_id: str) -> ModelSource:
        """Serves the model no more (its requests in flight finish); returns its source."""
        with self._changing:
            entry = self._entry(model_id)
            if len(self._handle.model_ids) <= 1 and model_id in self._handle.model_ids:
                raise ApiError(
                    falcon.HTTP_400,
                    f"'{model_id}' is the only model served; serve another before removing it",
                    param="model",
                )
            with self._lock:
                del self._entries[model_id]
            served = self._handle.remove(model_id)
            if served is not None:
                self._retire(served, "removed")
            return entry.source

    def source(self, model_id: str) -> ModelSource | None:
        with self._lock:
            entry = self._entries.get(model_id)
            return entry.source if entry is not None else None

    def sources(self) -> list[ModelSource]:
        with self._lock:
            return [e.source for e in self._entries.values()]

    # -- what operators name -------------------------------------------------------------------
    def fetch_source(
        self,
        model_id: str,
        source: str,
        insecure: bool = False,
        progress: Callable[[PullProgress], None] | None = None,
        origin: Origin = Origin.PULLED,
    ) -> ModelSource:
        """The ModelSource of what `source` names (a reference or a bundle directory), checked
        before anything of it is loaded. FetchError when it cannot be served."""
        if self.fetcher is None:
            raise FetchError("this server cannot fetch models (it was started without model management)", 501)
        bundle = self.fetcher.fetch(source, insecure, progress)
        try:
            read_plan(bundle, read_manifest(bundle))
        except BundleError as e:
            raise FetchError(f"{source}: {e}") from None
        return ModelSource(model_id, bundle, self._template, required=False, origin=origin, eager=False)

    def pull(
        self, name: str, insecure: bool = False, progress: Callable[[PullProgress], None] | None = None
    ) -> ModelSource:
        """Ollama's pull: the reference served under its own name; a model already served under
        it is replaced by what the registry holds now (a swap when it is loaded)."""
        existing = self.source(name)
        source = self.fetch_source(name, name, insecure, progress, existing.origin if existing else Origin.PULLED)
        if existing is None:
            self.add(source)
        elif existing.bundle.resolve() != source.bundle.resolve():
            self.replace(source)
        return source

    def apply_rescan(self, found: Rescan) -> None:
        """--models-dir as it is now (SIGHUP): new models are added, changed ones swapped, gone
        ones removed; the others, and every model named on the command line, are left."""
        with self._lock:
            versions = {i: e.version for i, e in self._entries.items()}
        current = {s.model_id: s for s in self.sources() if s.origin is Origin.MODELS_DIR}
        now = {s.model_id: s for s in found.sources}
        for model_id, source in now.items():
            old = current.get(model_id) or self.source(model_id)
            try:
                if old is None:
                    self.add(source)
                    log.info("SIGHUP: serving %s (%s)", model_id, source.bundle.name)
                    if self.policy.max_loaded is None or len(self._handle.all_served()) < self.policy.max_loaded:
                        self.load(model_id)
                elif old.origin is Origin.MODELS_DIR and versions.get(model_id) != _version(source):
                    self.replace(source)
            except ApiError as e:
                log.error("SIGHUP: %s: %s", model_id, e.message)
        for model_id in set(current) - set(now):
            try:
                self.remove(model_id)
                log.info("SIGHUP: %s left --models-dir: no longer served", model_id)
            except ApiError as e:
                log.error("SIGHUP: %s: %s", model_id, e.message)
        for broken in found.broken:
            if broken.model_id not in now and self.source(broken.model_id) is None:
                self._handle.fail_model(broken.model_id, f"{broken.bundle.name}: {broken.error}")

    # -- what is loaded ------------------------------------------------------------------------
    def retiring(self) -> list[Retiring]:
        with self._lock:
            return list(self._retiring)

    def engines(self) -> list:
        """Every running engine: the served versions' and the retiring ones' (the drain ends both)."""
        retiring = [r.served.engine for r in self.retiring() if r.served is not None]
        return [s.engine for s in self._handle.all_served()] + retiring

    # -- internals -----------------------------------------------------------------------------
    def _entry(self, model_id: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(model_id)
        if entry is None:
            raise not_found(f"model '{model_id}' not found", code="model_not_found")
        return entry

    def _count(self, event: str, model_id: str) -> None:
        with self._lock:
            self._counts[event, model_id] += 1

    def event_counts(self) -> dict[tuple[str, str], int]:
        """(event, model id) -> how many: loads, unloads, swaps, leaks (a retired version still held)."""
        with self._lock:
            return dict(self._counts)

    def _touch(self, model_id: str) -> None:
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is not None:
                entry.last_used = time.monotonic()

    def _budgeted(self, source: ModelSource, replacing: ServedModel | None = None) -> ModelSource:
        """`source` with its part of the KV budget, counted against the models loaded now
        (the version it replaces aside: a swap holds both for a moment, as a rolling update
        holds a surge pod). Host memory: its fair share (the budget over the models that may be
        loaded at once), at most what the loaded ones leave. GPU memory: the loader measures what
        is free, and the model takes its part of that among the slots still free."""
        if source.load.kv_blocks is not None:  # --kv-pages named its pages
            return source
        loaded = [s for s in self._handle.all_served() if s is not replacing]
        holding = [s.model for s in loaded] + [r.served.model for r in self.retiring() if r.served is not None]
        slots = self.policy.max_loaded or max(1, len(self.sources()))
        total = host_kv_budget(self._template.kv_memory)
        in_use = sum(kv_pool_bytes(m) for m in holding if not m.device_choice.name.is_gpu)
        share = max(1, min(total // slots, total - in_use))
        return replace(
            source,
            load=replace(source.load, kv_memory=share, kv_share=KvShare(models=1, left=max(1, slots - len(loaded)))),
        )

    def _make_room(self, model_id: str) -> None:
        limit = self.policy.max_loaded
        loaded = [s for s in self._handle.all_served() if s.model_id != model_id]
        if limit is None or len(loaded) < limit:
            return
        with self._lock:
            last = {i: e.last_used for i, e in self._entries.items()}
        idle = sorted((s for s in loaded if s.engine.is_idle()), key=lambda s: last.get(s.model_id, 0.0))
        if not idle:
            raise unavailable(f"{limit} models are loaded (--max-loaded-models) and all are busy; retry later", 5)
        self.unload(idle[0].model_id, f"making room for {model_id}")

    def _retire(self, served: ServedModel | None, why: str) -> None:
        if served is None:
            return
        retiring = Retiring(served.model_id, served.version, memory_bytes(served), why, served)
        mark = self._lifecycle.mark()
        with self._lock:
            self._retiring.append(retiring)
        threading.Thread(target=self._finish, args=(retiring, mark), name="rfc-retire", daemon=True).start()

    def _finish(self, retiring: Retiring, mark: int) -> None:
        """Stops and drops a retired version once every response that could hold it has ended."""
        started = time.monotonic()
        self._lifecycle.wait_started_by(mark)
        served = retiring.served
        assert served is not None
        while not served.engine.is_idle() and served.engine.is_running:
            time.sleep(0.05)  # (none is left: every request that could hold it has ended)
        served.engine.stop()
        model = weakref.ref(served.model)
        retiring.served = served = None
        freed = _released(model)
        if freed:  # (logged before it leaves the retiring list: whoever sees the list empty can read it)
            log.info(
                "freed %s version %s (%s) %.2f s after it retired",
                retiring.model_id,
                retiring.version,
                retiring.why,
                time.monotonic() - started,
            )
        else:
            log.warning(
                "%s version %s was stopped but something still holds it: its memory is not freed",
                retiring.model_id,
                retiring.version,
            )
        with self._lock:
            self._retiring.remove(retiring)
            if not freed:
                self._counts["leaks", retiring.model_id] += 1


# How long a stopped version may take to be released before it counts as a leak: a response
# thread still unwinding (waitress writing a stream's last chunk after the engine's last event)
# holds its request's state, and through it the model, for a moment; on a loaded machine that
# moment can outlast one collection.
RELEASE_GRACE_S = 5.0


def _released(model: "weakref.ref") -> bool:
    deadline = time.monotonic() + RELEASE_GRACE_S
    while True:
        gc.collect()
        if model() is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def host_kv_budget(kv_memory: float | int | None) -> int:
    """The server's KV budget in host memory, in bytes (--kv-memory)."""
    if kv_memory is None:
        kv_memory = DEFAULT_HOST_KV_FRACTION
    return int(kv_memory * host_memory_bytes()) if isinstance(kv_memory, float) else int(kv_memory)


def _version(source: ModelSource) -> tuple[str, str]:
    """What tells two versions of a model apart: the bundle's real path and its id."""
    try:
        bundle_id = str(read_manifest(source.bundle).get("bundle_id", ""))
    except BundleError:
        bundle_id = ""
    return str(source.bundle.resolve()), bundle_id
