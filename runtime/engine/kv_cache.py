"""Paged KV-cache bookkeeping: which fixed-size blocks of the pool each sequence owns.

The KV arrays themselves (one pair per layer) belong to the device; this module only decides
which slots a sequence's tokens occupy, like nano-vllm's block_manager.py (docs/style.md).
The pool is `num_blocks` blocks of `block_size` token slots, preallocated once.

With prefix caching (runtime/engine/prefix_cache.py) a full block whose KV is computed is keyed by
its tokens and all before them, and a later sequence with the same prefix takes the block
instead of computing it again: blocks carry reference counts, and a block nobody holds stays
cached until the pool needs it. Never-used blocks are handed out lowest id first, and cached
ones are evicted least recently used first only when no never-used block is left, so a run
with the same requests is reproducible slot for slot.

A plan with recurrent state (artifacts/plan.py StateSpec: hybrid models) also needs one state
slot per sequence: a fixed-size record the device holds beside the KV pages, from the same
memory budget (kv_budget.py). The manager hands a sequence its slot with its first blocks and
takes it back with them, so a sequence is admitted only when blocks and a slot both fit, and
a cancelled, finished or preempted one leaves no slot behind. Slots are handed out lowest id
first, like blocks.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.runtime.engine.prefix_cache import ROOT_KEY, PrefixCache, block_keys, chain_key
from rfc.runtime.engine.state_cache import StateCheckpoints


class KVCacheFull(Exception):
    """Not enough free blocks for a request; the manager is left unchanged."""


@dataclass(frozen=True)
class CachedPrefix:
    """The leading blocks of a token sequence that the cache holds (see find_prefix)."""

    blocks: tuple[int, ...] = ()
    keys: tuple[bytes, ...] = ()
    block_size: int = 1
    query_tokens: int = 0  # tokens looked up, for the hit/miss counters
    # reuse to the token: the first `partial_tokens` rows of cached block `partial_block` hold
    # the tokens after the whole blocks; allocate copies them into the sequence's next block
    partial_block: int = -1
    partial_tokens: int = 0
    state_from: int = -1  # a plan with state: the checkpoint slot holding the state after the blocks

    @property
    def num_tokens(self) -> int:
        return len(self.blocks) * self.block_size + self.partial_tokens


@dataclass(frozen=True)
class KvCopy:
    """Rows 0..rows-1 of block `src` copied into block `dst` before the step that needs them
    runs (copy-on-write of a cached block: the engine hands these to its device)."""

    src: int
    dst: int
    rows: int


def kv_copy_slots(copies: Sequence[KvCopy], block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The source and destination KV slots of `copies`, for Device.copy_kv."""
    src = [c.src * block_size + r for c in copies for r in range(c.rows)]
    dst = [c.dst * block_size + r for c in copies for r in range(c.rows)]
    return np.asarray(src, dtype=np.int32), np.asarray(dst, dtype=np.int32)


@dataclass
class _Table:
    blocks: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)  # chain keys of the leading computed blocks


@dataclass(frozen=True)
class KvPool:
    """A loaded model's KV pool as its device holds it: `num_blocks` blocks of `block_size`
    token slots for every layer. Which sequence holds which block is the business of one
    BlockManager over it: the engine's, or that of a caller driving the executor itself."""

    num_blocks: int
    block_size: int
    prefix_caching: bool = True  # reuse the blocks of a prefix computed before
    cache_types: KvCacheTypes = KvCacheTypes()  # how the device stores K and V (--cache-type-k/-v)
    state_slots: int = 0  # recurrent-state slots (a plan with state): sequences that may hold KV at once
    checkpoint_slots: int = 0  # further slots for prefix caching's state checkpoints (state_cache.py)

    def manager(self) -> BlockManager:
        """Fresh bookkeeping for the whole pool (every block and state slot free)."""
        return BlockManager(
            self.num_blocks, self.block_size, self.prefix_caching, self.state_slots, self.checkpoint_slots
        )


