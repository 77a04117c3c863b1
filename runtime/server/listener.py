"""The HTTP listener: waitress, hardened against slow and numerous clients.

waitress reads every request on one event-loop thread and hands complete requests to a pool
of worker threads. Two things could still starve the server, and both are handled here:

- **Slow clients.** A connection that trickles its request head costs a channel (a file
  descriptor), not a thread; enough of them would reach waitress's default connection limit,
  after which nothing is accepted. So the limit is configurable and high (the soft file-descriptor
  limit is raised to match), and a request whose head and body have not fully arrived within
  `request_timeout_s` of its first byte has its connection closed — time, not bytes, is what a
  slowloris spends.
- **Idle sockets at the cap.** Past the connection limit, waitress stops accepting and new
  connections wait in the listen backlog, probes included. So the server accepts a small
  overflow past it: a connection there is answered `/health` and `/ready`, and a 503 at once
  for anything else, and is closed when it stays idle (OVERFLOW_CONNECTIONS, OVERFLOW_GRACE_S).
- **Busy workers.** Streaming clients hold a worker thread for their whole generation. The
  health and readiness probes must answer even when every worker is busy, so they have a
  thread of their own and never queue behind generations: they only read in-memory state and
  write a few hundred bytes. (Not the event-loop thread itself: waitress dispatches a request
  while holding the channel's lock, which servicing it takes again.)

And the framing is strict: a request that carries both `Content-Length` and `Transfer-Encoding`
is refused with 400 and its connection closed (RFC 9112 §6.3: the two disagree on where the
body ends, so what follows cannot be trusted to be the next request). The errors waitress
answers itself (a malformed head, a body over the limit) are JSON in the shape of the path's
API, like the application's own.
"""

import json
import logging
import resource
import time

import waitress
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import Error, RequestEntityTooLarge

from rfc.runtime.server.errors import error_body

log = logging.getLogger("rfc.server")

# Paths answered on the probes' thread: cheap, read-only, needed by orchestrators at all times.
PROBE_PATHS = frozenset({"/health", "/ready"})
# Connections accepted past --max-connections, so that a probe still gets in when idle sockets
# hold the cap: such a connection is answered a probe, or a 503 at once for anything else, and
# closed after OVERFLOW_GRACE_S without a request. Past the overflow too, new connections wait
# in the listen backlog (they get in as the overflow's idle ones are closed).
OVERFLOW_CONNECTIONS = 64
OVERFLOW_GRACE_S = 2.0
# waitress refuses bodies past the application's limit and this much more without reading them;
# the application reads and refuses the ones in between (a client still sending a body that the
# server will not read may see its connection reset before the 413).
BODY_SLACK = 1 << 20


class _StrictParser(HTTPRequestParser):
    """waitress's parser, refusing a request framed two ways (`Content-Length` and a chunked
    `Transfer-Encoding`; waitress would read it as chunked and keep the connection open)."""

    def parse_header(self, header_plus):
        super().parse_header(header_plus)
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("the request has both Content-Length and Transfer-Encoding; send one")


class _TooManyConnections(Error):
    """A request on a connection accepted past the cap that is not a probe."""

    code = 503
    reason = "Service Unavailable"


