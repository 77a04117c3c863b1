"""Continuous-batching scheduler: which tokens of which sequences the model runs each step.

Plain Python with no model in sight (docs/style.md, after nano-vllm's scheduler.py and
vLLM v1). The engine calls `schedule()`, runs the returned chunks through the model, samples a
token for every chunk with `needs_logits`, and hands the tokens to `postprocess()`, which
commits the step's KV, appends them and finishes the sequences they end (an end-of-generation
token, max_tokens). `finish()` ends a sequence for a reason the scheduler cannot see: a stop
string, a cancel, a failure.

Each step spends a budget of `max_batch_tokens`:
1. every running sequence that is decoding gets its one new token first, so a long prompt
   never stalls the decodes;
2. running sequences still in prefill get chunks of what is left, oldest first;
3. waiting sequences are admitted FIFO while the batch has room and their first chunk's KV
   blocks fit; a sequence whose leading full blocks are in the prefix cache takes them and
   starts its prefill after them. Blocks are offered to the cache as each step fills them.
With speculative decoding, `add_drafts` then extends decode chunks with draft tokens (runtime/engine/
speculative.py decides which and how many) and `postprocess` keeps the KV of the accepted ones only.
When the pool runs dry the most recently admitted sequence is preempted: its blocks are freed
and it goes back to the front of the queue to recompute prompt + output later (recompute, not
swap: the KV arrays belong to the device). The oldest running sequence is never preempted for
another one, and `add` refuses a sequence that could not fit the pool alone, so every
sequence eventually completes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence as Seq
from dataclasses import dataclass, field
from enum import Enum, StrEnum, auto

from rfc.artifacts.limits import STEP_SEQS, STEP_TOKENS
from rfc.runtime.engine.batch import ScheduledChunk
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.speculative import SpecConfig
from rfc.runtime.engine.state_cache import checkpoint_points, first_point_inside

__all__ = ["FinishReason", "QueueFull", "ScheduledChunk", "Scheduler", "SchedulerConfig", "Sequence", "SequenceStatus"]


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class FinishReason(StrEnum):
    """Why a request ended: the native API's strings (a `str`, so JSON and comparisons with
    the strings work; the HTTP layer maps them per dialect)."""

    LENGTH = "length"  # max_tokens generated
    STOP = "stop"  # a stop string
    EOS = "eos"  # an end-of-generation token
    CANCELLED = "cancelled"  # the client (or the server's drain) ended it
    FAILED = "failed"  # the step or its sampling failed


@dataclass(eq=False)  # identity semantics: two requests with equal tokens are still two
class Sequence:
    seq_id: int
    prompt_ids: list[int]
    max_tokens: int  # new tokens at most
    end_ids: frozenset[int] = frozenset()  # tokens that end it (end of generation; never appended)
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # leading tokens whose KV is in the cache
    num_cached: int = 0  # of those, taken from the prefix cache at the last admission
    status: SequenceStatus = SequenceStatus.WAITING

    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = STEP_SEQS  # running sequences at most
    max_batch_tokens: int = STEP_TOKENS  # tokens fed per step at most (the chunked-prefill budget)
    max_queue: int = 64  # waiting sequences at most (preempted ones may exceed it)
    # speculative decoding: drafts carried by decode steps (runtime/engine/speculative.py)
    spec: SpecConfig = SpecConfig()
    # decode queued ahead where the device can (runtime/engine/ahead.py); off: one step at a time
    decode_ahead: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be positive, got {self.max_batch} and {self.max_queue}")
        if self.max_batch_tokens < self.max_batch:
            # Otherwise a full batch of decodes could not all run in one step.
            raise ValueError(f"max_batch_tokens ({self.max_batch_tokens}) must be >= max_batch ({self.max_batch})")


class QueueFull(Exception):
    """The waiting queue already holds max_queue sequences."""


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.running: list[Sequence] = []  # admission order, oldest first
        self.waiting: deque[Sequence] = deque()
        self.num_preemptions = 0  # since start, for metrics

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; ValueError if it can never run, QueueFull if the queue is full."""
        self._check_fits(seq)
        if any(other.seq_id == seq.seq_id for other in self._live()):
            raise ValueError(f"sequence id {seq.seq_id} is already scheduled")
        if len(self.waiting) >= self.config.max_queue:
            raise QueueFull(f"{len(self.waiting)} sequences are already waiting")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self) -> list[ScheduledChunk]:
        """This step's work; the KV blocks of every chunk are allocated on return."""
        chunks: list[ScheduledChunk] = []
        preemptions_before = self.num_preemptions
        budget = self._schedule_decodes(chunks, self.config.max_batch_tokens)
        budget = self._schedule_prefills(chunks, budget)
        # Admitting in a step that just preempted would only hand the freed blocks back to
        # the preempted sequence at the front of the queue and throw its KV away again.
        if self.num_preemptions == preemptions_before:
            self._admit(chunks, budget)
        return chunks

    def commit(self, chunks: list[ScheduledChunk]) -> None:
        """Record that the step ran: the chunks' tokens now have KV in the cache."""
        running = {seq.seq_id: seq for seq in self.running}
        for chunk in chunks:
            seq = running.get(chunk.seq_id)
            if seq is None:
                continue  # finished while the step ran; its blocks are already free
            _check_not_stale(seq, chunk)
            seq.num_computed += len(chunk.tokens)
            self._register_full_blocks(seq)

    def add_drafts(self, chunks: list[ScheduledChunk], drafts: Mapping[int, Seq[int]]) -> list[ScheduledChunk]:
        """Speculative decoding: extends this step's decode chunks with draft tokens (sequence
        id -> drafts), each with KV slots and a logit row, within max_batch_tokens, the
        sequence's max_tokens and the free blocks (a draft never preempts anyone)."""
        budget = self.config.max_batch_tokens - sum(len(c.tokens) for c in chunks)
        running = {seq.seq_id: seq for seq in self.running}
        out = []
        for chunk in chunks:
            seq = running.get(chunk.seq_id)
            draft = drafts.get(chunk.seq_id)
            if (
                draft
                and seq is not None
                and budget > 0
                and len(chunk.tokens) == 1
                and chunk.start == seq.num_computed
                and _is_decoding(seq)
            ):
                held = len(self.blocks.block_table(seq.seq_id))
                room = (held + self.blocks.num_free()) * self.blocks.block_size - chunk.start - 1
                k = min(len(draft), budget, seq.max_tokens - len(seq.output_ids) - 1, room)
                if k > 0:
                    self.blocks.allocate(seq.seq_id, chunk.start + 1 + k)
                    chunk = ScheduledChunk(
                        seq.seq_id, chunk.start, chunk.tokens + tuple(draft[:k]), needs_logits=True, num_drafts=k
                    )
                    budget -= k
            out.append(chunk)
        return out

    def postprocess(
        self, chunks: list[ScheduledChunk], tokens: Mapping[int, int | Seq[int]]
    ) -> dict[int, FinishReason]:
        """Record a step that ran: append each sequence's sampled tokens (sequence id -> a
        token, or the tokens a verify step emitted) and commit the step's KV, and finish the
        sequences it ends, their KV freed now: an end-of-generation token (not appended) or
        max_tokens reached. Returns the reasons of those by sequence id. A sequence finished
        while the step ran takes no token.

        A chunk with drafts keeps the KV of as many of its tokens as it emitted (its last
        token and the accepted drafts); the blocks past them, holding only rejected drafts,
        are freed, and only blocks of kept tokens are ever offered to the prefix cache."""
        running = {seq.seq_id: seq for seq in self.running}
        ended: dict[int, FinishReason] = {}
        for chunk in chunks:
            seq = running.get(chunk.seq_id)
            if seq is None:
                continue  # finished while the step ran; its blocks are already free
            _check_not_stale(seq, chunk)
            sampled = tokens.get(seq.seq_id, ())
            sampled = (sampled,) if isinstance(sampled, int) else tuple(sampled)
            appended = 0
            for token in sampled:  # appended first: the blocks registered below are keyed by them
                if token in seq.end_ids:
                    ended[seq.seq_id] = FinishReason.EOS
                    break
                seq.output_ids.append(token)
                appended += 1
                if len(seq.output_ids) >= seq.max_tokens:
                    ended[seq.seq_id] = FinishReason.LENGTH
                    break
            # a chunk with drafts computed the KV of its last token and of the drafts that the
            # emitted tokens accepted: one token fewer than it emitted
            seq.num_computed += min(len(sampled), appended + 1) if chunk.num_drafts else len(chunk.tokens)
            self._register_full_blocks(seq)
            if seq.seq_id in ended:
                self.finish(seq)
            elif chunk.num_drafts:
                self.blocks.truncate(seq.seq_id, seq.num_computed)
        return ended

    def _register_full_blocks(self, seq: Sequence) -> None:
        """Offer the blocks this step filled to the prefix cache (their KV is now written)."""
        keyed = self.blocks.num_keyed_tokens(seq.seq_id)
        full = seq.num_computed - seq.num_computed % self.blocks.block_size
        if full > keyed:
            self.blocks.register(seq.seq_id, _token_slice(seq, keyed, full))
            if self.blocks.checkpoints is not None and seq.num_computed in self._checkpoints_at(seq):
                self.blocks.checkpoint_state(seq.seq_id)  # the state after the whole blocks up to here

    def _checkpoints_at(self, seq: Sequence) -> tuple[int, ...]:
        """Prefix caching with state (runtime/engine/state_cache.py): the prefill positions whose
        state is checkpointed (a chunk ends at each); () for none."""
        if self.blocks.checkpoints is None:
            return ()
        return checkpoint_points(len(seq.prompt_ids), self.blocks.block_size)

    def _cut(self, seq: Sequence, n: int) -> int:
        """n tokens from num_computed on, ending at a checkpoint position if they cross one."""
        return first_point_inside(self._checkpoints_at(seq), seq.num_computed, n)

    def finish(self, seq: Sequence) -> None:
        """Drop a finished, cancelled or disconnected sequence and free its KV blocks now."""
        if seq in self.running:
            self.running.remove(seq)
            self._release_partial(seq)
            self.blocks.free(seq.seq_id)
        elif seq in self.waiting:
            self.waiting.remove(seq)  # waiting sequences hold no blocks
        seq.status = SequenceStatus.FINISHED

    def _release_partial(self, seq: Sequence) -> None:
        """Before its blocks go: the computed tokens of the sequence's last, partial block,
        kept as a copy source for a later prompt that agrees with them (reuse to the token)."""
        if not self.blocks.copy_partial:
            return
        keyed = self.blocks.num_keyed_tokens(seq.seq_id)
        if seq.num_computed > keyed:
            self.blocks.release_partial(seq.seq_id, _token_slice(seq, keyed, seq.num_computed))

    def num_waiting(self) -> int:
        return len(self.waiting)

    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _live(self) -> list[Sequence]:
        return [*self.running, *self.waiting]

    def _check_fits(self, seq: Sequence) -> None:
        if not seq.prompt_ids or seq.max_tokens < 1:
            raise ValueError("a sequence needs a non-empty prompt and max_tokens >= 1")
        # The last sampled token is never fed back, so this is the most KV it will hold.
        most_tokens = len(seq.prompt_ids) + seq.max_tokens - 1
        capacity = self.blocks.num_blocks * self.blocks.block_size
        if most_tokens > capacity:
            raise ValueError(
                f"sequence {seq.seq_id} may need {most_tokens} KV slots (prompt "
                f"{len(seq.prompt_ids)} + max_tokens {seq.max_tokens} - 1) but the whole "
                f"cache holds {capacity}"
            )

    def _schedule_decodes(self, chunks: list[ScheduledChunk], budget: int) -> int:
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING or not _is_decoding(seq):
                continue  # preempted earlier in this loop, or still in prefill
            if self._make_room(seq, seq.num_computed + 1, chunks):
                chunks.append(self._chunk(seq, 1))
                budget -= 1
            else:
                self._preempt(seq)  # it is the most recently admitted one left
        return budget

    def _schedule_prefills(self, chunks: list[ScheduledChunk], budget: int) -> int:
        scheduled = {chunk.seq_id for chunk in chunks}
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING or seq.seq_id in scheduled:
                continue
            # Preempt only when not even one token fits; otherwise shrink the chunk.
            if not self._make_room(seq, seq.num_computed + 1, chunks):
                continue
            held = len(self.blocks.block_table(seq.seq_id))
            room = (held + self.blocks.num_free()) * self.blocks.block_size - seq.num_computed
            n = self._cut(seq, min(seq.num_tokens() - seq.num_computed, budget, room))
            chunks.append(self._chunk(seq, n))
            budget -= n
        return budget

    def _admit(self, chunks: list[ScheduledChunk], budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_batch:
            seq = self.waiting[0]
            # A prefix another sequence computed (or this one, before a preemption) is taken
            # from the cache; prefill starts at the first token it does not hold.
            prefix = self.blocks.find_prefix(seq.all_ids())
            n = min(seq.num_tokens() - prefix.num_tokens, budget)
            n = first_point_inside(self._checkpoints_at(seq), prefix.num_tokens, n)
            if not self.blocks.can_allocate(seq.seq_id, prefix.num_tokens + n, prefix):
                break  # FIFO: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.blocks.allocate(seq.seq_id, prefix.num_tokens + n, prefix)
            seq.num_computed = seq.num_cached = prefix.num_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chunks.append(self._chunk(seq, n))
            budget -= n

    def _make_room(self, seq: Sequence, total_tokens: int, chunks: list[ScheduledChunk]) -> bool:
        """Preempt younger sequences with no work this step until seq fits total_tokens."""
        while not self.blocks.can_allocate(seq.seq_id, total_tokens):
            victim = self._victim(seq, chunks)
            if victim is None:
                return False
            self._preempt(victim)
        return True

    def _victim(self, seq: Sequence, chunks: list[ScheduledChunk]) -> Sequence | None:
        scheduled = {chunk.seq_id for chunk in chunks}
        for candidate in reversed(self.running):
            if candidate is seq:
                return None  # never preempt an older sequence for a younger one
            if candidate.seq_id not in scheduled:
                return candidate
        return None

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release_partial(seq)
        self.blocks.free(seq.seq_id)
        seq.num_computed = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _chunk(self, seq: Sequence, n: int) -> ScheduledChunk:
        start = seq.num_computed
        self.blocks.allocate(seq.seq_id, start + n)
        return ScheduledChunk(
            seq_id=seq.seq_id,
            start=start,
            tokens=tuple(_token_slice(seq, start, start + n)),
            needs_logits=start + n == seq.num_tokens(),
        )


def _is_decoding(seq: Sequence) -> bool:
    return seq.num_computed == seq.num_tokens() - 1


def _token_slice(seq: Sequence, start: int, stop: int) -> list[int]:
    """all_ids()[start:stop] without copying the whole history for every decode token."""
    n_prompt = len(seq.prompt_ids)
    if start >= n_prompt:
        return seq.output_ids[start - n_prompt : stop - n_prompt]
    return seq.prompt_ids[start:stop] + seq.output_ids[: max(0, stop - n_prompt)]


def _check_not_stale(seq: Sequence, chunk: ScheduledChunk) -> None:
    """A step's chunk must start where its sequence's computed tokens end."""
    if chunk.start != seq.num_computed:
        raise ValueError(
            f"stale chunk for sequence {seq.seq_id}: starts at {chunk.start}, {seq.num_computed} tokens computed"
        )
