"""`rfc serve`, the work behind the command: bind the socket, load the models in the
background (one after the other), serve until SIGTERM or SIGINT, then drain.

The socket listens before the model loads, so probes get answers from the start: /health
says "unhealthy" and /ready 503 until the bundle is loaded, one warm-up step has run and the
engine thread is up. A bundle named on the command line that fails to load stops the server
(exit status 1): a server that can never become ready should not look alive to an
orchestrator. A bundle found in --models-dir that fails is reported and skipped; the others
serve.

The first SIGTERM or SIGINT drains (runtime/server/lifecycle.py): /ready 503, new requests
503, running ones finish within --shutdown-timeout or end with a final event; exit 0. A
second signal exits at once. SIGHUP re-reads --models-dir: changed models are swapped without
ending a request, new ones added, gone ones removed (runtime/server/model_manager.py)."""

import logging
import signal
import threading
import time

from rfc.runtime.sampling.constraints import GrammarWorkers
from rfc.runtime.engine.request_ids import RandomIds
from rfc.runtime.server.app import create_app
from rfc.runtime.server.config import ServeOptions
from rfc.runtime.server.served_models import EngineHandle, ServedModel, load_served_model
from rfc.runtime.server.lifecycle import Lifecycle
from rfc.runtime.server.listener import create_listener
from rfc.runtime.server.model_manager import ModelManager
from rfc.runtime.server.models import ModelSource
from rfc.runtime.server.telemetry import Telemetry, build_telemetry
from rfc.runtime.text.template_worker import TemplatePool, WorkerLimits
from rfc.runtime.core.work_pool import WorkPool

log = logging.getLogger("rfc.server")


class _Pools:
    """The bounded pools every model of the server shares (runtime/core/work_pool.py)."""

    def __init__(self, options: ServeOptions):
        limits = options.server
        self.templates = TemplatePool(
            WorkerLimits(limits.template_workers, limits.template_memory_bytes, limits.template_timeout_s)
        )
        self.grammars = GrammarWorkers(limits.grammar_workers, limits.pool_queue, limits.grammar_timeout_s)
        self.tokenize = WorkPool("tokenization", limits.tokenize_workers, limits.pool_queue, timeout_s=60.0)

    def close(self) -> None:
        self.grammars.close()
        self.tokenize.close()
        self.templates.close()


class _Loader:
    """Loads one model with the parts every engine of the server shares; `pools` is set
    before the first load (creating them waits until the socket is bound)."""

    def __init__(self, options: ServeOptions, telemetry: Telemetry):
        self._options = options
        self._telemetry = telemetry
        self._request_ids = RandomIds()  # one source for every engine: an id names one request of one model
        self.pools: _Pools | None = None

    def __call__(self, source: ModelSource) -> ServedModel:
        assert self.pools is not None
        options, pools = self._options, self.pools
        return load_served_model(
            source.bundle,
            source.load,
            options.scheduler,
            self._telemetry,
            options.server.prompt_cache_bytes,
            model_id=source.model_id,
            request_ids=self._request_ids,
            templates=pools.templates,
            grammar_limits=options.server.grammar_limits,
            grammar_workers=pools.grammars,
            tokenize_pool=pools.tokenize,
        )