class _JsonErrorTask(ErrorTask):
    """waitress's own error responses (400 for a malformed head, 413 over the body limit),
    as JSON in the shape of the path's API; the connection is closed after them."""

    body_limit = 0  # the request-body limit in bytes, for the 413's message
    connection_limit = 0  # the connection cap, for the 503's

    def execute(self):
        error = self.request.error
        if isinstance(error, RequestEntityTooLarge):
            message = f"the request body exceeds the limit of {self.body_limit} bytes"
        elif isinstance(error, _TooManyConnections):
            message = (
                f"the server holds its limit of {self.connection_limit} connections (--max-connections); retry later"
            )
            self.response_headers.append(("Retry-After", "1"))
        else:
            message = str(error.body)
        body = json.dumps(error_body(getattr(self.request, "path", "") or "", error.code, message)).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """Remembers when the request being received began, for the request deadline, and whether
    it was accepted past the connection cap (`overflow`: it may only ask for a probe)."""

    parser_class = _StrictParser
    error_task_class = _JsonErrorTask
    partial_since: float | None = None
    connection_limit = 0  # the cap (set per server)

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        self.accepted_at = time.monotonic()
        self.overflow = len(server.active_channels) > self.connection_limit

    def received(self, data):
        if self.request is None and data:
            self.partial_since = time.monotonic()
        result = super().received(data)
        if self.request is None:
            self.partial_since = None
        return result


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (at most the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def create_listener(
    app,
    *,
    host: str,
    port: int,
    threads: int,
    max_connections: int,
    request_timeout_s: float,
    idle_timeout_s: float,
    max_body_bytes: int,
):
    """A waitress server for `app` with the protections above; `max_body_bytes` is the
    application's body limit (read_json's)."""
    fds = raise_fd_limit(max_connections + OVERFLOW_CONNECTIONS + threads + 256)
    connection_limit = max_connections
    if fds < max_connections + OVERFLOW_CONNECTIONS + 64:
        connection_limit = max(16, fds - OVERFLOW_CONNECTIONS - 64)
        log.warning(
            "the file-descriptor limit (%d) allows %d connections, not %d", fds, connection_limit, max_connections
        )
    server = waitress.create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        connection_limit=connection_limit,
        channel_timeout=int(max(1, idle_timeout_s)),
        cleanup_interval=max(1, int(min(idle_timeout_s, request_timeout_s) / 4)),
        send_bytes=1,  # write each SSE event as it comes; waitress would otherwise batch 18 KB
        channel_request_lookahead=1,  # keeps reading the socket, so a vanished client is noticed
        max_request_body_size=max_body_bytes + BODY_SLACK,
        asyncore_use_poll=True,  # no FD_SETSIZE ceiling
        ident="rfc",
    )
    task = type(
        "JsonErrorTask", (_JsonErrorTask,), {"body_limit": max_body_bytes, "connection_limit": connection_limit}
    )
    server.channel_class = type(
        "Channel", (_Channel,), {"error_task_class": task, "connection_limit": connection_limit}
    )
    dispatch = server.add_task
    maintain = server.maintenance

    probes = ThreadedTaskDispatcher()
    probes.set_thread_count(1)

    def add_task(channel) -> None:
        request = channel.requests[0]
        if not request.error and request.command in ("GET", "HEAD") and request.path in PROBE_PATHS:
            probes.add_task(channel)  # its own thread: a probe never waits for a generation
        elif channel.overflow:
            if not request.error:
                request.error = _TooManyConnections("")
            probes.add_task(channel)  # a 503 at once (a few bytes), the connection closed after it
        else:
            dispatch(channel)

    close = server.close

    def close_all() -> None:
        close()
        probes.shutdown(cancel_pending=True, timeout=1)

    def maintenance(now: float) -> None:
        maintain(now)
        deadline = time.monotonic() - request_timeout_s
        for channel in list(server.active_channels.values()):
            since = getattr(channel, "partial_since", None)
            if since is not None and since < deadline:
                channel.will_close = True  # closed by the loop on its next turn

    state = {"swept": 0.0, "at_cap": False}  # when the overflow was last swept; whether the cap is held (for the log)

    def readable() -> bool:
        """waitress's maintenance, then accepting up to the cap and the overflow past it, whose
        idle connections are closed after OVERFLOW_GRACE_S."""
        if time.time() >= server.next_channel_cleanup:
            server.next_channel_cleanup = time.time() + server.adj.cleanup_interval
            server.maintenance(time.time())
        now = time.monotonic()
        held = len(server.active_channels)
        if (held >= connection_limit) != state["at_cap"]:
            state["at_cap"] = held >= connection_limit
            if state["at_cap"]:
                log.warning(
                    "%d connections (--max-connections): %d more are accepted for /health and /ready only",
                    connection_limit,
                    OVERFLOW_CONNECTIONS,
                )
        if now - state["swept"] >= 0.25:
            state["swept"] = now
            for channel in list(server.active_channels.values()):
                if channel.overflow and not channel.requests and channel.accepted_at < now - OVERFLOW_GRACE_S:
                    channel.will_close = True
        return server.accepting and held < connection_limit + OVERFLOW_CONNECTIONS

    server.add_task = add_task
    server.maintenance = maintenance
    server.readable = readable
    server.close = close_all
    return server
