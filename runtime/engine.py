"""The engine: one loop of continuous batching over the paged KV cache (like nano-vllm's
`LLMEngine.step`). Requests join between steps, leave the moment they finish or are
cancelled, and their KV blocks return to the pool at once.

HTTP threads only `submit`, `cancel` and read state; the model runs in the thread that calls
`step` (the engine thread of `rfc serve`, or the caller itself in `rfc run`).
"""

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfc.runtime.batch import SeqChunk, StepBatch, build_batch
from rfc.runtime.executor import DeviceToken, SampledRows
from rfc.runtime.detokenize import IncrementalDetokenizer
from rfc.runtime.loader import LoadedModel
from rfc.runtime.request_ids import RandomIds
from rfc.runtime.requests import (  # re-exported: the servers import them from here
    CANCELLED, EOS, FAILED, LENGTH, STOP, GenerationRequest, Observer, RequestError, RequestState, TokenEvent,
)
from rfc.runtime.sampler import Sampler, SamplingError
from rfc.runtime.scheduler import QueueFull, ScheduledChunk, Scheduler, SchedulerConfig, Sequence
from rfc.runtime.stopping import StopChecker

__all__ = ["Engine", "GenerationRequest", "RequestState", "TokenEvent", "QueueFull", "RequestError", "Observer",
           "LENGTH", "STOP", "EOS", "CANCELLED", "FAILED"]

log = logging.getLogger("rfc.engine")

# Jobs (embedding passes) waiting for the engine thread at most; one job runs per step.
MAX_JOBS = 32

@dataclass(frozen=True)
class _Work:
    """One step's scheduled chunks, their request states and the device batch."""

    chunks: list[ScheduledChunk]
    states: list[RequestState]
    batch: StepBatch


