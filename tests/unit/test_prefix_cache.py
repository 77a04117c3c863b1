"""Prefix caching in the BlockManager and the scheduler, alone (no model).

The fake KV store here records, per pool slot, the position and the *whole token prefix* up
to it: what a real KV entry depends on. A step that reads a slot whose content belongs to a
different prefix (a shared block overwritten, a stale cached block, a wrong chain key) fails.
"""

import random

import pytest

from rfc.runtime.engine.kv_cache import BlockManager, KVCacheFull
from rfc.runtime.engine.prefix_cache import block_keys, chain_key
from rfc.runtime.engine.scheduler import Scheduler, SchedulerConfig, Sequence, SequenceStatus


def computed(blocks: BlockManager, seq_id: int, tokens: list[int]) -> None:
    """Allocates `tokens` for a new sequence and registers its full blocks, as a step would."""
    prefix = blocks.find_prefix(tokens)
    blocks.allocate(seq_id, len(tokens), prefix)
    full = len(tokens) - len(tokens) % blocks.block_size
    keyed = blocks.num_keyed_tokens(seq_id)
    blocks.register(seq_id, tokens[keyed:full])


def test_a_repeated_prefix_takes_the_cached_blocks():
    blocks = BlockManager(num_blocks=8, block_size=4)
    first = list(range(10))
    computed(blocks, 1, first)
    assert blocks.num_keyed_tokens(1) == 8
    blocks.free(1)
    assert blocks.num_free() == 8 and blocks.num_cached_idle() == 2
    prefix = blocks.find_prefix(first[:9] + [99, 98])
    assert prefix.num_tokens == 8 and list(prefix.blocks) == blocks_of_first(blocks, first)
    blocks.allocate(2, 11, prefix)
    assert blocks.block_table(2)[:2] == list(prefix.blocks)
    assert blocks.cache.hit_tokens == 8 and blocks.cache.miss_tokens == 10 + 3


def blocks_of_first(blocks: BlockManager, tokens: list[int]) -> list[int]:
    return blocks.cache.lookup(block_keys(tokens, blocks.block_size))


def test_the_last_token_is_always_computed():
    blocks = BlockManager(num_blocks=8, block_size=4)
    computed(blocks, 1, list(range(8)))
    blocks.free(1)
    # All 8 tokens are cached, but the step needs the last one's logits: its block is redone.
    assert blocks.find_prefix(list(range(8))).num_tokens == 4
    assert blocks.find_prefix(list(range(9))).num_tokens == 8
    assert blocks.find_prefix([0]).num_tokens == 0


def test_keys_chain_over_the_whole_prefix():
    blocks = BlockManager(num_blocks=8, block_size=2)
    computed(blocks, 1, [1, 2, 3, 4, 5])
    # The same block [3, 4] after a different first block is a different prefix.
    assert blocks.find_prefix([9, 9, 3, 4, 5]).num_tokens == 0
    assert blocks.find_prefix([1, 2, 3, 9, 5]).num_tokens == 2
    assert chain_key(b"", [1, 2]) != chain_key(b"", [2, 1])
    assert chain_key(chain_key(b"", [1, 2]), [3, 4]) == block_keys([1, 2, 3, 4], 2)[1]


def test_shared_blocks_are_counted_and_freed_by_the_last_holder():
    blocks = BlockManager(num_blocks=6, block_size=2)
    computed(blocks, 1, [1, 2, 3, 4, 5])
    shared = blocks.block_table(1)[:2]
    computed(blocks, 2, [1, 2, 3, 4, 7])
    assert blocks.block_table(2)[:2] == shared
    assert [blocks.ref_count(b) for b in shared] == [2, 2]
    assert blocks.num_used() == 4  # two shared blocks and one tail block each
    blocks.free(1)
    assert [blocks.ref_count(b) for b in shared] == [1, 1] and blocks.num_used() == 3
    blocks.free(2)
    assert blocks.num_used() == 0 and blocks.num_free() == 6
    assert blocks.free_blocks() == list(range(6))


