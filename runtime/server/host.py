"""The model the app serves. The app exists (and the socket listens) before the model is
loaded; resources ask the `EngineHandle` and answer 503 until it holds a `ServedModel`."""

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rfc.runtime.chat import ChatTemplate, ChatTemplateError
from rfc.runtime.engine import Engine, GenerationRequest, Observer
from rfc.runtime.generate import generate
from rfc.runtime.loader import LoadedModel, LoadOptions, load_model
from rfc.runtime.prompting import chat_template
from rfc.runtime.sampler import SamplingParams
from rfc.runtime.scheduler import SchedulerConfig
from rfc.runtime.server.errors import unavailable
from rfc.runtime.server.prompt_cache import PromptCache


@dataclass(frozen=True)
class ServedModel:
    engine: Engine
    model: LoadedModel
    model_id: str
    created: int  # unix time the model was loaded (OpenAI's `created`)
    prompts: PromptCache
    chat: ChatTemplate | None
    chat_error: str | None  # why the bundle's chat template is unusable, if it is


class EngineHandle:
    """Set once, by the loading thread; read by every HTTP thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: ServedModel | None = None
        self._error: str | None = None

    def attach(self, served: ServedModel) -> None:
        with self._lock:
            self._served = served

    def fail(self, message: str) -> None:
        with self._lock:
            self._error = message

    @property
    def served(self) -> ServedModel | None:
        return self._served

    @property
    def load_error(self) -> str | None:
        return self._error

    def is_ready(self) -> bool:
        served = self._served
        return served is not None and served.engine.is_running

    def require(self) -> ServedModel:
        """The served model, or a 503 the client may retry."""
        served = self._served
        if served is None or not served.engine.is_running:
            raise unavailable(self._error or "the model is loading; retry when /ready returns 200", 2)
        return served


def load_served_model(bundle: Path, load: LoadOptions, scheduler: SchedulerConfig, observer: Observer,
                      prompt_cache_entries: int = 256) -> ServedModel:
    """Load the bundle, run one warm-up step, start the engine thread."""
    model = load_model(bundle, load)
    warm_up(model)
    try:
        chat, chat_error = chat_template(model), None
    except ChatTemplateError as e:
        chat, chat_error = None, f"the bundle's chat template does not compile: {e}"
    engine = Engine(model, scheduler, observer)
    engine.start()
    return ServedModel(
        engine=engine,
        model=model,
        model_id=str(model.manifest["model"].get("name") or Path(bundle).name),
        created=int(time.time()),
        prompts=PromptCache(model, prompt_cache_entries),
        chat=chat,
        chat_error=chat_error,
    )


def warm_up(model: LoadedModel) -> None:
    """One greedy token through a throwaway engine: the first step pays for lazy weight
    preparation and kernel loading, so the first client does not. The serving engine is
    separate so its request ids and metrics start clean."""
    bos = model.tokenizer_info.get("bos_id")
    request = GenerationRequest(prompt_ids=[bos if bos is not None else 0], params=SamplingParams(temperature=0.0), max_tokens=1)
    generate(Engine(model), request, lambda _text: None)
