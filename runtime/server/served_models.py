"""The models the app serves. The app exists (and the socket listens) before the models are
loaded; resources ask the `EngineHandle` and answer 503 until it holds the `ServedModel`
they name. A model may also be known but unloaded (`available`): the first request that names
it loads it through the handle's `ModelDemand` (runtime/server/model_manager.py), which also
unloads, replaces and adds models while the server runs."""

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import falcon

from rfc.artifacts.bundle import TOKENIZER_FILE
from rfc.runtime.text.call_ids import CallIdForm, call_id_form
from rfc.runtime.text.chat import ChatTemplate, ChatTemplateError
from rfc.runtime.sampling.constraints import GrammarLimits, Grammars, GrammarWorkers
from rfc.runtime.engine.embedding import Pooling, pooled_embedding
from rfc.runtime.engine.engine import Engine, GenerationRequest
from rfc.runtime.engine.generate import generate
from rfc.runtime.engine.fingerprint import system_fingerprint
from rfc.runtime.engine.assemble import LoadedModel, LoadOptions, load_model
from rfc.runtime.engine.prompting import chat_template, chat_template_parts
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.runtime.server.errors import ApiError, unavailable
from rfc.runtime.server.prompt_cache import PromptCache
from rfc.runtime.text.tool_calls import ToolFormat, detect
from rfc.runtime.core.work_pool import WorkPool

if TYPE_CHECKING:
    from rfc.runtime.server.telemetry import Telemetry
    from rfc.runtime.text.template_worker import RemoteTemplate, TemplatePool


@dataclass(frozen=True)
class ServedModel:
    engine: Engine
    model: LoadedModel
    model_id: str
    created: int  # unix time the model was loaded (OpenAI's `created`)
    prompts: PromptCache
    chat: "ChatTemplate | RemoteTemplate | None"
    chat_error: str | None  # why the bundle's chat template is unusable, if it is
    tool_format: ToolFormat | None = None  # the template family's tool-call parser
    grammars: Grammars | None = None  # constrained decoding (llguidance's view of the tokenizer)
    grammars_error: str | None = None
    call_ids: CallIdForm = CallIdForm.OPENAI  # the form of tool-call ids the template takes
    load_seconds: float = 0.0  # how long loading took (Ollama's load_duration for the request that waited)

    @property
    def version(self) -> str:
        """Which build of the model this is: its bundle id (X-Model-Version of every reply)."""
        return str(self.model.manifest.get("bundle_id", ""))

    @property
    def fingerprint(self) -> str:
        """The replay receipt of its replies (`system_fingerprint`, X-System-Fingerprint):
        bundle, device and kernel variant (runtime/engine/fingerprint.py)."""
        return system_fingerprint(self.model)


class ModelDemand(Protocol):
    """Loads models on demand and hears of their use (runtime/server/model_manager.py)."""

    def load(self, model_id: str) -> ServedModel:
        """The model loaded (blocks while it loads); an ApiError when it cannot be."""

    def used(self, model_id: str) -> None:
        """A request was handed the model now (its keep-alive starts over)."""


