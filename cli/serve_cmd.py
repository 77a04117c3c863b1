"""`rfc serve`: parse the flags (each also read from an RFC_* environment variable) into
frozen configs and hand them to rfc.runtime.server.serve."""

import dataclasses
import logging
import sys
from pathlib import Path

import click

from rfc.artifacts.limits import STEP_SEQS, STEP_TOKENS
from rfc.cli.errors import fail
from rfc.cli.oci_cmd import registry_options, timeout_options
from rfc.cli.cache_types import cache_type_options, parse_cache_types
from rfc.cli.memory import ctx_size_option, memory_options, parse_memory_options
from rfc.cli.speculative_options import draft_bundle, spec_config, spec_options
from rfc.cli.threads import apply_threads, threads_option


@click.command("serve")
@click.argument("models", nargs=-1, envvar="RFC_BUNDLE")
@click.option(
    "--models-dir",
    envvar="RFC_MODELS",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Serve every bundle in this directory too, and the registry reference in each *.ref file there.",
)
@click.option(
    "--require-signature",
    "require_signature",
    envvar="RFC_REQUIRE_SIGNATURE",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Serve only bundles whose model.sig this PEM public key verifies (every file, none added); "
    "anything else: one line, exit 2, before any bundle loads.",
)
@click.option(
    "--insecure",
    envvar="RFC_INSECURE_REGISTRY",
    is_flag=True,
    help="Pull references over plain HTTP: only from a registry on this machine.",
)
@timeout_options
@click.option(
    "--host",
    envvar="RFC_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (0.0.0.0 for all interfaces).",
)
@click.option("--port", envvar="RFC_PORT", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--device", envvar="RFC_DEVICE", default="auto", show_default=True, help="auto, ref, cpu, hip or cuda.")
@click.option(
    "--max-batch",
    envvar="RFC_MAX_BATCH",
    default=STEP_SEQS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sequences decoded together at most.",
)
@click.option(
    "--max-queue",
    envvar="RFC_MAX_QUEUE",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests waiting at most; more get 503.",
)
@click.option(
    "--decode-ahead/--no-decode-ahead",
    envvar="RFC_DECODE_AHEAD",
    default=True,
    show_default=True,
    help="On a GPU, queue each decode step before the one before is read, its tokens fed on the device "
    "(the host's work hides behind the card's); off: one step at a time.",
)
@click.option(
    "--kv-pages",
    envvar="RFC_KV_PAGES",
    multiple=True,
    metavar="N|MODEL=N",
    help="KV-cache pages of 16 tokens: N in all, split evenly over the models; MODEL=N for one model "
    "(repeatable). Default: from the memory budget (--gpu-memory-utilization, --kv-memory).",
)
@memory_options
@cache_type_options
@ctx_size_option(several_models=True)
@click.option(
    "--pooling",
    envvar="RFC_POOLING",
    type=click.Choice(["mean", "cls", "last"]),
    default=None,
    help="Embedding pooling for every model (default: the model's own, else last, as Ollama).",
)
@click.option(
    "--arch",
    "targets",
    envvar="RFC_ARCH",
    multiple=True,
    metavar="TARGET",
    help="For a GGUF argument: compile for this target (default: this host's GPUs and best CPU variant; repeatable).",
)
@click.option(
    "--chat-template",
    envvar="RFC_CHAT_TEMPLATE",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="For a GGUF argument: compile with this Jinja chat template instead of the file's own.",
)
@click.option(
    "--cache-dir",
    envvar="RFC_CACHE_DIR",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="rfc's cache (default: ~/.cache/rfc); GGUF arguments are compiled into DIR/bundles.",
)
@click.option(
    "--api-key",
    "api_keys",
    envvar="RFC_API_KEY",
    multiple=True,
    help="Require 'Authorization: Bearer KEY' (except /health, /ready); repeatable: each key is one client, "
    "who can read and cancel only its own requests (env: space-separated). Prefer the env var: flags "
    "show in ps.",
)
@click.option(
    "--api-key-file",
    envvar="RFC_API_KEY_FILE",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Client API keys, one per line (# comments), as --api-key.",
)
@click.option(
    "--admin-api-key",
    envvar="RFC_ADMIN_API_KEY",
    default=None,
    help="The key that may read /traces and any request's /status and /cancel.",
)
@click.option(
    "--public-traces",
    envvar="RFC_PUBLIC_TRACES",
    is_flag=True,
    help="Serve /traces to every client (the native API's open endpoint): traces hold request ids, which "
    "open their text.",
)
@click.option(
    "--public-metrics",
    envvar="RFC_PUBLIC_METRICS",
    is_flag=True,
    help="Serve /metrics without an API key, as vLLM does: for Prometheus, autoscalers and load-aware "
    "routers (counts and timings, no request text).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    envvar="RFC_CORS_ORIGIN",
    multiple=True,
    default=("*",),
    show_default=True,
    help="Allowed CORS origin (repeatable; env: space-separated).",
)
@click.option("--no-cors", envvar="RFC_NO_CORS", is_flag=True, help="Send no CORS headers at all.")
@click.option(
    "--no-webui",
    envvar="RFC_NO_WEBUI",
    is_flag=True,
    help="Serve no web chat page: / answers every client as Ollama's root does.",
)
@click.option(
    "--ollama-generic-tools",
    envvar="RFC_OLLAMA_GENERIC_TOOLS",
    is_flag=True,
    help="Ollama's /api/chat takes tools on a model whose chat template has no tool calling, through the "
    "generic JSON tool calling /v1 uses (default: a 400 'does not support tools', as Ollama answers).",
)
@click.option(
    "--log-format", envvar="RFC_LOG_FORMAT", type=click.Choice(["human", "json"]), default="human", show_default=True
)
@click.option(
    "--log-file",
    envvar="RFC_LOG_FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Append logs here instead of stderr.",
)
@click.option(
    "--log-level",
    envvar="RFC_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--no-verify",
    envvar="RFC_NO_VERIFY",
    is_flag=True,
    help="Trust the bundle: skip re-hashing its files (paths, sizes, layout and plan are still checked).",
)
@click.option(
    "--no-mmap",
    envvar="RFC_NO_MMAP",
    is_flag=True,
    help="Read the weights into memory instead of mapping the file (changes to the bundle's files under a "
    "running process cannot reach it).",
)
@click.option(
    "--trace-sample-rate",
    envvar="RFC_TRACE_SAMPLE_RATE",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Fraction of requests traced (GET /traces).",
)
@click.option(
    "--max-traces",
    envvar="RFC_MAX_TRACES",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Traces kept; the oldest go first.",
)
@click.option(
    "--max-body-bytes",
    envvar="RFC_MAX_BODY_BYTES",
    default=1 << 20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Larger request bodies get 413.",
)
@threads_option
@click.option(
    "--http-threads",
    envvar="RFC_HTTP_THREADS",
    default=None,
    type=click.IntRange(min=1),
    help="HTTP worker threads (default: max-batch + max-queue + 4).",
)
@click.option(
    "--max-connections",
    envvar="RFC_MAX_CONNECTIONS",
    default=1024,
    show_default=True,
    type=click.IntRange(min=16),
    help="Open connections at most (the file-descriptor limit is raised to fit); more wait in the listen backlog.",
)
@click.option(
    "--request-timeout",
    envvar="RFC_REQUEST_TIMEOUT",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a request's head and body may take to arrive; slower connections are closed.",
)
@click.option(
    "--idle-timeout",
    envvar="RFC_IDLE_TIMEOUT",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="Seconds an idle keep-alive connection is kept.",
)
@click.option(
    "--max-stored-responses",
    envvar="RFC_MAX_STORED_RESPONSES",
    default=1000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Responses API responses kept for previous_response_id (0: none); the oldest go first.",
)
@click.option(
    "--stored-responses-mb",
    envvar="RFC_STORED_RESPONSES_MB",
    default=64,
    show_default=True,
    type=click.IntRange(min=0),
    help="MiB of stored responses at most (their JSON); the oldest go first.",
)
@click.option(
    "--prompt-cache-mb",
    envvar="RFC_PROMPT_CACHE_MB",
    default=32,
    show_default=True,
    type=click.IntRange(min=0),
    help="MiB of tokenized prompts kept per model (0: none).",
)
@click.option(
    "--template-workers",
    envvar="RFC_TEMPLATE_WORKERS",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes rendering chat templates.",
)
@click.option(
    "--template-memory-mb",
    envvar="RFC_TEMPLATE_MEMORY_MB",
    default=1024,
    show_default=True,
    type=click.IntRange(min=64),
    help="Address-space limit of each template process, MiB.",
)
@click.option(
    "--template-timeout",
    envvar="RFC_TEMPLATE_TIMEOUT",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds one chat-template render may take; the process is killed and replaced after.",
)
@click.option(
    "--shutdown-timeout",
    envvar="RFC_SHUTDOWN_TIMEOUT",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="On SIGTERM: seconds running requests get to finish before they are ended (new requests get 503 at once).",
)
@click.option(
    "--grammar-max-bytes",
    envvar="RFC_GRAMMAR_MAX_BYTES",
    default=128 << 10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest JSON schema (compact JSON) or GBNF/Lark grammar a request may send.",
)
@click.option(
    "--grammar-max-rules",
    envvar="RFC_GRAMMAR_MAX_RULES",
    default=2000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most rules in a grammar (and x8 subschemas plus $refs in a schema).",
)
@click.option(
    "--grammar-max-depth",
    envvar="RFC_GRAMMAR_MAX_DEPTH",
    default=512,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Deepest nesting of a grammar or schema, counting each $ref / rule hop.",
)
@click.option(
    "--grammar-max-repeat",
    envvar="RFC_GRAMMAR_MAX_REPEAT",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest product of nested counted repetitions ({m,n}) in a regex or grammar.",
)
@click.option(
    "--grammar-workers",
    envvar="RFC_GRAMMAR_WORKERS",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Threads compiling grammars; --pool-queue more may wait, then 503.",
)
@click.option(
    "--grammar-timeout",
    envvar="RFC_GRAMMAR_TIMEOUT",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a request waits for its grammar to compile, then 503.",
)
@click.option(
    "--tokenize-workers",
    envvar="RFC_TOKENIZE_WORKERS",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Threads tokenizing long inputs (over 32 KiB).",
)
@click.option(
    "--pool-queue",
    envvar="RFC_POOL_QUEUE",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Jobs that may wait for the grammar or tokenizing threads; more get 503.",
)
@click.option(
    "--keep-alive",
    envvar="RFC_KEEP_ALIVE",
    default="-1",
    show_default=True,
    metavar="DURATION",
    help="Unload a model this long after its last request (5m, 1h, seconds; negative: never); the next "
    "request loads it again. Ollama clients may set their own per request (keep_alive).",
)
@click.option(
    "--max-loaded-models",
    envvar="RFC_MAX_LOADED_MODELS",
    default=None,
    type=click.IntRange(min=1),
    help="Models loaded at once at most (default: all): the first N load at startup, the others when a "
    "request names one, the least recently used idle model unloading to make room. The memory budget is "
    "split over N.",
)
@spec_options
@click.option(
    "--load-delay",
    envvar="RFC_LOAD_DELAY",
    default=0.0,
    type=click.FloatRange(min=0.0),
    hidden=True,
    help="Test hook: wait this long before loading.",
)
def serve_cmd(
    models,
    models_dir,
    require_signature,
    insecure,
    registry_timeout,
    pull_timeout,
    host,
    port,
    device,
    max_batch,
    max_queue,
    decode_ahead,
    kv_pages,
    gpu_memory_utilization,
    kv_memory,
    cache_type_k,
    cache_type_v,
    ctx_size,
    pooling,
    targets,
    chat_template,
    cache_dir,
    api_keys,
    api_key_file,
    admin_api_key,
    public_traces,
    public_metrics,
    cors_origins,
    no_cors,
    no_webui,
    log_format,
    log_file,
    log_level,
    no_verify,
    no_mmap,
    trace_sample_rate,
    max_traces,
    max_body_bytes,
    compute_threads,
    http_threads,
    max_connections,
    request_timeout,
    idle_timeout,
    max_stored_responses,
    stored_responses_mb,
    prompt_cache_mb,
    template_workers,
    template_memory_mb,
    template_timeout,
    shutdown_timeout,
    grammar_max_bytes,
    grammar_max_rules,
    grammar_max_depth,
    grammar_max_repeat,
    grammar_workers,
    grammar_timeout,
    tokenize_workers,
    pool_queue,
    keep_alive,
    max_loaded_models,
    spec_type,
    model_draft,
    spec_n_max,
    load_delay,
    ollama_generic_tools,
):
    """Serve MODELS (bundle directories, or GGUF files compiled on first use) over HTTP: the
    native API, an OpenAI-compatible /v1 API, Anthropic's /v1/messages and Ollama's /api."""
    from rfc.runtime.devices.cpu import openmp_wait_policy

    openmp_wait_policy(serving=True)  # before the device library loads libgomp
    thread_choice = apply_threads(compute_threads)
    utilization, kv_budget = parse_memory_options(gpu_memory_utilization, kv_memory)
    cache_types = parse_cache_types(cache_type_k, cache_type_v)
    from rfc.artifacts import BundleError
    from rfc.cli.model_args import bundle_paths, model_names, model_references
    from rfc.cli.sign_cmd import check_signatures, make_trust
    from rfc.runtime.engine.embedding import Pooling
    from rfc.runtime.sampling.grammar_limits import GrammarLimits
    from rfc.runtime.engine.assemble import LoadOptions
    from rfc.runtime.engine.scheduler import SchedulerConfig
    from rfc.runtime.server.config import LogConfig, ServeOptions, ServerConfig
    from rfc.runtime.server.logs import configure_logging
    from rfc.cli.gguf_cache import cache_root
    from rfc.cli.model_fetch import CliFetcher, models_dir_rescan
    from rfc.runtime.server.model_sources import parse_keep_alive
    from rfc.runtime.server.models import KvPages, ModelPolicy, discover_bundles, plan_models, sort_out
    from rfc.runtime.server.serve import serve

    try:
        found = discover_bundles(models_dir) + model_references(models_dir) if models_dir else []
        paths = list(models) + found
        registry = registry_options(insecure, registry_timeout, pull_timeout)
        bundles = bundle_paths(paths, targets, chat_template, cache_dir, registry)
        trust = make_trust(require_signature, (), None, None) if require_signature else None
        verified = check_signatures(bundles, trust) if trust is not None else {}
        # fail now, not after binding, on a named path that is no bundle at all; a bundle of
        # --models-dir that does not read is reported and skipped (the others serve)
        names = dict(zip(bundles, model_names(paths)))
        bundles, optional, broken = sort_out(bundles, [False] * len(models) + [True] * len(found))
        spec = spec_config(spec_type, spec_n_max, model_draft)
        if model_draft and len(bundles) > 1:
            fail("--model-draft drafts for one model: serve the model it drafts for alone")
        load = LoadOptions(
            device=device,
            verify=not no_verify,
            mmap=not no_mmap,
            gpu_memory_utilization=utilization,
            kv_memory=kv_budget,
            kv_max_sequences=max_batch,
            ctx_size=ctx_size,
            threads=thread_choice.threads,
            cache_types=cache_types,
            draft_model=draft_bundle(model_draft, targets, cache_dir, registry),
        )
        served = (
            plan_models(
                bundles, load, KvPages.parse(kv_pages), [names[b] for b in bundles], optional, max_loaded_models
            )
            if bundles
            else ()
        )
        # named as given (the ids), served from the real directory whose signature was checked
        served = tuple(dataclasses.replace(s, bundle=verified.get(s.bundle, s.bundle)) for s in served)
        if not served:
            fail("no bundle can be served: " + "; ".join(f"{b.bundle}: {b.error}" for b in broken))
        keys = list(api_keys) + (_read_keys(api_key_file) if api_key_file else [])
        policy = ModelPolicy(keep_alive_s=parse_keep_alive(keep_alive), max_loaded=max_loaded_models)
    except (BundleError, ValueError) as e:
        fail(str(e))
    # models arriving while the server runs: pulled or swapped in (the admin key), or found by
    # SIGHUP in --models-dir; each checked as those named here were
    fetcher = CliFetcher(cache_root(cache_dir), trust, models_dir, registry)
    named = bundles[: len(models)]
    rescan = (
        models_dir_rescan(models_dir, named, [names[b] for b in named], fetcher, load, kv_pages, max_loaded_models)
        if models_dir
        else None
    )
    try:
        options = ServeOptions(
            models=served,
            broken=tuple(broken),
            host=host,
            port=port,
            threads=http_threads,
            scheduler=SchedulerConfig(
                max_batch=max_batch,
                max_queue=max_queue,
                max_batch_tokens=max(STEP_TOKENS, max_batch),
                spec=spec,
                decode_ahead=decode_ahead,
            ),
            server=ServerConfig(
                api_keys=tuple(k for k in keys if k),
                admin_api_key=admin_api_key or None,
                public_traces=public_traces,
                public_metrics=public_metrics,
                cors_origins=() if no_cors else tuple(cors_origins),
                max_body_bytes=max_body_bytes,
                trace_sample_rate=trace_sample_rate,
                max_traces=max_traces,
                pooling=Pooling(pooling) if pooling else None,
                prompt_cache_bytes=prompt_cache_mb << 20,
                max_stored_responses=max_stored_responses,
                stored_responses_bytes=stored_responses_mb << 20,
                max_connections=max_connections,
                request_timeout_s=request_timeout,
                idle_timeout_s=idle_timeout,
                template_workers=template_workers,
                template_memory_bytes=template_memory_mb << 20,
                template_timeout_s=template_timeout,
                grammar_limits=GrammarLimits(
                    max_bytes=grammar_max_bytes,
                    max_rules=grammar_max_rules,
                    max_depth=grammar_max_depth,
                    max_repeat=grammar_max_repeat,
                ),
                grammar_workers=grammar_workers,
                grammar_timeout_s=grammar_timeout,
                tokenize_workers=tokenize_workers,
                pool_queue=pool_queue,
                shutdown_timeout_s=shutdown_timeout,
                webui=not no_webui,
                ollama_generic_tools=ollama_generic_tools,
            ),
            log=LogConfig(format=log_format, file=log_file, level=log_level),
            load_delay_s=load_delay,
            policy=policy,
            fetcher=fetcher,
            rescan=rescan,
            added_load=load,
        )
    except ValueError as e:
        fail(str(e))
    try:
        configure_logging(options.log)
    except OSError as e:
        fail(f"cannot open the log file {log_file}: {e.strerror or e}")
    logging.getLogger("rfc.server").info("%s", thread_choice.describe())
    try:
        status = serve(options)
    except OSError as e:  # the address is taken or not ours to bind
        fail(f"cannot serve on {host}:{port}: {e.strerror or e}")
    sys.exit(status)


def _read_keys(path: Path) -> list[str]:
    """One key per line; blank lines and # comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read the API key file {path}: {e}")
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
