"""Scheduler: continuous batching with chunked prefill and preemption, alone (no model).

The engine is simulated: every chunk with needs_logits gets a fake sampled token, handed to
postprocess(), which commits the step and finishes a sequence at max_tokens. A fake KV store written through
BlockManager.slot checks that no step ever reads a slot another sequence overwrote.
"""

import random

import pytest

from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.scheduler import (
    FinishReason,
    QueueFull,
    ScheduledChunk,
    Scheduler,
    SchedulerConfig,
    Sequence,
    SequenceStatus,
)


def make_seq(seq_id: int, prompt_len: int, max_tokens: int = 4) -> Sequence:
    return Sequence(seq_id, [seq_id * 1000 + i for i in range(prompt_len)], max_tokens)


def fake_token(seq: Sequence) -> int:
    """Deterministic in (sequence, position), so a recomputed sequence samples the same."""
    return -(seq.seq_id * 1000 + len(seq.output_ids) + 1)


def make_scheduler(num_blocks=64, block_size=4, **config) -> Scheduler:
    return Scheduler(SchedulerConfig(**config), BlockManager(num_blocks, block_size))


def check_invariants(sched: Scheduler) -> None:
    blocks = sched.blocks
    tables = [blocks.block_table(s.seq_id) for s in sched.running]
    used = [b for table in tables for b in table]
    assert len(used) == len(set(used)), "a block is shared by two sequences"
    assert sorted(used + blocks.free_blocks()) == list(range(blocks.num_blocks))
    assert blocks.num_sequences() == len(sched.running), "a waiting sequence holds blocks"
    assert len(sched.running) <= sched.config.max_batch
    for seq in sched.running:
        assert seq.status is SequenceStatus.RUNNING
        assert len(blocks.block_table(seq.seq_id)) * blocks.block_size >= seq.num_computed
    for seq in sched.waiting:
        assert seq.status is SequenceStatus.WAITING and seq.num_computed == 0
    live = [s.seq_id for s in [*sched.running, *sched.waiting]]
    assert len(live) == len(set(live))


