"""Decode queued ahead: the next step built while the step before it still runs.

On a GPU a decode step's host work (scheduling, staging, the driver's copy and graph calls,
reading the ids back, the engine's sampling bookkeeping, the output stage) would otherwise
sit between two steps with the card idle. When every sequence a step runs will go on decoding
after it, the engine queues the next step before it reads this one: each sequence's next
token is the token this step samples for it, copied on the device into the next step's
inputs (runtime/devices/gpu_program.py StepRunner.launch_sampled), so the card goes from one
step to the next while the host reads and delivers the one before.

`next_chunks` decides whether and what: only when the step before is all device-sampled rows
of sequences that the scheduler runs alone (no prompt waiting, no prefill left, no drafts),
with no grammar, logit bias, top logprobs or speculation needing the token on the host first.
A penalty window (Ollama's default repeat_penalty) follows: the device counts the fed token
in it. A
sequence the step ends (an end-of-generation token, a stop string, a cancel) has its queued
row computed and dropped; one that max_tokens ends is left out, as is one whose next KV slot
does not fit without preempting.
"""

from dataclasses import dataclass

from rfc.runtime.engine.batch import ScheduledChunk
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.requests import RequestState
from rfc.runtime.engine.scheduler import Scheduler, SequenceStatus

# the token a queued chunk is staged with: the device copies the real one over it. The chunk
# keeps it: after its step nothing reads a chunk's tokens but their count (the scheduler's
# postprocess), and the sequence's own tokens have the real one by then
FED = 0


@dataclass(frozen=True)
class AheadChunks:
    """The next step's chunks (each one fed token), their states, and for each chunk's token
    the row of the step before that samples it: (token index, row) pairs."""

    chunks: list[ScheduledChunk]
    states: list[RequestState]
    feed: tuple[tuple[int, int], ...]


def can_follow(state: RequestState) -> bool:
    """Whether a request's next token may be fed on the device: its row is sampled there
    (no grammar, logit_bias or top logprobs) and it does not speculate (drafts are proposed
    from the token on the host). A penalty window follows: the device counts the fed token."""
    return not state.samples_on_host and state.spec is None


def next_chunks(
    chunks: list[ScheduledChunk], states: list[RequestState], scheduler: Scheduler, blocks: BlockManager
) -> AheadChunks | None:
    """The step to queue behind the step of `chunks` (not yet read), or None where none may
    be (the engine's lock held). Allocates the queued tokens' KV slots."""
    if scheduler.waiting or not chunks:
        return None
    live = [(c, s) for c, s in zip(chunks, states) if s.seq.status is SequenceStatus.RUNNING]
    if len(live) != len(scheduler.running):  # a running sequence this step does not advance
        return None
    out: list[ScheduledChunk] = []
    kept: list[RequestState] = []
    feed: list[tuple[int, int]] = []
    row = 0
    for chunk, state in zip(chunks, states):
        first, row = row, row + chunk.num_rows
        if state.seq.status is not SequenceStatus.RUNNING:
            continue  # ended while the step ran: its row is dropped when read
        seq = state.seq
        if chunk.num_drafts or chunk.all_logits or not chunk.needs_logits or not can_follow(state):
            return None
        if chunk.start + len(chunk.tokens) != seq.num_tokens():  # a prefill chunk before the last
            return None
        if len(seq.output_ids) + 1 >= seq.max_tokens:
            continue  # the token this step samples is its last
        position = seq.num_tokens()  # the token this step samples goes here
        if not blocks.can_allocate(seq.seq_id, position + 1):
            continue
        blocks.allocate(seq.seq_id, position + 1)
        feed.append((len(out), first))
        out.append(ScheduledChunk(seq.seq_id, position, (FED,)))
        kept.append(state)
    if not out:
        return None
    return AheadChunks(out, kept, tuple(feed))
