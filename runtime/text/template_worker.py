"""Chat templates render in worker processes with hard limits.

A chat template is untrusted code. The sandbox in runtime/text/chat.py bounds what it can reach
and counts its steps, but one C-level operation (`x in huge_list`, `['x' * 999999] * 999999`)
runs without returning to Python: it holds the GIL, blocks every thread of the server and
can allocate gigabytes. So the server never compiles or renders a template itself: a few
worker processes do, each under an address-space limit, and the HTTP thread waits for the
answer with a deadline. A worker that overruns is killed and replaced; the request gets an
error naming `messages`; every other request and the probes keep being answered.

Workers are separate interpreters (`python -m rfc.runtime.text.template_worker`, not forks of the
threaded server and not multiprocessing's spawn, which re-runs the parent's main script), started
once when the server starts; they speak msgpack over their stdin and stdout, never pickle, so
even a worker whose sandbox fell could send the server nothing but data. Compiled templates are
cached in each worker by the hash of their source, and a request carries the source, so a
replacement recompiles on demand.
"""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from rfc.runtime.text.chat import ChatTemplateError


class TemplatesBusy(ChatTemplateError):
    """Every template worker stayed busy past the wait bound: the server is overloaded."""


@dataclass(frozen=True)
class WorkerLimits:
    workers: int = 2
    memory_bytes: int = 1 << 30  # address space of one worker (RLIMIT_AS)
    render_timeout_s: float = 5.0  # wall time of one compile or render, the hop included
    wait_s: float = 10.0  # longest wait for a free worker before answering "busy"


# A render's output is bounded by the sandbox (runtime/text/chat.py); this bounds a reply's frame.
_MAX_REPLY_BYTES = 64 << 20


def _pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True, unicode_errors="surrogatepass")


def _unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, unicode_errors="surrogatepass")


def _worker_main(memory_bytes: int, timeout_s: float) -> None:
    """The loop of one worker process: compile and render on request, answer in kind."""
    import resource

    # requests arrive on stdin, replies leave on the original stdout; anything printed goes to stderr
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except (ValueError, OSError):
        pass  # a platform without RLIMIT_AS: the parent's deadline still holds
    from rfc.runtime.text.chat import ChatTemplate, RenderLimits

    limits = RenderLimits(timeout_s=timeout_s)
    compiled: dict[str, ChatTemplate] = {}
    while True:
        try:
            kind, key, source, bos, eos, args = _unpack(requests.recv_bytes())
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
            reply = ("ok", result)
        except ChatTemplateError as e:
            reply = ("error", str(e))
        except MemoryError:
            compiled.clear()
            reply = ("error", "the chat template used more memory than a render may")
        except RecursionError:
            reply = ("error", "the chat template nests too deeply")
        except Exception as e:  # noqa: BLE001 - template code fails in every way; it is reported, not raised
            reply = ("error", f"{type(e).__name__}: {str(e)[:300]}")
        try:
            replies.send_bytes(_pack(reply))
        except (OSError, ValueError, TypeError):
            replies.send_bytes(_pack(("error", "the chat template produced something that is not text")))


class _Worker:
    def __init__(self, limits: WorkerLimits):
        # the worker's own budget ends first, so an ordinary overrun is a clean error, not a kill
        budget = 0.8 * limits.render_timeout_s
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rfc.runtime.text.template_worker", str(limits.memory_bytes), repr(budget)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )  # fmt: skip
        self._requests = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self._replies = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()

    def send(self, message) -> None:
        self._requests.send_bytes(_pack(message))

    def poll(self, timeout_s: float) -> bool:
        return self._replies.poll(timeout_s)

    def recv(self):
        return _unpack(self._replies.recv_bytes(_MAX_REPLY_BYTES))

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self._requests.close()
        self._replies.close()


class TemplatePool:
    """Worker processes that compile and render chat templates; safe to call from any thread."""

    def __init__(self, limits: WorkerLimits = WorkerLimits()):
        self.limits = limits
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
            worker.send((kind, t.key, t.source, t.bos_token, t.eos_token, args))
            if not worker.poll(self.limits.render_timeout_s):
                self._replace(worker)
                worker = None
                raise ChatTemplateError(
                    f"rendering took longer than {self.limits.render_timeout_s:g} s and was stopped"
                )
            status, value = worker.recv()
        except (EOFError, OSError, ValueError):
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
            w = _Worker(self.limits)
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
        self.key = hashlib.sha256(
            "\0".join((source, bos_token, eos_token)).encode("utf-8", "surrogatepass")
        ).hexdigest()

    def render(
        self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None, **extra: Any
    ) -> str:
        options = {"add_generation_prompt": add_generation_prompt, "tools": tools, **extra}
        return self.pool.call("render", self, {"messages": messages, "options": options})


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), float(sys.argv[2]))