def test_cached_blocks_are_evicted_only_when_the_pool_needs_them_oldest_first():
    blocks = BlockManager(num_blocks=6, block_size=2)
    computed(blocks, 1, [1, 2, 3, 4])  # blocks 0, 1
    blocks.free(1)
    computed(blocks, 2, [5, 6, 7, 8])  # never-used blocks 2, 3 go first: nothing evicted
    blocks.free(2)
    assert blocks.cache.evictions == 0 and blocks.num_cached_idle() == 4
    # Six blocks for an unrelated sequence: two fresh ones, then the least recently used.
    blocks.allocate(3, 8)
    assert blocks.block_table(3) == [4, 5, 1, 0]  # sequence 1's tail goes before its head
    assert blocks.cache.evictions == 2
    assert blocks.find_prefix([1, 2, 3, 4, 0]).num_tokens == 0
    assert blocks.find_prefix([5, 6, 7, 8, 0]).num_tokens == 4
    with pytest.raises(KVCacheFull):
        blocks.allocate(3, 13)  # one block more than the pool: nothing changes
    assert blocks.find_prefix([5, 6, 7, 8, 0]).num_tokens == 4


def test_a_held_cached_block_is_never_evicted():
    blocks = BlockManager(num_blocks=3, block_size=2)
    computed(blocks, 1, [1, 2, 3])
    assert not blocks.can_allocate(2, 5)  # two blocks held by sequence 1, one free
    blocks.allocate(2, 2)
    assert blocks.num_free() == 0
    with pytest.raises(KVCacheFull):
        blocks.allocate(3, 1)


def test_prefix_taking_counts_idle_blocks_against_the_free_pool():
    blocks = BlockManager(num_blocks=3, block_size=2)
    computed(blocks, 1, [1, 2, 3, 4, 5])
    blocks.free(1)
    prefix = blocks.find_prefix([1, 2, 3, 4, 5])
    assert prefix.num_tokens == 4
    assert blocks.can_allocate(2, 5, prefix) and not blocks.can_allocate(2, 7, prefix)


def test_disabled_cache_never_hits():
    blocks = BlockManager(num_blocks=4, block_size=2, prefix_caching=False)
    computed(blocks, 1, [1, 2, 3])
    blocks.free(1)
    assert blocks.find_prefix([1, 2, 3]).num_tokens == 0 and blocks.num_cached_idle() == 0


# -- through the scheduler, with a fake KV store ---------------------------------------------


