"""Paged KV-cache bookkeeping: which fixed-size blocks of the pool each sequence owns.

The KV arrays themselves (one pair per layer) belong to the device; this module only decides
which slots a sequence's tokens occupy, like nano-vllm's block_manager.py (STYLE.md point 4).
The pool is `num_blocks` blocks of `block_size` token slots, preallocated once. Free blocks
are handed out lowest id first so that a run with the same requests is reproducible slot for
slot.
"""

from __future__ import annotations

import heapq


class KVCacheFull(Exception):
    """Not enough free blocks for a request; the manager is left unchanged."""


class BlockManager:
    """Block tables of the sequences that hold KV slots, and the free list of the rest."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"num_blocks and block_size must be positive, got {num_blocks} and {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks))  # a sorted list is already a heap
        self._tables: dict[int, list[int]] = {}

    def num_free(self) -> int:
        return len(self._free)

    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def free_blocks(self) -> list[int]:
        """The free block ids, sorted (for invariant checks and metrics)."""
        return sorted(self._free)

    def num_sequences(self) -> int:
        return len(self._tables)

    def has(self, seq_id: int) -> bool:
        return seq_id in self._tables

    def blocks_needed(self, seq_id: int, total_tokens: int) -> int:
        """Extra blocks `seq_id` needs so that its table holds `total_tokens` slots."""
        if total_tokens < 0:
            raise ValueError(f"total_tokens must be >= 0, got {total_tokens}")
        wanted = -(-total_tokens // self.block_size)
        return max(0, wanted - len(self._tables.get(seq_id, ())))

    def can_allocate(self, seq_id: int, total_tokens: int) -> bool:
        return self.blocks_needed(seq_id, total_tokens) <= len(self._free)

    def allocate(self, seq_id: int, total_tokens: int) -> None:
        """Grow (or create) `seq_id`'s table to hold `total_tokens` slots; never shrinks it."""
        needed = self.blocks_needed(seq_id, total_tokens)
        if needed > len(self._free):
            raise KVCacheFull(
                f"sequence {seq_id} needs {needed} more blocks for {total_tokens} tokens, "
                f"{len(self._free)} of {self.num_blocks} are free"
            )
        table = self._tables.setdefault(seq_id, [])
        table.extend(heapq.heappop(self._free) for _ in range(needed))

    def free(self, seq_id: int) -> None:
        """Return all of `seq_id`'s blocks to the pool; an unknown id is a no-op."""
        for block in self._tables.pop(seq_id, ()):
            heapq.heappush(self._free, block)

    def block_table(self, seq_id: int) -> list[int]:
        """A copy of `seq_id`'s block ids in position order; KeyError for an unknown id."""
        return list(self._tables[seq_id])

    def slot(self, seq_id: int, position: int) -> int:
        """Index of `position`'s KV slot in the whole pool (block * block_size + offset)."""
        table = self._tables[seq_id]
        block, offset = divmod(position, self.block_size)
        if position < 0 or block >= len(table):
            raise IndexError(
                f"position {position} of sequence {seq_id} is not allocated "
                f"({len(table) * self.block_size} slots held)"
            )
        return table[block] * self.block_size + offset
