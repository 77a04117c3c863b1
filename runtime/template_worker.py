"""Chat templates render in worker processes with hard limits (issue 8, finding 8).

A chat template is untrusted code. The sandbox in runtime/chat.py bounds what it can reach
and counts its steps, but one C-level operation (`x in huge_list`, `['x' * 999999] * 999999`)
runs without returning to Python: it holds the GIL, blocks every thread of the server and
can allocate gigabytes. So the server never compiles or renders a template itself: a few
worker processes do, each under an address-space limit, and the HTTP thread waits for the
answer with a deadline. A worker that overruns is killed and replaced; the request gets an
error naming `messages`; every other request and the probes keep being answered.

Workers are started with the `spawn` method (a fresh interpreter: forking a threaded server
is unsafe) once, when the server starts; compiled templates are cached in each worker by the
hash of their source, and a request carries the source, so a replacement recompiles on demand.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from rfc.runtime.chat import ChatTemplateError


class TemplatesBusy(ChatTemplateError):
    """Every template worker stayed busy past the wait bound: the server is overloaded."""


@dataclass(frozen=True)
class WorkerLimits:
    workers: int = 2
    memory_bytes: int = 1 << 30  # address space of one worker (RLIMIT_AS)
    render_timeout_s: float = 5.0  # wall time of one compile or render, the hop included
    wait_s: float = 10.0  # longest wait for a free worker before answering "busy"


def _worker_main(conn: Connection, memory_bytes: int, timeout_s: float) -> None:
    """The loop of one worker process: compile and render on request, answer in kind."""
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except (ValueError, OSError):
        pass  # a platform without RLIMIT_AS: the parent's deadline still holds
    from rfc.runtime.chat import ChatTemplate, RenderLimits

    limits = RenderLimits(timeout_s=timeout_s)
    compiled: dict[str, ChatTemplate] = {}
    while True:
        try:
            kind, key, source, bos, eos, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            template = compiled.get(key)
            if template is None:
                template = ChatTemplate(source=source, bos_token=bos, eos_token=eos, limits=limits)
                if len(compiled) >= 16:
                    compiled.clear()
                compiled[key] = template
            result = None if kind == "compile" else template.render(args["messages"], **args["options"])
            conn.send(("ok", result))
        except ChatTemplateError as e:
            conn.send(("error", str(e)))
        except MemoryError:
            compiled.clear()
            conn.send(("error", "the chat template used more memory than a render may"))
        except RecursionError:
            conn.send(("error", "the chat template nests too deeply"))
        except Exception as e:  # noqa: BLE001 - template code fails in every way; it is reported, not raised
            conn.send(("error", f"{type(e).__name__}: {str(e)[:300]}"))


class _Worker:
    def __init__(self, ctx, limits: WorkerLimits):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            # the worker's own budget ends first, so an ordinary overrun is a clean error, not a kill
            target=_worker_main, args=(child, limits.memory_bytes, 0.8 * limits.render_timeout_s),
            name="rfc-template-worker", daemon=True,
        )  # fmt: skip
        self.process.start()
        child.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class TemplatePool:
    """Worker processes that compile and render chat templates; safe to call from any thread."""

    def __init__(self, limits: WorkerLimits = WorkerLimits()):
        self.limits = limits
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._closed = False
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        for _ in range(max(1, limits.workers)):
            self._add()

    def template(self, source: str, bos_token: str, eos_token: str) -> RemoteTemplate:
        """Compile `source` in a worker (ChatTemplateError if it does not compile)."""
        t = RemoteTemplate(self, source, bos_token, eos_token)
        self.call("compile", t, None)
        return t

    def call(self, kind: str, t: RemoteTemplate, args: dict | None) -> Any:
        deadline = time.monotonic() + self.limits.wait_s
        try:
            worker = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TemplatesBusy(f"every chat-template worker stayed busy for {self.limits.wait_s:.0f} s") from None
        try:
            worker.conn.send((kind, t.key, t.source, t.bos_token, t.eos_token, args))
            if not worker.conn.poll(self.limits.render_timeout_s):
                self._replace(worker)
                worker = None
                raise ChatTemplateError(f"rendering took longer than {self.limits.render_timeout_s:g} s and was stopped")
            status, value = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            if worker is not None:
                self._replace(worker)
                worker = None
            raise ChatTemplateError("the chat template crashed its worker (out of memory?)") from None
        finally:
            if worker is not None:
                self._idle.put(worker)
        if status != "ok":
            raise ChatTemplateError(value)
        return value

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = self._all, []
        for w in workers:
            w.kill()

    def _add(self) -> None:
        with self._lock:
            if self._closed:
                return
            w = _Worker(self._ctx, self.limits)
            self._all.append(w)
        self._idle.put(w)

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker that overran and start another, off the request's thread."""
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        worker.kill()
        threading.Thread(target=self._add, name="rfc-template-respawn", daemon=True).start()


class RemoteTemplate:
    """ChatTemplate's interface, rendered by a TemplatePool worker."""

    def __init__(self, pool: TemplatePool, source: str, bos_token: str, eos_token: str):
        self.pool, self.source, self.bos_token, self.eos_token = pool, source, bos_token, eos_token
        self.key = hashlib.sha256("\0".join((source, bos_token, eos_token)).encode("utf-8", "surrogatepass")).hexdigest()

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None, **extra: Any) -> str:
        options = {"add_generation_prompt": add_generation_prompt, "tools": tools, **extra}
        return self.pool.call("render", self, {"messages": messages, "options": options})
