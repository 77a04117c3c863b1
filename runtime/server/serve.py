"""`rfc serve`, the work behind the command: bind the socket, load the models in the
background (one after the other), serve until interrupted.

The socket listens before the model loads, so probes get answers from the start: /health
says "unhealthy" and /ready 503 until the bundle is loaded, one warm-up step has run and the
engine thread is up. A bundle that fails to load stops the server (exit status 1): a server
that can never become ready should not look alive to an orchestrator."""

import _thread
import logging
import signal
import threading
import time

from rfc.runtime.request_ids import RandomIds
from rfc.runtime.server.app import create_app
from rfc.runtime.server.config import ServeOptions
from rfc.runtime.server.host import EngineHandle, load_served_model
from rfc.runtime.server.listener import create_listener
from rfc.runtime.server.telemetry import Telemetry, build_telemetry
from rfc.runtime.template_worker import TemplatePool, WorkerLimits

log = logging.getLogger("rfc.server")

# waitress must not refuse what the app would answer with its own JSON 413: it parses the
# Content-Length itself and answers oversized bodies in plain text.
_BODY_SLACK = 1 << 20


def serve(options: ServeOptions) -> int:
    """Runs the server in this thread until SIGINT/SIGTERM; returns the exit status.
    Logging is the caller's to configure (`logs.configure_logging` at the edge)."""
    handle = EngineHandle([m.model_id for m in options.models])
    telemetry = build_telemetry(handle, options.server)
    app = create_app(handle, options.server, telemetry)
    threads = options.http_threads()
    limits = options.server
    server = create_listener(
        app, host=options.host, port=options.port, threads=threads, max_connections=limits.max_connections,
        request_timeout_s=limits.request_timeout_s, idle_timeout_s=limits.idle_timeout_s,
        max_request_body_size=limits.max_body_bytes + _BODY_SLACK,
    )  # fmt: skip
    log.info("listening on http://%s:%s (%d HTTP threads, %d connections); loading %s", options.host, server.effective_port,
             threads, limits.max_connections, ", ".join(f"{m.model_id} ({m.bundle})" for m in options.models))
    # SIGTERM ends the server; a load failure raises it too. (SIGINT may be ignored: a
    # background job of a non-interactive shell starts that way, and must still exit.)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    templates = TemplatePool(WorkerLimits(limits.template_workers, limits.template_memory_bytes, limits.template_timeout_s))
    loader = threading.Thread(target=_load, args=(handle, options, telemetry, templates), name="rfc-loader", daemon=True)
    try:
        loader.start()  # inside the try: a load failure interrupts this thread at once
        server.run()  # returns on SIGINT/SIGTERM: waitress catches the KeyboardInterrupt
    except KeyboardInterrupt:
        pass  # one that came before waitress's loop started
    finally:
        log.info("shutting down")
        signal.signal(signal.SIGTERM, previous)
        server.close()
        for served in handle.all_served():
            served.engine.stop()
        templates.close()
    if handle.load_error:
        log.error("%s", handle.load_error)
        return 1
    return 0


def _load(handle: EngineHandle, options: ServeOptions, telemetry: Telemetry, templates: TemplatePool) -> None:
    bundle = options.models[0].bundle
    try:
        if options.load_delay_s > 0:
            time.sleep(options.load_delay_s)
        request_ids = RandomIds()  # one source for every engine: an id names one request of one model
        for source in options.models:
            bundle = source.bundle
            started = time.perf_counter()
            served = load_served_model(bundle, source.load, options.scheduler, telemetry, options.server.prompt_cache_bytes,
                                       model_id=source.model_id, request_ids=request_ids, templates=templates)
            handle.attach(served)
            log.info(
                "ready: %s on device %s (%d KV pages, context %d of %d tokens) in %.2f s; tool calls: %s; constrained decoding: %s",
                served.model_id, served.model.device_choice.name, served.model.blocks.num_blocks, served.model.context_length,
                served.model.trained_context_length, time.perf_counter() - started,
                served.tool_format.name if served.tool_format else "not parsed (no tool-call format in the chat template)",
                "llguidance" if served.grammars else served.grammars_error,
            )
    except Exception as e:  # noqa: BLE001 - any load failure ends the server, with its reason
        handle.fail(f"loading {bundle} failed: {e}")
        log.debug("load failure", exc_info=True)
        _thread.interrupt_main(signal.SIGTERM)  # our handler, whatever SIGINT's disposition


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