def serve(options: ServeOptions) -> int:
    """Runs the server in this thread until SIGINT/SIGTERM and the drain; returns the exit
    status. Logging is the caller's to configure (`logs.configure_logging` at the edge)."""
    handle = EngineHandle([m.model_id for m in options.models])
    for broken in options.broken:
        handle.fail_model(broken.model_id, f"{broken.bundle.name}: {broken.error}")
        log.error("not serving %s: %s", broken.bundle, broken.error)
    lifecycle = Lifecycle()
    telemetry = build_telemetry(handle, options.server)
    loader = _Loader(options, telemetry)
    manager = ModelManager(handle, lifecycle, loader, options.policy, options.fetcher, options.added_load)
    manager.register(options.models)
    app = create_app(handle, options.server, telemetry, lifecycle, manager)
    threads = options.http_threads()
    limits = options.server
    server = create_listener(
        app, host=options.host, port=options.port, threads=threads, max_connections=limits.max_connections,
        request_timeout_s=limits.request_timeout_s, idle_timeout_s=limits.idle_timeout_s,
        max_body_bytes=limits.max_body_bytes,
    )  # fmt: skip
    log.info(
        "listening on http://%s:%s (%d HTTP threads, %d connections); loading %s",
        options.host,
        server.effective_port,
        threads,
        limits.max_connections,
        ", ".join(f"{m.model_id} ({m.bundle})" for m in options.models),
    )

    def on_signal(signum, frame) -> None:
        # the first signal drains; a second one, a finished drain or a failed load stop now
        if handle.load_error or lifecycle.drained or not lifecycle.begin_drain():
            raise KeyboardInterrupt
        log.info(
            "%s: draining (up to %g s for running requests; /ready now answers 503)",
            signal.Signals(signum).name,
            limits.shutdown_timeout_s,
        )
        threading.Thread(
            target=_drain, args=(manager, lifecycle, limits.shutdown_timeout_s), name="rfc-drain", daemon=True
        ).start()

    rescans = threading.Lock()

    def on_hangup(signum, frame) -> None:
        if options.rescan is not None and not lifecycle.draining:
            log.info("SIGHUP: re-reading --models-dir")
            threading.Thread(
                target=_rescan, args=(manager, options.rescan, rescans), name="rfc-rescan", daemon=True
            ).start()

    # (SIGINT may be ignored at start: a background job of a non-interactive shell starts that
    # way, and must still exit on SIGTERM or a load failure.)
    previous = {
        sig: signal.signal(sig, on_signal)
        for sig in (signal.SIGTERM, signal.SIGINT)
        if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN
    }
    if options.rescan is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    pools = loader.pools = _Pools(options)
    startup = threading.Thread(target=_load, args=(handle, manager, options), name="rfc-loader", daemon=True)
    try:
        startup.start()  # inside the try: a load failure interrupts this thread at once
        server.run()  # returns on KeyboardInterrupt: waitress catches it
    except KeyboardInterrupt:
        pass  # one that came before waitress's loop started
    finally:
        log.info("shutting down")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
        manager.close()
        for served in handle.all_served():
            served.engine.stop()
        pools.close()
    if handle.load_error:
        log.error("%s", handle.load_error)
        return 1
    return 0


def _drain(manager: ModelManager, lifecycle: Lifecycle, timeout_s: float) -> None:
    try:
        outcome = lifecycle.drain(manager.engines, timeout_s)  # retiring versions' requests too
        log.info(
            "drained in %.2f s: %d requests ended by the shutdown, %d responses unfinished",
            outcome["seconds"],
            outcome["ended"],
            outcome["unfinished_responses"],
        )
    finally:
        _stop_main_thread()  # on_signal sees `drained` and stops the loop


def _stop_main_thread() -> None:
    """SIGTERM to the main thread itself: it interrupts the listener's select() at once
    (`_thread.interrupt_main` only sets a flag that select's timeout, up to a second later,
    would let the main thread see)."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


def _load(handle: EngineHandle, manager: ModelManager, options: ServeOptions) -> None:
    if options.load_delay_s > 0:
        time.sleep(options.load_delay_s)
    for source in options.models:
        if not source.eager:
            continue  # loaded by the first request that names it
        started = time.perf_counter()
        try:
            served = manager.start_eager(source.model_id)
        except Exception as e:  # noqa: BLE001 - a load failure ends the server (or skips an optional model), with its reason
            log.debug("load failure", exc_info=True)
            if not source.required and handle.has_other_models(source.model_id):
                handle.fail_model(source.model_id, f"{source.bundle.name}: {e}")
                log.error("not serving %s (%s): %s", source.model_id, source.bundle, e)
                continue
            handle.fail(f"loading {source.bundle} failed: {e}")
            _stop_main_thread()  # our handler, whatever SIGINT's disposition
            return
        if served is None:
            continue  # replaced while the server started: the new version loads on demand
        log.info(
            "ready: %s on device %s (%d KV pages, context %d of %d tokens) in %.2f s; tool calls: %s; constrained "
            "decoding: %s",
            served.model_id,
            served.model.device_choice.name,
            served.model.kv_pool.num_blocks,
            served.model.context_length,
            served.model.trained_context_length,
            time.perf_counter() - started,
            served.tool_format.name if served.tool_format else "not parsed (no tool-call format in the chat template)",
            "llguidance" if served.grammars else served.grammars_error,
        )
    manager.start_reaper()


def _rescan(manager: ModelManager, rescan, one_at_a_time: threading.Lock) -> None:
    with one_at_a_time:
        try:
            found = rescan()
        except Exception as e:  # noqa: BLE001 - a directory that cannot be read leaves the models as they are
            log.error("SIGHUP: cannot re-read --models-dir: %s", e)
            return
        manager.apply_rescan(found)
