"""The HTTP listener: waitress, hardened against slow and numerous clients.

waitress reads every request on one event-loop thread and hands complete requests to a pool
of worker threads. Two things could still starve the server, and both are handled here:

- **Slow clients.** A connection that trickles its request head costs a channel (a file
  descriptor), not a thread; enough of them would reach waitress's default connection limit,
  after which nothing is accepted. So the limit is configurable and high (the soft file-descriptor
  limit is raised to match), and a request whose head and body have not fully arrived within
  `request_timeout_s` of its first byte has its connection closed — time, not bytes, is what a
  slowloris spends.
- **Busy workers.** Streaming clients hold a worker thread for their whole generation. The
  health and readiness probes must answer even when every worker is busy, so they have a
  thread of their own and never queue behind generations: they only read in-memory state and
  write a few hundred bytes. (Not the event-loop thread itself: waitress dispatches a request
  while holding the channel's lock, which servicing it takes again.)
"""

import logging
import resource
import time

import waitress
from waitress.channel import HTTPChannel
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("rfc.server")

# Paths answered on the event loop: cheap, read-only, needed by orchestrators at all times.
PROBE_PATHS = frozenset({"/health", "/ready"})


class _Channel(HTTPChannel):
    """Remembers when the request being received began, for the request deadline."""

    partial_since: float | None = None

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


def create_listener(app, *, host: str, port: int, threads: int, max_connections: int, request_timeout_s: float,
                    idle_timeout_s: float, max_request_body_size: int):
    """A waitress server for `app` with the protections above."""
    fds = raise_fd_limit(max_connections + threads + 256)
    connection_limit = max_connections
    if fds < max_connections + 64:
        connection_limit = max(16, fds - 64)
        log.warning("the file-descriptor limit (%d) allows %d connections, not %d", fds, connection_limit, max_connections)
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
        max_request_body_size=max_request_body_size,
        asyncore_use_poll=True,  # no FD_SETSIZE ceiling
        ident="rfc",
    )
    server.channel_class = _Channel
    dispatch = server.add_task
    maintain = server.maintenance

    probes = ThreadedTaskDispatcher()
    probes.set_thread_count(1)

    def add_task(channel) -> None:
        request = channel.requests[0]
        if not request.error and request.command in ("GET", "HEAD") and request.path in PROBE_PATHS:
            probes.add_task(channel)  # its own thread: a probe never waits for a generation
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

    server.add_task = add_task
    server.maintenance = maintenance
    server.close = close_all
    return server