class EngineHandle:
    """The models this server serves, by id; each is attached by the loading thread once it is
    ready and read by every HTTP thread. The ids are known before loading (from the bundles'
    manifests), so a request for a model still loading gets 503 and one for no model 404.
    The first id is the default: native routes and requests without `model` get it.

    An id is served (loaded), loading (named at startup, not loaded yet: 503), available (known,
    unloaded: the first request that names it loads it through `demand`), or failed. Aliases
    (Ollama's copy) name another id. Every change replaces a dict, so readers need no lock."""

    def __init__(self, model_ids: Sequence[str] = ()) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = list(model_ids)
        self._served: dict[str, ServedModel] = {}
        self._available: frozenset[str] = frozenset()
        self._aliases: dict[str, str] = {}
        self._failed: dict[str, str] = {}  # optional models that could not be loaded: why
        self._error: str | None = None
        self.demand: ModelDemand | None = None

    def attach(self, served: ServedModel) -> ServedModel | None:
        """Serves `served` under its id from now on; returns the version it replaces, if any
        (whose requests in flight go on: the caller retires it)."""
        with self._lock:
            if served.model_id not in self._ids:
                self._ids.append(served.model_id)
            previous = self._served.get(served.model_id)
            self._served = {**self._served, served.model_id: served}  # readers see one dict or the next
            self._available = self._available - {served.model_id}
        return previous

    def make_available(self, model_id: str) -> ServedModel | None:
        """The id is known but not loaded (a later request loads it); returns what was loaded."""
        with self._lock:
            if model_id not in self._ids:
                self._ids.append(model_id)
            previous = self._served.get(model_id)
            self._served = {k: v for k, v in self._served.items() if k != model_id}
            self._available = self._available | {model_id}
            self._failed = {k: v for k, v in self._failed.items() if k != model_id}
        return previous

    def remove(self, model_id: str) -> ServedModel | None:
        """The id is served no more (its aliases neither); returns what was loaded."""
        with self._lock:
            previous = self._served.get(model_id)
            self._ids = [i for i in self._ids if i != model_id]
            self._served = {k: v for k, v in self._served.items() if k != model_id}
            self._available = self._available - {model_id}
            self._failed = {k: v for k, v in self._failed.items() if k != model_id}
            self._aliases = {a: t for a, t in self._aliases.items() if t != model_id}
        return previous

    def alias(self, name: str, model_id: str) -> None:
        with self._lock:
            self._aliases = {**self._aliases, name: model_id}

    def unalias(self, name: str) -> bool:
        with self._lock:
            found = name in self._aliases
            self._aliases = {a: t for a, t in self._aliases.items() if a != name}
        return found

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def is_available(self, model_id: str) -> bool:
        return model_id in self._available

    @property
    def available_ids(self) -> list[str]:
        """Known models that are not loaded (loaded by the first request that names one)."""
        available = self._available
        return [i for i in self._ids if i in available]

    def loaded(self, model_id: str) -> ServedModel | None:
        return self._served.get(model_id)

    def fail(self, message: str) -> None:
        with self._lock:
            self._error = message

    def fail_model(self, model_id: str, message: str) -> None:
        """One model cannot be served (a damaged bundle of --models-dir); the others are."""
        with self._lock:
            if model_id not in self._ids:
                self._ids.append(model_id)
            self._failed = {**self._failed, model_id: message}

    def has_other_models(self, model_id: str) -> bool:
        return any(i != model_id and i not in self._failed for i in self._ids)

    @property
    def failed_models(self) -> dict[str, str]:
        return dict(self._failed)

    @property
    def model_ids(self) -> list[str]:
        """The ids of the models served, loading or available (not those that failed)."""
        return [i for i in self._ids if i not in self._failed]

    @property
    def served(self) -> ServedModel | None:
        """The default model, once loaded."""
        ids = self.model_ids
        return self._served.get(ids[0]) if ids else None

    def all_served(self) -> list[ServedModel]:
        """The loaded models, in the order they were named."""
        served = self._served
        return [served[i] for i in self._ids if i in served]

    @property
    def load_error(self) -> str | None:
        return self._error

    def is_ready(self) -> bool:
        served, available, ids = self._served, self._available, self.model_ids
        return bool(ids) and all(i in available or (i in served and served[i].engine.is_running) for i in ids)

    def check_up(self) -> None:
        """503 until the default model is loaded or known unloaded (routes that list models)."""
        ids = self.model_ids
        if not ids:
            raise unavailable(self._error or "no model is configured", 2)
        served = self._served.get(ids[0])
        if ids[0] not in self._available and (served is None or not served.engine.is_running):
            raise unavailable(self._error or f"the model '{ids[0]}' is loading; retry when /ready returns 200", 2)

    def resolve(self, model: str | None, any_name_if_single: bool = False) -> str:
        """The id a request's `model` names; 404 listing the ids when it names none of them.

        Ollama clients add a `:latest` tag to untagged names. With `any_name_if_single`, a server
        of one model answers whatever name is asked (llama.cpp's server does: clients
        configured for "gpt-4o" or a Claude model keep working)."""
        ids = self.model_ids
        aliases = self._aliases
        for candidate in (model or "", (model or "").removesuffix(":latest")):
            if candidate in aliases:
                return aliases[candidate]
            if candidate in self._failed and candidate not in ids:
                raise ApiError(
                    falcon.HTTP_503,
                    f"model '{candidate}' cannot be served: {self._failed[candidate]}",
                    param="model",
                    code="model_unavailable",
                )
        if model is None or model == "" or (any_name_if_single and len(ids) == 1):
            if not ids:
                raise unavailable(self._error or "no model is configured", 2)
            return ids[0]
        for candidate in (model, model.removesuffix(":latest")):
            if candidate in ids:
                return candidate
        raise ApiError(
            falcon.HTTP_404,
            f"model '{model}' not found; available models: {', '.join(ids)}",
            param="model",
            code="model_not_found",
        )

    def require(self, model: str | None = None, any_name_if_single: bool = False) -> ServedModel:
        """The model a request names (the default when None), or a 503 the client may retry."""
        return self.acquire(model, any_name_if_single)[0]

    def acquire(self, model: str | None = None, any_name_if_single: bool = False) -> tuple[ServedModel, float]:
        """`require`, and the seconds this request waited for the model to load (0 when it was)."""
        model_id = self.resolve(model, any_name_if_single)
        served = self._served.get(model_id)
        waited = 0.0
        demand = self.demand
        if served is None and model_id in self._available and demand is not None:
            started = time.monotonic()
            served = demand.load(model_id)
            waited = time.monotonic() - started
        if served is None or not served.engine.is_running:
            raise unavailable(self._error or f"the model '{model_id}' is loading; retry when /ready returns 200", 2)
        if demand is not None:
            demand.used(model_id)
        return served, waited