class BlockManager:
    """Block tables of the sequences that hold KV slots, reference counts, and the free pool
    (never-used blocks plus cached blocks nobody holds)."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        prefix_caching: bool = True,
        state_slots: int = 0,
        checkpoint_slots: int = 0,
    ) -> None:
        if num_blocks < 1 or block_size < 1 or state_slots < 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.cache = PrefixCache() if prefix_caching else None
        # reuse to the token: set by the engine when its device copies KV rows (Device.copy_kv)
        self.copy_partial = False
        self._copies: list[KvCopy] = []  # due before the next step runs (take_copies)
        self._fresh: list[int] = list(range(num_blocks))  # a sorted list is already a heap
        self._refs = [0] * num_blocks
        self._tables: dict[int, _Table] = {}
        self.num_state_slots = state_slots  # 0: the plan has no recurrent state
        self._free_states: list[int] = list(range(state_slots))  # a sorted list is already a heap
        self._state_of: dict[int, int] = {}  # sequence id -> its state slot
        # prefix caching with state: checkpoints after the sequences' slots, and the slot copies
        # (checkpoint, restore) due before the next step runs (take_state_copies)
        self.checkpoints = (
            StateCheckpoints(state_slots, checkpoint_slots)
            if self.cache is not None and state_slots and checkpoint_slots
            else None
        )
        self._state_copies: list[tuple[int, int]] = []

    # -- counts ------------------------------------------------------------------------------
    def num_free(self) -> int:
        """Blocks a sequence may take now: never used, or cached and held by nobody."""
        return len(self._fresh) + (self.cache.num_idle() if self.cache else 0)

    def num_used(self) -> int:
        return self.num_blocks - self.num_free()

    def num_cached_idle(self) -> int:
        """Free blocks that still hold a cached prefix (the first to go are the oldest)."""
        return self.cache.num_idle() if self.cache else 0

    def free_blocks(self) -> list[int]:
        """The free block ids, sorted (for invariant checks and metrics)."""
        idle = self.cache.idle_blocks() if self.cache else []
        return sorted(self._fresh + idle)

    def num_sequences(self) -> int:
        return len(self._tables)

    def has(self, seq_id: int) -> bool:
        return seq_id in self._tables

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    def num_free_states(self) -> int:
        return len(self._free_states)

    def state_slot(self, seq_id: int) -> int:
        """`seq_id`'s recurrent-state slot; -1 when the plan has no state (or it holds none)."""
        return self._state_of.get(seq_id, -1)

    def _needs_state(self, seq_id: int) -> bool:
        return self.num_state_slots > 0 and seq_id not in self._tables

    # -- allocation --------------------------------------------------------------------------
    def find_prefix(self, tokens: Sequence[int]) -> CachedPrefix:
        """The cached leading full blocks of `tokens`, leaving at least the last token to
        compute (the step that computes it yields the logits of the next one). Changes
        nothing: pass the result to `allocate` to take the blocks."""
        if self.cache is None or len(tokens) < 2:
            return CachedPrefix(block_size=self.block_size, query_tokens=len(tokens))
        keys = block_keys(tokens[: len(tokens) - 1], self.block_size)
        blocks = self.cache.lookup(keys)
        if self.num_state_slots:  # only as far as a state checkpoint reaches, and whole blocks
            state = -1
            while blocks and (state := self.checkpoints.find(keys[len(blocks) - 1]) if self.checkpoints else -1) < 0:
                blocks.pop()
            return CachedPrefix(
                tuple(blocks), tuple(keys[: len(blocks)]), self.block_size, len(tokens), state_from=state
            )
        src, rows = -1, 0
        if self.copy_partial:
            start = len(blocks) * self.block_size
            rest = tokens[start : min(start + self.block_size, len(tokens) - 1)]
            src, rows = self.cache.find_partial(keys[len(blocks) - 1] if blocks else ROOT_KEY, rest)
        return CachedPrefix(tuple(blocks), tuple(keys[: len(blocks)]), self.block_size, len(tokens), src, rows)

    def blocks_needed(self, seq_id: int, total_tokens: int, prefix: CachedPrefix = CachedPrefix()) -> int:
        """Free blocks `seq_id` must take so that its table holds `total_tokens` slots
        (a cached prefix's idle blocks count: taking them removes them from the free pool)."""
        if total_tokens < 0:
            raise ValueError(f"total_tokens must be >= 0, got {total_tokens}")
        wanted = -(-total_tokens // self.block_size)
        table = self._tables.get(seq_id)
        held = len(table.blocks) if table else 0
        if prefix.blocks and table is None:
            idle = sum(1 for b in prefix.blocks if self._refs[b] == 0)
            return idle + max(0, wanted - len(prefix.blocks))
        return max(0, wanted - held)

    def can_allocate(self, seq_id: int, total_tokens: int, prefix: CachedPrefix = CachedPrefix()) -> bool:
        """The blocks fit, and a new sequence of a plan with state finds a free state slot."""
        if self._needs_state(seq_id) and not self._free_states:
            return False
        return self.blocks_needed(seq_id, total_tokens, prefix) <= self.num_free()

    def allocate(self, seq_id: int, total_tokens: int, prefix: CachedPrefix = CachedPrefix()) -> None:
        """Grow (or create) `seq_id`'s table to hold `total_tokens` slots; never shrinks it.
        A new sequence may start with a cached `prefix` from find_prefix (taken by reference)."""
        if prefix.partial_tokens and total_tokens <= prefix.num_tokens:
            raise ValueError(f"sequence {seq_id}: a prefix reused to the token needs a token after it")
        needed = self.blocks_needed(seq_id, total_tokens, prefix)
        if needed > self.num_free():
            raise KVCacheFull(
                f"sequence {seq_id} needs {needed} more blocks for {total_tokens} tokens, "
                f"{self.num_free()} of {self.num_blocks} are free"
            )
        if self._needs_state(seq_id):
            if not self._free_states:
                raise KVCacheFull(f"sequence {seq_id} needs a state slot, all {self.num_state_slots} are held")
            self._state_of[seq_id] = heapq.heappop(self._free_states)
        table = self._tables.get(seq_id)
        new = table is None
        if table is None:
            table = self._tables[seq_id] = _Table()
            self._take_prefix(table, prefix)
        wanted = -(-total_tokens // self.block_size)
        while len(table.blocks) < wanted:
            block = heapq.heappop(self._fresh) if self._fresh else self.cache.evict()
            self._refs[block] = 1
            table.blocks.append(block)
        if new and prefix.state_from >= 0:  # the checkpoint's state into the sequence's slot, before the step
            self._state_copies.append((prefix.state_from, self._state_of[seq_id]))
            self.checkpoints.restored += 1
        if new and prefix.partial_tokens and self.cache is not None:
            # copy-on-write of the source's rows into the sequence's own next block; they stay
            # as they are until the step runs, even if the source was evicted for a block
            # taken here: nothing writes KV before the copies are done
            self._copies.append(KvCopy(prefix.partial_block, table.blocks[len(prefix.blocks)], prefix.partial_tokens))

    def _take_prefix(self, table: _Table, prefix: CachedPrefix) -> None:
        if self.cache is None:
            return
        assert not prefix.blocks or prefix.block_size == self.block_size
        for block in prefix.blocks:
            if self._refs[block] == 0:
                self.cache.hold(block)
            self._refs[block] += 1
        table.blocks.extend(prefix.blocks)
        table.keys.extend(prefix.keys)
        self.cache.hit_tokens += prefix.num_tokens
        self.cache.miss_tokens += prefix.query_tokens - prefix.num_tokens

    def free(self, seq_id: int) -> None:
        """Drop `seq_id`'s references; an unknown id is a no-op. Blocks nobody holds go back
        to the pool, cached ones last block first so that a prefix's head outlives its tail
        (a lookup can only use a block whose predecessors are cached too)."""
        table = self._tables.pop(seq_id, None)
        if table is None:
            return
        state = self._state_of.pop(seq_id, None)
        if state is not None:
            heapq.heappush(self._free_states, state)
        for block in reversed(table.blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0 and not (self.cache and self.cache.release(block)):
                heapq.heappush(self._fresh, block)

    def truncate(self, seq_id: int, total_tokens: int) -> None:
        """Shrink `seq_id`'s table to the blocks holding its first `total_tokens` slots and
        free the rest: the KV of draft tokens the target rejected. Keyed blocks (whole blocks
        of computed tokens) are never dropped; a block the cache knows stays cached."""
        table = self._tables[seq_id]
        wanted = -(-total_tokens // self.block_size)
        if wanted < len(table.keys):
            raise ValueError(
                f"sequence {seq_id}: cannot drop the KV of its {len(table.keys)} keyed blocks to {total_tokens} tokens"
            )
        while len(table.blocks) > wanted:
            block = table.blocks.pop()
            self._refs[block] -= 1
            if self._refs[block] == 0 and not (self.cache and self.cache.release(block)):
                heapq.heappush(self._fresh, block)

    # -- registration --------------------------------------------------------------------------
    def num_keyed_tokens(self, seq_id: int) -> int:
        """Leading tokens of `seq_id` whose blocks are keyed (cached or offered to the cache)."""
        return len(self._tables[seq_id].keys) * self.block_size

    def register(self, seq_id: int, tokens: Sequence[int]) -> None:
        """Offer `seq_id`'s next full blocks to the cache once their KV is computed: `tokens`
        are the tokens from num_keyed_tokens() on, a whole number of blocks."""
        if self.cache is None:
            return
        table = self._tables[seq_id]
        if len(tokens) % self.block_size:
            raise ValueError(f"{len(tokens)} tokens are not whole blocks of {self.block_size}")
        parent = table.keys[-1] if table.keys else ROOT_KEY
        for start in range(0, len(tokens), self.block_size):
            i = len(table.keys)
            if i >= len(table.blocks):
                raise IndexError(f"sequence {seq_id} holds only {i} blocks")
            parent = chain_key(parent, tokens[start : start + self.block_size])
            table.keys.append(parent)
            self.cache.register(table.blocks[i], parent)

    def release_partial(self, seq_id: int, tokens: Sequence[int]) -> None:
        """Before `seq_id` lets go of its blocks: its block after the keyed ones holds the KV
        of `tokens` (fewer than a block) in its first rows; keep it as a copy source for reuse
        to the token (PrefixCache.register_partial). A no-op without copy_partial."""
        if self.cache is None or not self.copy_partial or not tokens:
            return
        table = self._tables[seq_id]
        if len(tokens) >= self.block_size or len(table.keys) >= len(table.blocks):
            raise ValueError(f"sequence {seq_id}: {len(tokens)} tokens are not a partial block after its keyed ones")
        block = table.blocks[len(table.keys)]
        if self._refs[block] == 1:  # only its own (it always is: only keyed blocks are shared)
            self.cache.register_partial(block, table.keys[-1] if table.keys else ROOT_KEY, tokens)

    def checkpoint_state(self, seq_id: int) -> None:
        """Keep `seq_id`'s state as it is now, after its last keyed block, for prompts that share
        those blocks (copied into a checkpoint slot before the next step runs)."""
        table = self._tables[seq_id]
        if self.checkpoints is None or not table.keys or seq_id not in self._state_of:
            return
        slot = self.checkpoints.put(table.keys[-1])
        if slot is not None:
            self._state_copies.append((self._state_of[seq_id], slot))

    def take_state_copies(self) -> list[tuple[int, int]]:
        """The state slot copies (source, destination) due before the next step, in order."""
        copies, self._state_copies = self._state_copies, []
        return copies

    def take_copies(self) -> list[KvCopy]:
        """The row copies allocations since the last call made due; the caller runs them on
        the device before the step's forward pass."""
        copies, self._copies = self._copies, []
        return copies

    # -- lookups -------------------------------------------------------------------------------
    def block_table(self, seq_id: int) -> list[int]:
        """A copy of `seq_id`'s block ids in position order; KeyError for an unknown id."""
        return list(self._tables[seq_id].blocks)

    def slot(self, seq_id: int, position: int) -> int:
        """Index of `position`'s KV slot in the whole pool (block * block_size + offset)."""
        table = self._tables[seq_id].blocks
        block, offset = divmod(position, self.block_size)
        if position < 0 or block >= len(table):
            raise IndexError(
                f"position {position} of sequence {seq_id} is not allocated ({len(table) * self.block_size} slots held)"
            )
        return table[block] * self.block_size + offset
