"""The engine: one loop of continuous batching over the paged KV cache (like nano-vllm's
`LLMEngine.step`). Requests join between steps, leave the moment they finish or are
cancelled, and their KV blocks return to the pool at once.

A step is schedule -> run -> postprocess: the scheduler picks the chunks, the device runs
them, the engine thread samples a token per logit row (the grammar matcher advances here: the
next row's mask depends on it), and the scheduler appends the tokens and ends the sequences
they end (end of generation, max_tokens). Detokenization, stop strings and events run in the
output stage (runtime/engine/output.py) while the next step runs. The engine's lock covers the
scheduler's state alone.

With speculative decoding (runtime/engine/speculative.py) a decoding sequence's chunk also carries draft
tokens: after scheduling, the speculator proposes them (an n-gram lookup, or a draft model run
with the lock released), the scheduler extends the chunks, and the engine thread samples the
chunk's rows in order while each draws its draft (`_verify`); the scheduler keeps the KV of
what was accepted.

On a device that queues steps ahead (a GPU), a decode step's successor is queued before the
step is read, its tokens fed on the device (runtime/engine/ahead.py): the card runs it while
this thread reads and delivers the step before.

HTTP threads only `submit`, `cancel` and read state; the model runs in the thread that calls
`step` (the engine thread of `rfc serve`, or the caller itself in `rfc run`, where each step
also delivers its output before it returns).

Work beside generation (an embedding's forward passes, a prompt's logprobs) is a job
(`start_job`): the engine thread runs one piece of the oldest job after each step, so a long
input never holds up the decodes for more than a piece (runtime/engine/jobs.py).
"""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfc.runtime.engine.ahead import next_chunks
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.core.step import StepBatch
from rfc.runtime.text.detokenize import IncrementalDetokenizer
from rfc.runtime.core.device import DeviceToken, PendingRows, SampledRows, StepRefused
from rfc.runtime.engine.jobs import MAX_JOBS, EngineJob, JobExpired, JobQueue
from rfc.runtime.engine.kv_cache import KvCopy, kv_copy_slots
from rfc.runtime.engine.assemble import LoadedModel
from rfc.runtime.engine.output import OutputStage, SampledToken
from rfc.runtime.engine.request_ids import RandomIds
from rfc.runtime.engine.requests import (
    ContextOverflow,
    FinishReason,
    GenerationRequest,
    Observer,
    RequestError,
    RequestState,
    TokenEvent,
)
from rfc.runtime.sampling.sampler import Sampler, SamplingError
from rfc.runtime.engine.scheduler import QueueFull, Scheduler, SchedulerConfig, Sequence, SequenceStatus
from rfc.runtime.engine.speculative import Speculator, SpecError, SpecType, accept
from rfc.runtime.engine.speculative_draft import DraftModel
from rfc.runtime.text.stopping import StopChecker, stop_problem

# The servers import the finish reasons under these names (FinishReason.LENGTH is "length").
LENGTH, STOP, EOS, CANCELLED, FAILED = (
    FinishReason.LENGTH,
    FinishReason.STOP,
    FinishReason.EOS,
    FinishReason.CANCELLED,
    FinishReason.FAILED,
)

__all__ = [
    "Engine",
    "GenerationRequest",
    "RequestState",
    "TokenEvent",
    "QueueFull",
    "RequestError",
    "Observer",
    "FinishReason",
    "LENGTH",
    "STOP",
    "EOS",
    "CANCELLED",
    "FAILED",
]

log = logging.getLogger("rfc.engine")


@dataclass(frozen=True)
class _Work:
    """One step's scheduled chunks, their request states and the device batch."""

    chunks: list[ScheduledChunk]
    states: list[RequestState]
    batch: StepBatch
    copies: tuple[KvCopy, ...] = ()  # KV rows the device copies before the step (reuse to the token)
    state_copies: tuple[tuple[int, int], ...] = ()  # state slots (source, destination): checkpoints, restores


@dataclass(frozen=True)
class _Pick:
    """The token sampled for one request's logit row, or why none could be."""

    state: RequestState
    token: int = -1
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()
    error: Exception | None = None


