"""BlockManager: paged KV-cache bookkeeping, alone (no device, no numpy)."""

import random

import pytest

from rfc.runtime.engine.kv_cache import BlockManager, KVCacheFull


def assert_partition(blocks: BlockManager, seq_ids) -> None:
    """Every block is either free or in exactly one table."""
    tables = [blocks.block_table(s) for s in seq_ids if blocks.has(s)]
    used = [b for table in tables for b in table]
    free = blocks.free_blocks()
    assert len(used) == len(set(used)), "a block is shared by two sequences"
    assert not set(used) & set(free), "a used block is also free"
    assert sorted(used + free) == list(range(blocks.num_blocks))
    assert blocks.num_used() == len(used)
    assert blocks.num_free() == len(free)
    assert blocks.num_sequences() == len(tables)


def test_allocate_hands_out_lowest_free_blocks_first():
    blocks = BlockManager(num_blocks=8, block_size=4)
    blocks.allocate(1, 5)  # 2 blocks
    blocks.allocate(2, 4)  # 1 block
    assert blocks.block_table(1) == [0, 1]
    assert blocks.block_table(2) == [2]
    assert blocks.num_free() == 5 and blocks.num_used() == 3
    blocks.free(1)
    blocks.allocate(3, 12)
    assert blocks.block_table(3) == [0, 1, 3]


def test_allocate_grows_an_existing_table_and_never_shrinks_it():
    blocks = BlockManager(num_blocks=8, block_size=4)
    blocks.allocate(1, 1)
    assert blocks.blocks_needed(1, 4) == 0
    assert blocks.blocks_needed(1, 5) == 1
    blocks.allocate(1, 4)
    assert blocks.block_table(1) == [0]
    blocks.allocate(7, 1)
    blocks.allocate(1, 9)
    assert blocks.block_table(1) == [0, 2, 3]
    blocks.allocate(1, 2)
    assert blocks.block_table(1) == [0, 2, 3]
    assert blocks.blocks_needed(1, 0) == 0


def test_blocks_needed_for_a_new_sequence():
    blocks = BlockManager(num_blocks=4, block_size=16)
    assert blocks.blocks_needed(9, 0) == 0
    assert blocks.blocks_needed(9, 1) == 1
    assert blocks.blocks_needed(9, 16) == 1
    assert blocks.blocks_needed(9, 17) == 2
    assert blocks.can_allocate(9, 64)
    assert not blocks.can_allocate(9, 65)
    assert not blocks.has(9)


def test_refusal_changes_nothing():
    blocks = BlockManager(num_blocks=4, block_size=2)
    blocks.allocate(1, 5)  # 3 blocks
    before = (blocks.block_table(1), blocks.free_blocks())
    with pytest.raises(KVCacheFull):
        blocks.allocate(1, 9)  # would need 2 more
    with pytest.raises(KVCacheFull):
        blocks.allocate(2, 3)  # would need 2
    assert (blocks.block_table(1), blocks.free_blocks()) == before
    assert not blocks.has(2)
    assert not blocks.can_allocate(2, 3)
    blocks.allocate(2, 2)  # exactly the last block
    assert blocks.num_free() == 0


def test_free_returns_everything_and_unknown_is_a_no_op():
    blocks = BlockManager(num_blocks=4, block_size=2)
    blocks.allocate(1, 8)
    blocks.free(1)
    blocks.free(1)
    blocks.free(42)
    assert blocks.num_free() == 4 and not blocks.has(1) and blocks.num_sequences() == 0


def test_slot_maps_positions_through_the_block_table():
    blocks = BlockManager(num_blocks=8, block_size=4)
    blocks.allocate(1, 4)
    blocks.allocate(2, 4)
    blocks.allocate(1, 8)  # seq 1 holds blocks [0, 2]
    assert [blocks.slot(1, p) for p in range(8)] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert blocks.slot(2, 3) == 7
    with pytest.raises(IndexError):
        blocks.slot(1, 8)
    with pytest.raises(IndexError):
        blocks.slot(1, -1)
    with pytest.raises(KeyError):
        blocks.slot(3, 0)


def test_block_table_is_a_copy():
    blocks = BlockManager(num_blocks=4, block_size=4)
    blocks.allocate(1, 4)
    blocks.block_table(1).append(3)
    assert blocks.block_table(1) == [0]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        BlockManager(num_blocks=0, block_size=4)
    with pytest.raises(ValueError):
        BlockManager(num_blocks=4, block_size=0)
    with pytest.raises(ValueError):
        BlockManager(num_blocks=4, block_size=4).allocate(1, -1)


def _random_run(seed: int) -> list[tuple[int, list[int]]]:
    rng = random.Random(seed)
    blocks = BlockManager(num_blocks=rng.randint(1, 24), block_size=rng.choice([1, 2, 4, 16]))
    seq_ids = range(6)
    sizes = {s: 0 for s in seq_ids}
    trace = []
    for _ in range(300):
        seq_id = rng.choice(seq_ids)
        if rng.random() < 0.3:
            blocks.free(seq_id)
            sizes[seq_id] = 0
        else:
            total = sizes[seq_id] + rng.randint(0, 3 * blocks.block_size)
            fits = blocks.can_allocate(seq_id, total)
            try:
                blocks.allocate(seq_id, total)
                sizes[seq_id] = max(sizes[seq_id], total)
                assert fits
            except KVCacheFull:
                assert not fits
            if blocks.has(seq_id):
                table = blocks.block_table(seq_id)
                assert len(table) == -(-sizes[seq_id] // blocks.block_size)
                trace.append((seq_id, table))
        assert_partition(blocks, seq_ids)
    return trace


@pytest.mark.parametrize("seed", range(20))
def test_random_allocate_free_never_shares_a_block(seed):
    _random_run(seed)


def test_same_operations_give_the_same_tables():
    assert _random_run(7) == _random_run(7)