def load_served_model(
    bundle: Path,
    load: LoadOptions,
    scheduler: SchedulerConfig,
    telemetry: "Telemetry | None" = None,
    prompt_cache_bytes: int = 32 << 20,
    model_id: str | None = None,
    request_ids: Iterator[int] | None = None,
    templates: "TemplatePool | None" = None,
    grammar_limits: GrammarLimits = GrammarLimits(),
    grammar_workers: GrammarWorkers | None = None,
    tokenize_pool: WorkPool | None = None,
) -> ServedModel:
    """Load the bundle, run one warm-up step, start the engine thread. `request_ids` is the id
    sequence shared by the engines of one server; `templates` the worker processes that compile
    and render chat templates (None: in this process); `grammar_workers` the threads that
    compile grammars (None: one of the model's own); `tokenize_pool` the threads that tokenize
    long inputs (None: the request's own thread)."""
    started = time.monotonic()
    model = load_model(bundle, load)
    warm_up(model)
    try:
        chat = templates.template(*chat_template_parts(model)) if templates is not None else chat_template(model)
        chat_error = None
    except ChatTemplateError as e:
        chat, chat_error = None, f"the bundle's chat template does not compile: {e}"
    model_id = model_id or str(model.manifest["model"].get("name") or Path(bundle).name)
    grammars, grammars_error = None, None
    try:
        grammars = Grammars(
            model.bundle.file(TOKENIZER_FILE).read_text(encoding="utf-8"),
            model.vocab_size,
            _eog_ids(model),
            grammar_limits,
            grammar_workers,
        )
    except Exception as e:  # noqa: BLE001 - a tokenizer llguidance cannot read disables grammars, not the model
        grammars_error = f"llguidance cannot read this tokenizer: {e}"
    observer = telemetry.for_model(model_id) if telemetry is not None else None
    engine = Engine(model, scheduler, observer, request_ids=request_ids)
    engine.start()
    return ServedModel(
        engine=engine,
        model=model,
        model_id=model_id,
        created=int(time.time()),
        prompts=PromptCache(model, prompt_cache_bytes, tokenize_pool),
        chat=chat,
        chat_error=chat_error,
        tool_format=detect(chat.source) if chat is not None else None,
        grammars=grammars,
        grammars_error=grammars_error,
        call_ids=call_id_form(chat.source) if chat is not None else CallIdForm.OPENAI,
        load_seconds=time.monotonic() - started,
    )


def _eog_ids(model: LoadedModel) -> list[int]:
    info = model.tokenizer_info
    return list(info.get("eog_ids") or ([info["eos_id"]] if info.get("eos_id") is not None else []))


def warm_up(model: LoadedModel) -> None:
    """One greedy token through a throwaway engine: the first step pays for lazy weight
    preparation and kernel loading, so the first client does not. The serving engine is
    separate so its request ids and metrics start clean."""
    bos = model.tokenizer_info.get("bos_id")
    if not model.generates:  # an encoder: one embedding instead
        engine = Engine(model)
        job = pooled_embedding(engine, [bos if bos is not None else 0], Pooling.MEAN, 1)
        for _ in job:
            pass
        return
    request = GenerationRequest(
        prompt_ids=[bos if bos is not None else 0], params=SamplingParams(temperature=0.0), max_tokens=1
    )
    generate(Engine(model), request, lambda _text: None)