class PrefixKV:
    """slot -> (position, tokens[:position + 1]): what a real KV entry depends on."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.kv: dict[int, tuple[int, tuple[int, ...]]] = {}
        self.computed_tokens = 0

    def step(self, rng: random.Random) -> None:
        sched, blocks = self.sched, self.sched.blocks
        chunks = sched.schedule()
        for copy in blocks.take_copies():  # reuse to the token: the device's copy, before the step
            for r in range(copy.rows):
                self.kv[copy.dst * blocks.block_size + r] = self.kv[copy.src * blocks.block_size + r]
        seqs = {s.seq_id: s for s in sched.running}
        for chunk in chunks:
            seq = seqs[chunk.seq_id]
            ids = tuple(seq.all_ids())
            assert chunk.start == seq.num_computed and chunk.tokens
            for pos in range(chunk.start):
                assert self.kv[blocks.slot(seq.seq_id, pos)] == (pos, ids[: pos + 1]), "stale KV read"
            for i in range(len(chunk.tokens)):
                pos = chunk.start + i
                self.kv[blocks.slot(seq.seq_id, pos)] = (pos, ids[: pos + 1])
            self.computed_tokens += len(chunk.tokens)
        sched.commit(chunks)
        for chunk in chunks:
            seq = seqs[chunk.seq_id]
            if chunk.needs_logits:
                # Deterministic in the prefix, as greedy decoding is.
                seq.output_ids.append(hash(tuple(seq.all_ids())) % 7)
                if len(seq.output_ids) == seq.max_tokens:
                    sched.finish(seq)
                elif rng.random() < 0.05:
                    sched.finish(seq)  # a client that goes away
        used = [b for s in sched.running for b in blocks.block_table(s.seq_id)]
        assert sorted(set(used) | set(blocks.free_blocks())) == list(range(blocks.num_blocks))
        assert not set(used) & set(blocks.free_blocks()), "a held block is in the free pool"
        for b in set(used):
            assert blocks.ref_count(b) == used.count(b), "reference count != holders"


@pytest.mark.parametrize("copy_partial", [False, True], ids=["whole-blocks", "to-the-token"])
@pytest.mark.parametrize("seed", range(12))
def test_random_shared_prefixes_never_read_stale_kv_and_never_leak(seed, copy_partial):
    rng = random.Random(seed)
    blocks = BlockManager(num_blocks=rng.randint(8, 40), block_size=rng.choice([1, 2, 4]))
    blocks.copy_partial = copy_partial
    sched = Scheduler(SchedulerConfig(max_batch=4, max_batch_tokens=rng.choice([8, 16, 64])), blocks)
    fake = PrefixKV(sched)
    systems = [[rng.randrange(5) for _ in range(rng.randint(1, 12))] for _ in range(3)]
    seqs = []
    for seq_id in range(40):
        prompt = rng.choice(systems) + [rng.randrange(5) for _ in range(rng.randint(0, 6))]
        seq = Sequence(seq_id, prompt, max_tokens=rng.randint(1, 6))
        try:
            sched.add(seq)
            seqs.append(seq)
        except ValueError:
            continue  # larger than the whole pool
        for _ in range(rng.randint(0, 3)):
            if sched.has_work():
                fake.step(rng)
    for _ in range(5000):
        if not sched.has_work():
            break
        fake.step(rng)
    assert not sched.has_work()
    assert all(s.status is SequenceStatus.FINISHED for s in seqs)
    assert blocks.num_used() == 0 and blocks.num_free() == blocks.num_blocks
    assert blocks.cache.hit_tokens > 0 or blocks.block_size > max(map(len, systems))


def test_a_repeated_prompt_prefills_only_its_new_tokens():
    blocks = BlockManager(num_blocks=64, block_size=4)
    sched = Scheduler(SchedulerConfig(max_batch=2, max_batch_tokens=256), blocks)
    fake = PrefixKV(sched)
    system = list(range(100))
    first = Sequence(1, system + [1, 2, 3], max_tokens=2)
    sched.add(first)
    while sched.has_work():
        fake.step(random.Random(0))
    before = fake.computed_tokens
    second = Sequence(2, system + [7, 7], max_tokens=1)
    sched.add(second)
    chunks = sched.schedule()
    assert [(c.start, len(c.tokens)) for c in chunks] == [(100, 2)]
    assert second.num_cached == 100
    sched.commit(chunks)
    sched.finish(second)
    assert fake.computed_tokens == before


def test_an_exact_repeat_reuses_its_prompt_to_the_token():
    """The partial last block of a finished sequence is a copy source: a repeat of its prompt
    computes only its last token, its rows copied into a block of its own (never shared)."""
    blocks = BlockManager(num_blocks=16, block_size=4)
    blocks.copy_partial = True
    sched = Scheduler(SchedulerConfig(max_batch=2, max_batch_tokens=64), blocks)
    fake = PrefixKV(sched)
    prompt = list(range(3, 13))  # 10 tokens: two full blocks and 2 rows of a third
    first = Sequence(1, prompt, max_tokens=1)
    sched.add(first)
    while sched.has_work():
        fake.step(random.Random(0))
    again = Sequence(2, list(prompt), max_tokens=1)
    sched.add(again)
    chunks = sched.schedule()
    assert [(c.start, c.tokens) for c in chunks] == [(9, (12,))] and again.num_cached == 9
    (copy,) = blocks.take_copies()
    table = blocks.block_table(2)
    assert copy.rows == 1 and copy.dst == table[2] and copy.src not in table  # copy-on-write
    sched.commit(chunks)
    sched.finish(again)
    # A prompt that parts from the cached rows inside the block takes the rows before it.
    assert blocks.find_prefix(prompt[:9] + [99, 98]).num_tokens == 9
    assert blocks.find_prefix(prompt[:8] + [99, 98]).num_tokens == 8
    # Without copy_partial (a device that cannot copy KV rows) reuse stops at whole blocks.
    blocks.copy_partial = False
    assert blocks.find_prefix(prompt).num_tokens == 8


def test_an_evicted_copy_source_is_forgotten():
    blocks = BlockManager(num_blocks=3, block_size=4)
    blocks.copy_partial = True
    blocks.allocate(1, 6)
    blocks.register(1, [1, 2, 3, 4])
    blocks.release_partial(1, [5, 6])
    blocks.free(1)
    assert blocks.num_cached_idle() == 2 and blocks.find_prefix([1, 2, 3, 4, 5, 6, 7]).num_tokens == 6
    blocks.allocate(2, 12)  # the whole pool: both cached blocks evicted
    blocks.free(2)
    assert blocks.find_prefix([1, 2, 3, 4, 5, 6, 7]).num_tokens == 0