class FakeEngine:
    """The engine's side of the loop, with a fake KV store keyed by pool slot."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.kv: dict[int, tuple[int, int, int]] = {}  # slot -> (seq_id, position, token)
        self.trace: list[list[tuple[int, int, tuple[int, ...], bool]]] = []
        self.finished: list[Sequence] = []

    def step(self) -> list[ScheduledChunk]:
        sched = self.sched
        oldest = sched.running[0] if sched.running else None
        chunks = sched.schedule()
        seqs = {s.seq_id: s for s in sched.running}  # every chunk's sequence runs
        check_invariants(sched)
        # Liveness: the oldest running sequence is never preempted for a younger one.
        assert oldest is None or oldest.status is SequenceStatus.RUNNING
        assert sum(len(c.tokens) for c in chunks) <= sched.config.max_batch_tokens
        assert len({c.seq_id for c in chunks}) == len(chunks), "one chunk per sequence"
        for chunk in chunks:
            self._run(chunk, seqs[chunk.seq_id])
        ended = sched.postprocess(chunks, {c.seq_id: fake_token(seqs[c.seq_id]) for c in chunks if c.needs_logits})
        for chunk in chunks:
            seq = seqs[chunk.seq_id]
            assert seq.num_computed == chunk.start + len(chunk.tokens)
            if chunk.seq_id in ended:
                assert ended[chunk.seq_id] is FinishReason.LENGTH and len(seq.output_ids) == seq.max_tokens
                assert seq.status is SequenceStatus.FINISHED
                self.finished.append(seq)
        check_invariants(sched)
        self.trace.append([(c.seq_id, c.start, tuple(c.tokens), c.needs_logits) for c in chunks])
        return chunks

    def _run(self, chunk: ScheduledChunk, seq: Sequence) -> None:
        blocks = self.sched.blocks
        ids = seq.all_ids()
        assert seq.status is SequenceStatus.RUNNING
        assert chunk.start == seq.num_computed
        assert chunk.tokens == tuple(ids[chunk.start : chunk.start + len(chunk.tokens)])
        assert chunk.tokens, "empty chunk"
        assert chunk.needs_logits == (chunk.start + len(chunk.tokens) == seq.num_tokens())
        for pos in range(chunk.start):  # attention reads the whole prefix
            assert self.kv[blocks.slot(seq.seq_id, pos)] == (seq.seq_id, pos, ids[pos])
        for i, token in enumerate(chunk.tokens):
            pos = chunk.start + i
            self.kv[blocks.slot(seq.seq_id, pos)] = (seq.seq_id, pos, token)

    def run_until_idle(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.sched.has_work():
                return
            self.step()
        raise AssertionError("the scheduler made no progress")


def expected_output(seq: Sequence) -> list[int]:
    return [-(seq.seq_id * 1000 + i + 1) for i in range(seq.max_tokens)]


def test_config_is_validated():
    with pytest.raises(ValueError):
        SchedulerConfig(max_batch=0)
    with pytest.raises(ValueError):
        SchedulerConfig(max_queue=0)
    with pytest.raises(ValueError):
        SchedulerConfig(max_batch=8, max_batch_tokens=4)


def test_a_short_prompt_is_prefilled_then_decoded_one_token_per_step():
    sched = make_scheduler()
    engine = FakeEngine(sched)
    seq = make_seq(1, prompt_len=3, max_tokens=3)
    sched.add(seq)
    assert engine.step() and engine.trace[-1] == [(1, 0, (1000, 1001, 1002), True)]
    engine.step()
    assert engine.trace[-1] == [(1, 3, (-1001,), True)]
    engine.step()
    assert engine.trace[-1] == [(1, 4, (-1002,), True)]
    assert seq.status is SequenceStatus.FINISHED and seq.output_ids == expected_output(seq)
    assert not sched.has_work()
    assert sched.blocks.num_free() == sched.blocks.num_blocks


def test_decodes_come_first_and_a_long_prompt_is_chunked_around_them():
    sched = make_scheduler(max_batch_tokens=16)
    engine = FakeEngine(sched)
    short = make_seq(1, prompt_len=2, max_tokens=20)
    sched.add(short)
    engine.step()  # short's prefill
    long = make_seq(2, prompt_len=100, max_tokens=2)
    sched.add(long)
    starts = []
    while long.num_computed < 100:
        chunks = engine.step()
        assert chunks[0].seq_id == short.seq_id and len(chunks[0].tokens) == 1  # decode first
        assert chunks[1].seq_id == long.seq_id
        assert len(chunks[1].tokens) == min(15, 100 - chunks[1].start)  # the rest of the budget
        assert chunks[1].needs_logits == (long.num_computed == 100)
        starts.append(chunks[1].start)
    assert starts == [0, 15, 30, 45, 60, 75, 90][: len(starts)]
    assert len(starts) == 7  # 100 tokens in chunks of at most 15
    assert len(long.output_ids) == 1 and len(short.output_ids) == 8


def test_decodes_are_not_starved_by_a_prompt_larger_than_the_budget():
    sched = make_scheduler(max_batch_tokens=8, max_batch=4)
    engine = FakeEngine(sched)
    decoders = [make_seq(i, prompt_len=1, max_tokens=30) for i in range(3)]
    for seq in decoders:
        sched.add(seq)
    engine.step()
    sched.add(make_seq(9, prompt_len=60, max_tokens=1))
    for _ in range(10):
        chunks = engine.step()
        assert [c.seq_id for c in chunks[:3]] == [0, 1, 2]
        assert all(len(c.tokens) == 1 for c in chunks[:3])
        assert sum(len(c.tokens) for c in chunks) == 8


def test_max_batch_limits_running_sequences():
    sched = make_scheduler(max_batch=2)
    engine = FakeEngine(sched)
    seqs = [make_seq(i, prompt_len=3, max_tokens=3) for i in range(5)]
    for seq in seqs:
        sched.add(seq)
    engine.step()
    assert sched.num_running() == 2 and sched.num_waiting() == 3
    running_counts = []
    while sched.has_work():
        engine.step()
        running_counts.append(sched.num_running())
    assert max(running_counts) <= 2
    assert all(s.output_ids == expected_output(s) for s in seqs)
    assert [s.seq_id for s in engine.finished] == [0, 1, 2, 3, 4]


def test_max_batch_tokens_limits_tokens_per_step():
    sched = make_scheduler(num_blocks=256, max_batch=8, max_batch_tokens=10)
    engine = FakeEngine(sched)
    for i in range(6):
        sched.add(make_seq(i, prompt_len=7 + i, max_tokens=5))
    engine.run_until_idle()
    assert max(sum(len(t) for _, _, t, _ in step) for step in engine.trace) == 10


def test_queue_full():
    sched = make_scheduler(max_queue=2)
    sched.add(make_seq(1, 3))
    sched.add(make_seq(2, 3))
    with pytest.raises(QueueFull):
        sched.add(make_seq(3, 3))
    assert sched.num_waiting() == 2
    sched.schedule()  # both admitted: the queue has room again
    sched.add(make_seq(3, 3))


def test_add_refuses_what_can_never_run():
    sched = make_scheduler(num_blocks=4, block_size=4)  # 16 slots
    with pytest.raises(ValueError):
        sched.add(make_seq(1, prompt_len=17, max_tokens=1))  # the prompt alone
    with pytest.raises(ValueError):
        sched.add(make_seq(2, prompt_len=10, max_tokens=8))  # 10 + 8 - 1 slots
    with pytest.raises(ValueError):
        sched.add(make_seq(3, prompt_len=0))
    with pytest.raises(ValueError):
        sched.add(make_seq(4, prompt_len=2, max_tokens=0))
    sched.add(make_seq(5, prompt_len=10, max_tokens=7))  # exactly fits
    with pytest.raises(ValueError):
        sched.add(make_seq(5, prompt_len=1))  # duplicate id
    assert sched.num_waiting() == 1


def test_finish_frees_running_and_waiting_sequences_at_once():
    sched = make_scheduler(num_blocks=16, block_size=4, max_batch=1)
    running, waiting = make_seq(1, 10), make_seq(2, 5)
    sched.add(running)
    sched.add(waiting)
    chunks = sched.schedule()
    assert sched.num_running() == 1 and sched.blocks.num_used() == 3
    sched.finish(running)  # e.g. the client went away while the step ran
    assert running.status is SequenceStatus.FINISHED
    assert sched.num_running() == 0 and sched.blocks.num_free() == 16
    sched.commit(chunks)  # a step already in flight is ignored for a finished sequence
    assert running.num_computed == 0
    sched.finish(waiting)
    assert waiting.status is SequenceStatus.FINISHED and sched.num_waiting() == 0
    assert not sched.has_work() and sched.schedule() == []
    sched.finish(waiting)  # twice is harmless


def test_postprocess_appends_tokens_and_ends_at_an_end_token_or_max_tokens():
    sched = make_scheduler(num_blocks=16, block_size=4)
    eos = Sequence(1, [5, 6], max_tokens=4, end_ids=frozenset({2}))
    capped = Sequence(2, [7], max_tokens=1, end_ids=frozenset({2}))
    gone = Sequence(3, [8, 9, 10], max_tokens=4)
    for seq in (eos, capped, gone):
        sched.add(seq)
    chunks = sched.schedule()
    sched.finish(gone)  # cancelled while the step ran: takes no token
    assert sched.postprocess(chunks, {1: 9, 2: 3, 3: 4}) == {2: FinishReason.LENGTH}
    assert eos.output_ids == [9] and capped.output_ids == [3] and gone.output_ids == []
    assert capped.status is SequenceStatus.FINISHED and not sched.blocks.has(2)
    chunks = sched.schedule()
    assert [(c.seq_id, c.tokens) for c in chunks] == [(1, (9,))]
    assert sched.postprocess(chunks, {1: 2}) == {1: FinishReason.EOS}
    assert eos.output_ids == [9]  # the end token is not kept
    assert not sched.has_work() and sched.blocks.num_used() == 0


def test_commit_rejects_a_stale_chunk():
    sched = make_scheduler()
    sched.add(make_seq(1, 3))
    chunks = sched.schedule()
    sched.commit(chunks)
    with pytest.raises(ValueError):
        sched.commit(chunks)


def test_waiting_sequence_is_admitted_only_when_its_first_chunk_fits():
    sched = make_scheduler(num_blocks=4, block_size=4, max_batch_tokens=64)
    engine = FakeEngine(sched)
    first, second = make_seq(1, 12, max_tokens=4), make_seq(2, 8, max_tokens=1)
    sched.add(first)
    sched.add(second)
    engine.step()  # first takes 3 blocks; second's 2 blocks do not fit
    assert [s.seq_id for s in sched.running] == [1] and sched.num_waiting() == 1
    engine.run_until_idle()
    assert first.output_ids == expected_output(first)
    assert second.output_ids == expected_output(second)
    assert sched.num_preemptions == 0


def test_preempted_sequence_goes_to_the_front_and_recomputes_prompt_and_output():
    sched = make_scheduler(num_blocks=4, block_size=2, max_batch_tokens=16)  # 8 slots
    engine = FakeEngine(sched)
    old, young = make_seq(1, 4, max_tokens=5), make_seq(2, 3, max_tokens=5)
    later = make_seq(3, 1, max_tokens=1)
    sched.add(old)
    sched.add(young)
    engine.step()  # old: 2 blocks, young: 2 blocks, pool full
    sched.add(later)
    assert sched.blocks.num_free() == 0
    engine.step()  # old decodes at position 4 (needs a 3rd block): young is preempted
    assert sched.num_preemptions == 1
    assert [s.seq_id for s in sched.waiting] == [2, 3]
    assert young.num_computed == 0 and young.output_ids == [expected_output(young)[0]]
    engine.run_until_idle()
    recompute = [c for step in engine.trace for c in step if c[0] == 2 and c[1] == 0][1]
    assert recompute[2] == tuple(young.prompt_ids + young.output_ids[:1])
    for seq in (old, young, later):
        assert seq.output_ids == expected_output(seq)


def test_tiny_pool_preempts_and_still_completes_everything():
    sched = make_scheduler(num_blocks=6, block_size=4, max_batch=4, max_batch_tokens=8)
    engine = FakeEngine(sched)
    seqs = [make_seq(i, prompt_len=6, max_tokens=10) for i in range(4)]  # 15 slots each
    for seq in seqs:
        sched.add(seq)
    engine.run_until_idle()
    assert sched.num_preemptions > 0
    assert all(s.output_ids == expected_output(s) for s in seqs)
    assert sched.blocks.num_free() == 6


def test_a_sequence_that_needs_the_whole_pool_completes():
    sched = make_scheduler(num_blocks=3, block_size=4, max_batch=4, max_batch_tokens=4)
    engine = FakeEngine(sched)
    seqs = [make_seq(0, 5, max_tokens=8), make_seq(1, 2, max_tokens=3), make_seq(2, 9, 4)]
    for seq in seqs:
        sched.add(seq)
    engine.run_until_idle()
    assert all(s.output_ids == expected_output(s) for s in seqs)


def random_workload(seed: int) -> FakeEngine:
    """Random arrivals, prompt lengths, pool sizes and cancellations."""
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 8])
    num_blocks = rng.randint(2, 24)
    max_batch = rng.randint(1, 6)
    sched = make_scheduler(
        num_blocks=num_blocks,
        block_size=block_size,
        max_batch=max_batch,
        max_batch_tokens=rng.randint(max_batch, 24),
        max_queue=8,
    )
    engine = FakeEngine(sched)
    capacity = num_blocks * block_size
    pending = []
    for seq_id in range(20):
        prompt_len = rng.randint(1, min(capacity, 30))
        max_tokens = rng.randint(1, min(12, capacity - prompt_len + 1))
        pending.append(make_seq(seq_id, prompt_len, max_tokens))
    cancelled = set()
    for _ in range(5000):
        while pending and rng.random() < 0.5:
            try:
                sched.add(pending[0])
                pending.pop(0)
            except QueueFull:
                break
        if rng.random() < 0.03 and sched.has_work():
            victim = rng.choice([*sched.running, *sched.waiting])
            sched.finish(victim)
            cancelled.add(victim.seq_id)
            check_invariants(sched)
        if not pending and not sched.has_work():
            break
        engine.step()
    else:
        raise AssertionError(f"seed {seed}: no progress")
    for seq in engine.finished:
        assert seq.seq_id not in cancelled and seq.output_ids == expected_output(seq)
    assert len(engine.finished) + len(cancelled) == 20
    assert sched.blocks.num_free() == num_blocks
    return engine


@pytest.mark.parametrize("seed", range(40))
def test_random_workloads_complete_without_corrupting_the_cache(seed):
    random_workload(seed)


def test_same_requests_give_the_same_schedule():
    first, second = random_workload(123), random_workload(123)
    assert first.trace == second.trace
    assert first.sched.num_preemptions == second.sched.num_preemptions