def _failure(state: RequestState, error: Exception) -> SampledToken:
    """The end of a request whose row could not be sampled; a RequestError (its grammar asked
    for what the vocabulary cannot write) names the field the client sent it in."""
    if isinstance(error, RequestError):
        return SampledToken(state, None, 0, FAILED, error=str(error), error_field=error.field)
    return SampledToken(state, None, 0, FAILED, error=f"{type(error).__name__}: {error}")


ENCODER_REFUSAL = (
    "this model is an embedding model (an encoder): it serves /v1/embeddings and /api/embed, not text generation"
)


class Engine:
    def __init__(
        self,
        model: LoadedModel,
        config: SchedulerConfig = SchedulerConfig(),
        observer: Observer | None = None,
        keep_finished: int = 1024,
        request_ids: Iterator[int] | None = None,
    ):
        pool = model.kv_pool
        if pool.num_blocks * pool.block_size < model.context_length:
            raise ValueError(
                f"the KV cache ({pool.num_blocks} pages of {pool.block_size} tokens) "
                f"must hold at least one full context of {model.context_length} tokens"
            )
        stateful = bool(model.bundle.plan.state.tensors)
        if stateful and (config.spec.type is not SpecType.NONE or model.draft is not None):
            # a verify step would have to roll the recurrent state back past rejected drafts
            raise ValueError(
                "speculative decoding is not supported for models with recurrent state (hybrid "
                "architectures such as lfm2): serve without --spec-type / --model-draft"
            )
        self.model = model
        self.blocks = pool.manager()  # which request holds which of the device's KV blocks and state slots
        self.scheduler = Scheduler(config, self.blocks)
        # reuse to the token: a prompt takes the rows of a cached block it agrees with, copied
        # into its own block by the device before the step (prefix_cache.py)
        self.blocks.copy_partial = self.blocks.cache is not None and model.executor.copies_kv
        # a plan with state then reuses no prefix
        if self.blocks.checkpoints is not None and not model.executor.copies_state:
            self.blocks.checkpoints = None
        self.observer = observer or Observer()
        info = model.tokenizer_info
        self.eog_ids = frozenset(info.get("eog_ids") or ([info["eos_id"]] if info.get("eos_id") is not None else []))
        # A server of several models shares one id sequence, so /status/{id} names one request.
        self._ids = request_ids or RandomIds()  # unguessable: an id is the key to /status and /cancel
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._states: OrderedDict[int, RequestState] = OrderedDict()
        self._keep_finished = keep_finished
        self._output = OutputStage(self.observer, self._finish_sequence)
        self._thread: threading.Thread | None = None
        self._running = False
        self._jobs = JobQueue()  # work beside generation, in pieces between steps (runtime/engine/jobs.py)
        self._spec = Speculator(config.spec, DraftModel(model.draft) if model.draft is not None else None)
        self.steps = 0
        # decode queued ahead (runtime/engine/ahead.py) where the device can. A plan with recurrent
        # state too: the queued row of a sequence that ends advances only that sequence's slot,
        # which nothing reads again (its next holder starts at position 0, where the state
        # kernels start from zeros, in the stream's order), and no state is checkpointed after
        # a step that is followed (prefix caching's points end prefill chunks before the last)
        self._running_ahead = config.decode_ahead and bool(getattr(model.executor, "runs_ahead", False))
        self._queued: tuple[_Work, PendingRows, float] | None = None  # launched, not read: the next step

    # -- requests (any thread) -------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestState:
        if not self.model.generates:
            raise RequestError("model", ENCODER_REFUSAL)
        ctx = self.model.context_length
        n = len(request.prompt_ids)
        if n == 0:
            raise RequestError("prompt", "the prompt is empty (and the model adds no BOS token)")
        if request.max_tokens < 1:
            raise RequestError("max_tokens", "max_tokens must be at least 1")
        if n + request.max_tokens > ctx:  # so max_tokens always ends a sequence before the context does
            raise ContextOverflow(
                "max_tokens",
                f"prompt ({n} tokens) + max_tokens ({request.max_tokens}) exceeds the context length ({ctx})",
                ctx,
                n,
                request.max_tokens,
            )
        request.params.validate(self.model.vocab_size)
        if any(not isinstance(t, int) or not 0 <= t < self.model.vocab_size for t in request.stop_ids):
            raise RequestError("stop_token_ids", f"token ids must be integers in [0, {self.model.vocab_size})")
        if request.params.min_tokens > request.max_tokens:
            raise RequestError(
                "min_tokens", f"min_tokens {request.params.min_tokens} exceeds max_tokens {request.max_tokens}"
            )
        if (problem := stop_problem(request.stop)) is not None:
            raise RequestError("stop", problem)
        if (
            request.speculative is not None
            and request.speculative.type not in (None, SpecType.NONE)
            and self.blocks.num_state_slots
        ):
            raise RequestError(
                "speculative.type", "speculative decoding is not supported for models with recurrent state"
            )
        try:
            spec = self._spec.start(request.speculative)
        except SpecError as e:
            raise RequestError(e.field, str(e)) from None
        request_id = next(self._ids)
        seq = Sequence(
            seq_id=request_id,
            prompt_ids=list(request.prompt_ids),
            max_tokens=request.max_tokens,
            end_ids=(frozenset() if request.ignore_eos else self.eog_ids) | frozenset(request.stop_ids),
        )
        state = RequestState(request_id=request_id, request=request, seq=seq)
        state.sampler = Sampler(
            request.params, request.prompt_ids, self.model.vocab_size, self.model.executor.host_sampling, seq.end_ids
        )
        state.detok = IncrementalDetokenizer(
            self.model.tokenizer, request.prompt_ids, request.skip_special_tokens, keep_leading_space=True
        )
        state.stopper = StopChecker(list(request.stop), request.include_stop)
        state.matcher = request.constraint.matcher() if request.constraint is not None else None
        state.spec = spec
        with self._lock:
            self.scheduler.add(state.seq)  # QueueFull propagates: nothing was registered
            self._remember(state)
            self._wake.notify()
        self.observer.on_start(state)
        return state

    def cancel(self, request_id: int) -> RequestState | None:
        """Ends a request as cancelled (its KV freed now) unless it has ended; returns its
        state, final when this returns."""
        with self._lock:
            state = self._states.get(request_id)
            live = state is not None and self._finish_sequence_locked(state)
        if live:
            self._output.end(state, CANCELLED)
        elif state is not None:
            self._output.flush()  # an end the scheduler decided may still be on its way out
        return state

    def abort_all(self, reason: str) -> int:
        """Ends every live request as cancelled, `reason` as its error (the server's drain);
        each stream gets its final event; every job stops at its next piece. Returns how many
        requests and jobs there were."""
        with self._lock:
            jobs = self._jobs.all()
        for job in jobs:
            job.cancel()
        return len(self._end_all(CANCELLED, reason)) + len(jobs)

    def is_idle(self) -> bool:
        """No request running or waiting, no job queued, no output undelivered."""
        with self._lock:
            return not self.scheduler.has_work() and not self._jobs and self._output.is_idle()

    def get(self, request_id: int) -> RequestState | None:
        with self._lock:
            return self._states.get(request_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": self.scheduler.num_running(),
                "waiting": self.scheduler.num_waiting(),
                "jobs": len(self._jobs),  # embeddings and prompt logprobs, the running one included
                "pages_used": self.blocks.num_used(),
                "pages_total": self.blocks.num_blocks,
                "pages_free": self.blocks.num_free(),
                "sequences": self.blocks.num_sequences(),
                "pages_cached": self.blocks.num_cached_idle(),
                # recurrent-state slots (hybrid models; 0 of 0 for the others)
                "state_slots_used": self.blocks.num_state_slots - self.blocks.num_free_states(),
                "state_slots_total": self.blocks.num_state_slots,
                **self._prefix_counts(),
                **self._spec.counts(),
            }

    def _prefix_counts(self) -> dict[str, int]:
        cache = self.blocks.cache
        if cache is None:
            return {}
        return {
            "prefix_hit_tokens": cache.hit_tokens,
            "prefix_miss_tokens": cache.miss_tokens,
            "prefix_evictions": cache.evictions,
        }

    def run_on_engine_thread(self, fn: Callable[[], Any]) -> Future:
        """Runs `fn` on the engine thread between two steps (devices are not thread-safe) and
        returns its Future: `start_job` without a deadline."""
        return self.start_job(fn).future

    def start_job(self, fn: Callable[[], Any], deadline: float | None = None) -> EngineJob:
        """Queues `fn` for the engine thread, for work beside generation such as an embedding's
        forward passes; a generator it returns runs one piece per step (runtime/engine/jobs.py).
        `deadline` (time.monotonic()): past it the job stops and fails with JobExpired.
        QueueFull when MAX_JOBS are already waiting; RuntimeError when the engine is not running."""
        job = EngineJob(fn, deadline)
        with self._lock:
            if not self._running or not self.is_running:
                raise RuntimeError("the engine is not running")
            if len(self._jobs) >= MAX_JOBS:
                raise QueueFull(f"{MAX_JOBS} jobs are waiting for the engine")
            self._jobs.add(job)
            self._wake.notify()
        return job

    @contextmanager
    def reserved_kv(self, num_tokens: int) -> Iterator[int]:
        """KV pages for `num_tokens` under a fresh sequence id, for a job's own forward passes;
        freed on exit. KVCacheFull when the pool cannot hold them now."""
        with self._lock:
            seq_id = next(self._ids)
            self.blocks.allocate(seq_id, num_tokens)
        try:
            yield seq_id
        finally:
            with self._lock:
                self.blocks.free(seq_id)

    def _run_job(self) -> None:
        """Runs the next piece of the oldest job, if any: jobs and generation take turns."""
        with self._lock:
            job = self._jobs.head()
        if job is not None and job.advance():
            with self._lock:
                self._jobs.pop_head(job)

    # -- the loop (engine thread) ----------------------------------------------------------
    def step(self) -> bool:
        """One batch: schedule -> run -> postprocess. False when there was nothing to do.
        Where the device queues steps ahead, a decode step's successor is queued before this
        step is read (runtime/engine/ahead.py) and is the next call's step."""
        self._output.wait_for_room()
        queued, self._queued = self._queued, None
        if queued is not None:
            work, run, started = queued
        else:
            work = self._schedule()
            if work is None:
                return False
            started = time.perf_counter()
            run = self._launch(work)
        if run is not None and not isinstance(run, (np.ndarray, SampledRows)):
            self._queued = self._queue_ahead(work)  # behind this step, which still runs
            out = self._read(work, run)
        else:
            out = run
        elapsed = time.perf_counter() - started
        picks = []
        if out is not None:
            picks = self._sample(work, out)
            self._spec.observe_step(work.chunks, time.perf_counter() - started)
            with self._lock:
                self._output.put(self._postprocess(work, picks))
                self.steps += 1
        elif self._queued is not None:  # this step failed: the one queued behind it took garbage
            ahead, pending, _ = self._queued
            self._queued = None
            self._read(ahead, pending)  # waited for, and dropped
            self._end_all(FAILED, "the step before this request's queued step failed", ahead.states)
        if not self._output.is_running:  # no output thread: this step's output is delivered now
            self._output.flush()
        if out is not None:
            decoding = {
                s.request_id: len(c.tokens) for c, s in zip(work.chunks, work.states) if c.start >= s.prompt_tokens
            }
            # drafts: those accepted
            sampled = sum(1 for p in picks if p.error is None and p.state.request_id in decoding)
            self.observer.on_step(work.batch.num_tokens - sum(decoding.values()), sampled, elapsed)
        return True

    def _queue_ahead(self, work: _Work) -> "tuple[_Work, PendingRows, float] | None":
        """Queues the step that follows `work` (launched, not read) where one may be
        (runtime/engine/ahead.py); that step, its pending result and when it was queued."""
        with self._lock:
            if self._jobs or not self._running_ahead:
                return None
            nxt = next_chunks(work.chunks, work.states, self.scheduler, self.blocks)
            if nxt is None:
                return None
            ahead = _Work(nxt.chunks, nxt.states, build_batch(nxt.chunks, self.blocks))
        try:
            rows = [(state.sampler, state.request.logprobs is not None) for state in ahead.states]
            return ahead, self.model.executor.launch_sampled(ahead.batch, rows, nxt.feed), time.perf_counter()
        except StepRefused:  # not this step (a penalty list too long to stage): it runs after the read
            return None  # (the KV slots next_chunks took are the ones the scheduler gives it then)
        except Exception as e:  # the device cannot: nothing was queued, steps run one at a time from now
            log.warning("a decode step could not be queued ahead (%s: %s); stepping one at a time", type(e).__name__, e)
            self._running_ahead = False
            return None

    def _schedule(self) -> _Work | None:
        """This step's chunks, with the drafts of the sequences that speculate, and its device
        batch."""
        with self._lock:
            chunks = self.scheduler.schedule()
            if not chunks:
                return None
            now = time.time()
            states = [self._states[c.seq_id] for c in chunks]  # a live request is never dropped
            for state in states:
                if state.admitted_at is None:
                    state.admitted_at = now
            copies = tuple(self.blocks.take_copies())
            state_copies = tuple(self.blocks.take_state_copies())
            wants = self._spec.wants(chunks, states)
            if not wants:
                return _Work(chunks, states, build_batch(chunks, self.blocks), copies, state_copies)
        tokens, rows = sum(len(c.tokens) for c in chunks), sum(c.num_rows for c in chunks)
        # lock released: a draft model runs
        drafts = self._spec.propose(wants, tokens, rows, {c.seq_id for c in chunks})
        with self._lock:
            # a request cancelled meanwhile has lost its KV blocks: its chunk goes
            live = [(c, s) for c, s in zip(chunks, states) if s.seq.status is not SequenceStatus.FINISHED]
            if not live:
                return None
            chunks = self.scheduler.add_drafts([c for c, _ in live], drafts) if drafts else [c for c, _ in live]
            return _Work(chunks, [s for _, s in live], build_batch(chunks, self.blocks), copies, state_copies)

    def _launch(self, work: _Work) -> "np.ndarray | SampledRows | PendingRows | None":
        """The forward pass (lock released: HTTP threads may submit and cancel meanwhile):
        its result, or, where the device queues steps, the step queued (`_read` waits for it).
        A failing step fails its requests, never the engine: None then."""
        try:
            executor = self.model.executor
            if work.copies:
                executor.copy_kv(*kv_copy_slots(work.copies, self.blocks.block_size))
            if work.state_copies:  # prefix caching with state: checkpoints taken, then restored (in order)
                executor.copy_state([src for src, _ in work.state_copies], [dst for _, dst in work.state_copies])
            if self._running_ahead:
                return executor.launch_sampled(work.batch, self._device_rows(work))
            if getattr(executor, "samples_on_device", False):
                return executor.forward_sampled(work.batch, self._device_rows(work))
            return executor.forward(work.batch)
        except Exception as e:
            self._end_all(FAILED, f"{type(e).__name__}: {e}", work.states)
            return None

    def _read(self, work: _Work, pending: "PendingRows") -> SampledRows | None:
        """A queued step's result, once it has run; None (its requests failed) if it failed."""
        try:
            return pending.result()
        except Exception as e:
            self._end_all(FAILED, f"{type(e).__name__}: {e}", work.states)
            return None

    def _device_rows(self, work: _Work) -> list:
        """Per logit row, what a samples_on_device device may sample: (sampler, wants the
        chosen token's logprob), or None for a row the host samples from its logits (a
        grammar mask, logit_bias, or top logprobs)."""
        rows = []
        for chunk, state in zip(work.chunks, work.states):
            host = state.samples_on_host
            if chunk.num_drafts:
                # a verify row after an accepted draft needs the penalty window and the random
                # stream as they are after that draft; and a greedy row's near-tie check its logits
                sampler = state.sampler
                host = (
                    host
                    or not sampler.params.is_greedy
                    or sampler.penalty_counts() is not None
                    or self._spec.config.tie_margin > 0
                )
            rows.extend([None if host else (state.sampler, state.request.logprobs is not None)] * chunk.num_rows)
        return rows

    def _sample(self, work: _Work, out: "np.ndarray | SampledRows") -> list[_Pick]:
        """A token for every logit row of a request still running (lock released: the
        samplers and matchers are this thread's). A row that cannot be sampled (e.g.
        non-finite logits) fails its request alone."""
        picks: list[_Pick] = []
        first = 0
        for chunk, state in zip(work.chunks, work.states):
            row, first = first, first + chunk.num_rows
            if chunk.num_rows == 0:
                continue
            if state.seq.status is SequenceStatus.FINISHED:
                continue  # ended while the step ran (read unlocked: a late end only wastes this row)

            def logits(i: int, base: int = row):
                return out.row(base + i) if isinstance(out, SampledRows) else out[base + i]

            try:
                picks.extend(self._verify(state, chunk, logits) if chunk.num_drafts else [self._pick(state, logits(0))])
            except Exception as e:
                picks.append(_Pick(state, error=e))
        return picks

    def _verify(self, state: RequestState, chunk: ScheduledChunk, logits: Callable[[int], Any]) -> list[_Pick]:
        """The tokens a chunk with drafts emits: its rows sampled in order while each draws its
        draft (runtime/engine/speculative.py `accept`). A greedy row whose best two logits nearly tie ends
        the walk before it: the next step computes it without drafts."""
        draft = chunk.tokens[len(chunk.tokens) - chunk.num_drafts :]
        margin = self._spec.config.tie_margin if state.sampler.params.is_greedy else 0.0
        picks: list[_Pick] = []
        tie = False

        def sample_row(i: int) -> int | None:
            nonlocal tie
            pick = self._pick(state, logits(i), margin)
            if pick is None:
                tie = True
                return None
            picks.append(pick)
            return pick.token

        emitted = accept(draft, sample_row, state.seq.end_ids)
        accepted = next((i for i, (t, d) in enumerate(zip(emitted, draft)) if t != d), min(len(emitted), len(draft)))
        self._spec.record(state.spec, len(draft), accepted, tie)
        return picks

    @staticmethod
    def _pick(state: RequestState, logits, tie_margin: float = 0.0) -> _Pick | None:
        """The row's token, its logprob and top logprobs: drawn on the device already (a
        DeviceToken), or sampled here from the row's logits. With `tie_margin` (greedy verify
        rows), None when the best two processed logits are that close, nothing recorded."""
        if isinstance(logits, DeviceToken):
            if logits.token < 0:
                raise SamplingError("logits", "the largest logit is not finite: no token can be drawn")
            state.sampler.record(logits.token)
            return _Pick(state, logits.token, logits.logprob if state.request.logprobs is not None else None)
        matcher = state.matcher  # read once: a cancel may drop it meanwhile
        if matcher is not None:  # constrained rows only: the grammar's mask, then sampling
            logits = matcher.mask(logits)
        if tie_margin and state.sampler.near_tie(logits, tie_margin):
            return None
        token = state.sampler.draw(logits, state.request.logprobs)
        if matcher is not None:
            while not matcher.allows(token):  # the mask let through a token the grammar refuses
                logits = matcher.refuse(logits, token)
                token = state.sampler.draw(logits, state.request.logprobs)
            matcher.accept(token)
        state.sampler.record(token)
        if state.request.logprobs is None:
            return _Pick(state, token)
        logprob, top = state.sampler.logprobs(logits, token, state.request.logprobs)
        return _Pick(state, token, logprob, tuple(top))

    def _postprocess(self, work: _Work, picks: list[_Pick]) -> list[SampledToken]:
        """Hands the step to the scheduler, which commits its KV, appends the tokens and ends
        the sequences they end (lock held). Returns the step's records for the output stage;
        a request that ended while the step ran has none."""
        steps: dict[int, tuple[RequestState, list[_Pick]]] = {}  # by request, its picks in order
        for pick in picks:
            steps.setdefault(pick.state.request_id, (pick.state, []))[1].append(pick)
        tokens = {
            state.seq.seq_id: [p.token for p in mine]
            for state, mine in steps.values()
            if state.seq.status is not SequenceStatus.FINISHED and all(p.error is None for p in mine)
        }
        before = {state.seq.seq_id: len(state.seq.output_ids) for state, _ in steps.values()}
        ended = self.scheduler.postprocess(work.chunks, tokens)
        now = time.time()
        outputs = []
        for state, mine in steps.values():
            seq = state.seq
            error = next((p.error for p in mine if p.error is not None), None)
            if error is not None:
                if self._finish_sequence_locked(state):
                    outputs.append(_failure(state, error))
                continue
            if seq.seq_id not in tokens:
                continue  # ended while the step ran
            reason = ended.get(seq.seq_id)
            if reason is FinishReason.EOS:  # the end-of-generation token is its last
                mine = mine[: next(i for i, p in enumerate(mine) if p.token in seq.end_ids) + 1]
            elif reason is FinishReason.LENGTH:
                mine = mine[: seq.max_tokens - before[seq.seq_id]]
            if reason is not None:
                state.matcher = None  # a grammar's lexer states can reach megabytes: not kept with the finished state
            for i, pick in enumerate(mine):
                first = state.first_token_at is None
                if first:
                    state.first_token_at = state.prefill_done_at = now
                end = reason if i == len(mine) - 1 else None
                outputs.append(
                    SampledToken(state, pick.token, before[seq.seq_id] + i, end, pick.logprob, pick.top, first)
                )
        return outputs

    # -- ending requests -------------------------------------------------------------------
    def _finish_sequence_locked(self, state: RequestState) -> bool:
        """Ends the request's sequence, its KV freed now (lock held). False if it had ended."""
        if state.seq.status is SequenceStatus.FINISHED:
            return False
        self.scheduler.finish(state.seq)
        state.matcher = None
        return True

    def _finish_sequence(self, state: RequestState, num_tokens: int | None) -> None:
        """The output stage's end of a request (a stop string; or its own failure): the
        sequence ends and keeps its first `num_tokens` output tokens, dropping those sampled
        after the stop (None: all)."""
        with self._lock:
            self._finish_sequence_locked(state)
            if num_tokens is not None:
                del state.seq.output_ids[num_tokens:]

    def _end_all(
        self, reason: FinishReason, error: str, states: list[RequestState] | None = None
    ) -> list[RequestState]:
        """Ends every live request (or those of `states`) with `reason` and `error`; each
        stream gets its final event. Returns the ones that were live."""
        with self._lock:
            live = [s for s in (self._states.values() if states is None else states) if self._finish_sequence_locked(s)]
        for state in live:
            self._output.end(state, reason, error)
        return live

    def _remember(self, state: RequestState) -> None:
        self._states[state.request_id] = state
        while len(self._states) > self._keep_finished:
            oldest_id, oldest = next(iter(self._states.items()))
            if not oldest.finished:
                break
            del self._states[oldest_id]

    # -- background threads ----------------------------------------------------------------
    def start(self) -> None:
        self._output.start()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="rfc-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._output.stop()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._running and not self.scheduler.has_work() and not self._jobs:
                    self._wake.wait()
                if not self._running:
                    break
            if self._queued is None:  # a job's own forward passes run with no step queued
                self._run_job()
            try:
                self.step()
            except Exception as e:  # a bug outside the forward pass: fail what is in flight
                log.exception("engine step failed; failing the requests in flight")
                self._end_all(FAILED, f"{type(e).__name__}: {e}")  # so a step that keeps raising cannot spin

        with self._lock:
            jobs = self._jobs.take_all()
        for job in jobs:
            job.stop(JobExpired("the engine stopped"))

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._output.is_running