class Engine:
    def __init__(self, model: LoadedModel, config: SchedulerConfig = SchedulerConfig(), observer: Observer | None = None, keep_finished: int = 1024,
                 request_ids: Iterator[int] | None = None):
        if model.blocks.num_blocks * model.blocks.block_size < model.context_length:
            raise ValueError(
                f"the KV cache ({model.blocks.num_blocks} pages of {model.blocks.block_size} tokens) "
                f"must hold at least one full context of {model.context_length} tokens"
            )
        self.model = model
        self.scheduler = Scheduler(config, model.blocks)
        self.observer = observer or Observer()
        info = model.tokenizer_info
        self.eog_ids = frozenset(info.get("eog_ids") or ([info["eos_id"]] if info.get("eos_id") is not None else []))
        # A server of several models shares one id sequence, so /status/{id} names one request.
        self._ids = request_ids or RandomIds()  # unguessable: an id is the key to /status and /cancel
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._states: OrderedDict[int, RequestState] = OrderedDict()
        self._keep_finished = keep_finished
        self._thread: threading.Thread | None = None
        self._running = False
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self.steps = 0

    # -- requests (any thread) -------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestState:
        ctx = self.model.context_length
        n = len(request.prompt_ids)
        if n == 0:
            raise RequestError("prompt", "the prompt is empty (and the model adds no BOS token)")
        if request.max_tokens < 1:
            raise RequestError("max_tokens", "max_tokens must be at least 1")
        if n + request.max_tokens > ctx:
            raise RequestError(
                "max_tokens",
                f"prompt ({n} tokens) + max_tokens ({request.max_tokens}) exceeds the context length ({ctx})",
            )
        request.params.validate(self.model.vocab_size)
        request_id = next(self._ids)
        seq = Sequence(seq_id=request_id, prompt_ids=list(request.prompt_ids), max_tokens=request.max_tokens)
        state = RequestState(request_id=request_id, request=request, seq=seq)
        state.sampler = Sampler(request.params, request.prompt_ids, self.model.vocab_size,
                                getattr(self.model.executor, "host_sampling", None))
        state.detok = IncrementalDetokenizer(self.model.tokenizer, request.prompt_ids, keep_leading_space=True)
        state.stopper = StopChecker(list(request.stop))
        state.matcher = request.constraint.matcher() if request.constraint is not None else None
        with self._lock:
            self.scheduler.add(state.seq)  # QueueFull propagates: nothing was registered
            self._remember(state)
            self._wake.notify()
        self.observer.on_start(state)
        return state

    def cancel(self, request_id: int) -> RequestState | None:
        with self._lock:
            state = self._states.get(request_id)
            if state is not None and not state.finished:
                self._finish(state, CANCELLED, token=None)
        return state

    def abort_all(self, reason: str) -> int:
        """Ends every live request as cancelled, `reason` as its error (the server's drain);
        each stream gets its final event. Returns how many there were."""
        with self._lock:
            live = [s for s in self._states.values() if not s.finished]
            for state in live:
                state.error = reason
                self._finish(state, CANCELLED, token=None)
        return len(live)

    def is_idle(self) -> bool:
        """No request running or waiting, no job queued."""
        with self._lock:
            return not self.scheduler.has_work() and not self._jobs

    def get(self, request_id: int) -> RequestState | None:
        with self._lock:
            return self._states.get(request_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": self.scheduler.num_running(),
                "waiting": self.scheduler.num_waiting(),
                "pages_used": self.model.blocks.num_used(),
                "pages_total": self.model.blocks.num_blocks,
                "pages_free": self.model.blocks.num_free(),
                "sequences": self.model.blocks.num_sequences(),
                "pages_cached": self.model.blocks.num_cached_idle(),
                **self._prefix_counts(),
            }

    def _prefix_counts(self) -> dict[str, int]:
        cache = self.model.blocks.cache
        if cache is None:
            return {}
        return {"prefix_hit_tokens": cache.hit_tokens, "prefix_miss_tokens": cache.miss_tokens,
                "prefix_evictions": cache.evictions}

    def run_on_engine_thread(self, fn: Callable[[], Any]) -> Future:
        """Runs `fn` on the engine thread between two steps (devices are not thread-safe) and
        returns its Future. For work beside generation, such as an embedding's forward pass.
        QueueFull when MAX_JOBS are already waiting."""
        future: Future = Future()
        with self._lock:
            if not self._running or not self.is_running:
                raise RuntimeError("the engine is not running")
            if len(self._jobs) >= MAX_JOBS:
                raise QueueFull(f"{MAX_JOBS} jobs are waiting for the engine")
            self._jobs.append((fn, future))
            self._wake.notify()
        return future

    @contextmanager
    def reserved_kv(self, num_tokens: int) -> Iterator[int]:
        """KV pages for `num_tokens` under a fresh sequence id, for a job's own forward passes;
        freed on exit. KVCacheFull when the pool cannot hold them now."""
        with self._lock:
            seq_id = next(self._ids)
            self.model.blocks.allocate(seq_id, num_tokens)
        try:
            yield seq_id
        finally:
            with self._lock:
                self.model.blocks.free(seq_id)

    def _run_job(self) -> None:
        """Runs the oldest job, if any: one per step, so that jobs and generation take turns."""
        with self._lock:
            if not self._jobs:
                return
            fn, future = self._jobs.popleft()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - the caller gets the job's own exception
                future.set_exception(e)

    # -- the loop (engine thread) ----------------------------------------------------------
    def step(self) -> bool:
        """One batch: schedule -> run -> postprocess. False when there was nothing to do."""
        with self._lock:
            work = self._schedule()
        if work is None:
            return False
        started = time.perf_counter()
        logits = self._run(work)
        elapsed = time.perf_counter() - started
        if logits is None:
            return True
        with self._lock:
            self._postprocess(work, logits)
            self.steps += 1
        decode = sum(1 for c in work.chunks if c.start >= len(c.seq.prompt_ids))
        self.observer.on_step(work.batch.num_tokens - decode, decode, elapsed)
        return True

    def _schedule(self) -> _Work | None:
        """This step's chunks and device batch (lock held)."""
        chunks = self.scheduler.schedule()
        if not chunks:
            return None
        now = time.time()
        states = [self._states[c.seq.seq_id] for c in chunks]  # a live request is never dropped
        for state in states:
            if state.admitted_at is None:
                state.admitted_at = now
        batch = build_batch(
            [SeqChunk(c.seq.seq_id, c.start, tuple(c.tokens), c.needs_logits) for c in chunks],
            self.model.blocks,
        )
        return _Work(chunks, states, batch)

    def _run(self, work: _Work) -> np.ndarray | None:
        """The forward pass (lock released: HTTP threads may submit and cancel meanwhile).
        A failing step fails its requests, never the engine: None then."""
        try:
            executor = self.model.executor
            if getattr(executor, "samples_on_device", False):
                return executor.forward_sampled(work.batch, self._device_rows(work))
            return executor.forward(work.batch)
        except Exception as e:
            with self._lock:
                for state in work.states:
                    if not state.finished:
                        state.error = f"{type(e).__name__}: {e}"
                        self._finish(state, FAILED, token=None)
            return None

    @staticmethod
    def _device_rows(work: _Work) -> list:
        """Per logit row, what a samples_on_device device may sample: (sampler, wants the
        chosen token's logprob), or None for a row the host samples from its logits (a
        grammar mask, logit_bias, or top logprobs)."""
        rows = []
        for chunk, state in zip(work.chunks, work.states):
            if chunk.needs_logits:
                host = state.matcher is not None or state.sampler.needs_host or bool(state.request.logprobs)
                rows.append(None if host else (state.sampler, state.request.logprobs is not None))
        return rows

    def _postprocess(self, work: _Work, logits: "np.ndarray | SampledRows") -> None:
        """Commit the step's KV, then sample one token for every chunk that ends its known
        tokens (lock held). A request cancelled while the step ran is skipped."""
        self.scheduler.commit(work.chunks)
        row = 0
        for chunk, state in zip(work.chunks, work.states):
            if not chunk.needs_logits:
                continue
            if not state.finished:
                try:
                    self._advance(state, logits.row(row) if isinstance(logits, SampledRows) else logits[row])
                except Exception as e:  # e.g. non-finite logits: this request fails, alone
                    state.error = f"{type(e).__name__}: {e}"
                    if not state.finished:
                        self._finish(state, FAILED, token=None)
            row += 1

    def _advance(self, state: RequestState, logits) -> None:
        token, logprob, top = self._pick(state, logits)
        now = time.time()
        if state.first_token_at is None:
            state.first_token_at = state.prefill_done_at = now
            self.observer.on_first_token(state)
        if token in self.eog_ids and not state.request.ignore_eos:
            self._finish(state, EOS, token=token, logprob=logprob, top=top)
            return
        state.seq.output_ids.append(token)
        text, stopped = state.stopper.push(state.detok.push(token))
        if stopped:
            self._finish(state, STOP, token=token, text=text, logprob=logprob, top=top)
        elif len(state.tokens) >= state.request.max_tokens or state.seq.num_tokens() >= self.model.context_length:
            self._finish(state, LENGTH, token=token, text=text, logprob=logprob, top=top)
        else:
            state.text += text
            state.events.put(TokenEvent(state.request_id, token, text, False, None, logprob, top))

    @staticmethod
    def _pick(state: RequestState, logits) -> tuple[int, float | None, tuple]:
        """The row's token, its logprob and top logprobs: drawn on the device already (a
        DeviceToken), or sampled here from the row's logits."""
        if isinstance(logits, DeviceToken):
            if logits.token < 0:
                raise SamplingError("logits", "the largest logit is not finite: no token can be drawn")
            state.sampler.record(logits.token)
            return logits.token, (logits.logprob if state.request.logprobs is not None else None), ()
        if state.matcher is not None:  # constrained rows only: the grammar's mask, then sampling
            logits = state.matcher.mask(logits)
        token = state.sampler.sample(logits, state.request.logprobs)
        if state.matcher is not None:
            state.matcher.accept(token)
        logprob, top = None, ()
        if state.request.logprobs is not None:
            logprob, top_list = state.sampler.logprobs(logits, token, state.request.logprobs)
            top = tuple(top_list)
        return token, logprob, top

    def _finish(self, state: RequestState, reason: str, token: int | None, text: str = "", logprob=None, top=()) -> None:
        """Ends a request (lock held): frees its KV pages and sends its last event."""
        if reason not in (STOP, CANCELLED, FAILED):
            text += state.stopper.push(state.detok.flush())[0] + state.stopper.flush()
        state.text += text
        state.finish_reason = reason
        state.finished_at = time.time()
        state.matcher = None  # a grammar's lexer states can reach megabytes: not kept with the finished state
        self.scheduler.finish(state.seq)  # `finished` from here on
        # metrics and traces first: a client that has its last event may ask /traces or
        # /metrics at once, and must find this request there
        try:
            self.observer.on_finish(state)
        finally:
            state.events.put(TokenEvent(state.request_id, token, text, True, reason, logprob, top))

    def _remember(self, state: RequestState) -> None:
        self._states[state.request_id] = state
        while len(self._states) > self._keep_finished:
            oldest_id, oldest = next(iter(self._states.items()))
            if not oldest.finished:
                break
            del self._states[oldest_id]

    # -- background thread -----------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="rfc-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._running and not self.scheduler.has_work() and not self._jobs:
                    self._wake.wait()
                if not self._running:
                    break
            self._run_job()
            try:
                self.step()
            except Exception as e:  # a bug outside the forward pass: fail what is in flight
                log.exception("engine step failed; failing the requests in flight")
                self._fail_all(f"{type(e).__name__}: {e}")

        with self._lock:
            jobs, self._jobs = list(self._jobs), deque()
        for _, future in jobs:
            future.cancel()

    def _fail_all(self, error: str) -> None:
        """Ends every live request as failed, so a step that keeps raising cannot spin."""
        with self._lock:
            for state in list(self._states.values()):
                if not state.finished:
                    state.error = error
                    self._finish(state, FAILED, token=None)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
