"""Server configuration: frozen dataclasses built once at the edge (the `rfc serve` command or
a test) and handed down; nothing below reads the environment."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rfc.runtime.engine.embedding import Pooling
from rfc.runtime.sampling.grammar_limits import GrammarLimits
from rfc.runtime.engine.assemble import LoadOptions
from rfc.runtime.engine.scheduler import SchedulerConfig
from rfc.runtime.server.model_sources import BundleFetcher, Rescan
from rfc.runtime.server.models import BrokenModel, ModelPolicy, ModelSource

# What the native API reports as its service name (docs/native-api.md: /health, /ready, traces).
SERVICE_NAME = "rocmforge"


@dataclass(frozen=True)
class ServerConfig:
    """What the HTTP app needs to know; independent of how the model gets loaded."""

    api_keys: tuple[str, ...] = ()  # (): no authentication; each key is one client, who sees only its own requests
    admin_api_key: str | None = None  # may read /traces and any request; None: nobody may, unless public_traces
    public_traces: bool = False  # /traces for anyone who may call the server (the native API's documented behaviour)
    # /metrics without a key, as vLLM serves it: what Prometheus, KEDA and routers scrape (counts, no text)
    public_metrics: bool = False
    cors_origins: tuple[str, ...] = ("*",)  # () disables CORS headers entirely
    max_body_bytes: int = 1 << 20
    trace_sample_rate: float = 0.1
    max_traces: int = 1000
    prompt_cache_bytes: int = 32 << 20  # tokenized prompts kept, counted in real bytes
    # the Responses API's stored responses (previous_response_id), per server: count and JSON bytes
    max_stored_responses: int = 1000
    stored_responses_bytes: int = 64 << 20
    pooling: Pooling | None = None  # embeddings: None takes each model's own (see runtime/engine/embedding.py)
    # connections (docs/security.md): slow or idle clients cannot hold the server
    max_connections: int = 1024
    request_timeout_s: float = 30.0  # a request's head and body must arrive within this
    idle_timeout_s: float = 120.0  # an idle keep-alive connection is closed after this
    # chat templates render in worker processes with these limits
    template_workers: int = 2
    template_memory_bytes: int = 1 << 30
    template_timeout_s: float = 5.0
    # grammars (constrained decoding) and long inputs are compiled / tokenized on bounded pools
    grammar_limits: GrammarLimits = GrammarLimits()
    grammar_workers: int = 2
    grammar_timeout_s: float = 10.0
    tokenize_workers: int = 2
    pool_queue: int = 32  # jobs waiting per pool; more get 503
    # SIGTERM: /ready turns 503, new requests 503, running ones get this long to finish
    shutdown_timeout_s: float = 30.0
    webui: bool = True  # the web chat page at / for browsers (runtime/server/webui_routes.py)
    # /api/chat with tools on a template without tool calling: generic tool calling (True) or
    # Ollama's 400 "does not support tools" (False); /v1 always uses the generic form
    ollama_generic_tools: bool = False

    @property
    def api_key(self) -> str | None:
        """The first client key (for callers that only need to know whether auth is on)."""
        return self.api_keys[0] if self.api_keys else None

    def __post_init__(self) -> None:
        if not 0.0 <= self.trace_sample_rate <= 1.0:
            raise ValueError(f"trace sample rate must be in [0, 1], got {self.trace_sample_rate}")
        if (
            self.max_traces < 1
            or self.max_body_bytes < 1
            or min(self.prompt_cache_bytes, self.max_stored_responses, self.stored_responses_bytes) < 0
        ):
            raise ValueError("max_traces and max_body_bytes must be positive, the cache and store sizes not negative")
        if self.max_connections < 16 or self.request_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("max_connections must be at least 16 and the timeouts positive")
        if self.template_workers < 1 or self.template_memory_bytes < (64 << 20) or self.template_timeout_s <= 0:
            raise ValueError("template workers: at least 1, at least 64 MiB each, a positive timeout")
        if min(self.grammar_workers, self.tokenize_workers, self.pool_queue) < 1 or self.grammar_timeout_s <= 0:
            raise ValueError("grammar and tokenization pools need a thread, a queue slot and a positive timeout")
        if self.shutdown_timeout_s < 0:
            raise ValueError("the shutdown timeout cannot be negative")
        if (
            any(not k for k in self.api_keys)
            or self.admin_api_key == ""
            or (self.admin_api_key and self.admin_api_key in self.api_keys)
        ):
            raise ValueError("API keys must be non-empty, and the admin key must differ from the client keys")


@dataclass(frozen=True)
class LogConfig:
    format: str = "human"  # "human" or "json"
    file: Path | None = None  # None: stderr
    level: str = "info"

    def __post_init__(self) -> None:
        if self.format not in ("human", "json"):
            raise ValueError(f"log format must be 'human' or 'json', got {self.format!r}")


@dataclass(frozen=True)
class ServeOptions:
    """Everything `rfc serve` needs: where to listen, what to load, how to serve it."""

    models: tuple[ModelSource, ...]  # the first is the default model
    broken: tuple[BrokenModel, ...] = ()  # bundles of --models-dir that cannot be served (reported)
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int | None = None  # None: enough for max_batch + max_queue clients at once
    scheduler: SchedulerConfig = SchedulerConfig()
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    # Test hook: sleep this long before loading, so a test can watch /ready say 503.
    load_delay_s: float = 0.0
    # models while serving (runtime/server/model_manager.py): when they load and unload; what
    # fetches a pulled or swapped-in version (None: nothing can be); what SIGHUP re-reads
    # (--models-dir; None: SIGHUP is not handled); the load options of models added so
    policy: ModelPolicy = ModelPolicy()
    fetcher: BundleFetcher | None = None
    rescan: Callable[[], Rescan] | None = None
    added_load: LoadOptions = LoadOptions()

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("no model to serve")

    def http_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        # Every streaming client holds a thread for its whole generation; /health and
        # /metrics must still answer when the batch and the queue are full.
        return self.scheduler.max_batch + self.scheduler.max_queue + 4
