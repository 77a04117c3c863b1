"""Prefix caching for models with recurrent state: checkpoints of a sequence's state at a
block boundary, keyed like the prefix cache's blocks.

A cached KV prefix alone cannot skip a hybrid model's prefill: the recurrent layers' state
after the prefix is not in the KV pages. So when a sequence's prefill reaches one of a few
block boundaries of its prompt (checkpoint_points; the scheduler ends a chunk at each), the
engine copies its state slot into a checkpoint slot, keyed by the chain key of the block that
ends there (prefix_cache.py). A later prompt whose cached blocks reach that key takes the
blocks up to it and a copy of the checkpoint into its own slot, and prefills only what follows.

Not a state per block (a Gated-DeltaNet model's state is megabytes): the prompt's last block
boundary, which a repeated prompt or the next turn of a chat (whose prompt extends the last
one) finds, and the boundaries CHECKPOINT_TAILS tokens before it, which a prompt that repeats
a long document or conversation with another last question or an edited last message finds.
llama-server's checkpoints serve the same purpose (one before the prompt's last batch of 512).

Checkpoint slots are slots of the device's state pool after the sequences' own; they are
reused least recently used first. A checkpoint is only found through cached KV blocks, so an
evicted block makes its checkpoints unreachable (their slots age out).
"""

from __future__ import annotations

from collections import OrderedDict


class StateCheckpoints:
    """Chain key -> checkpoint slot, for `count` slots from `first` on, least recently used first."""

    def __init__(self, first: int, count: int) -> None:
        self._free = list(range(first + count - 1, first - 1, -1))  # popped lowest first
        self._slots: OrderedDict[bytes, int] = OrderedDict()
        self.saved = 0  # checkpoints written, since start
        self.restored = 0  # prefixes resumed from one

    def find(self, key: bytes) -> int:
        """The slot holding the state after the block `key` names; -1 when none does."""
        slot = self._slots.get(key, -1)
        if slot >= 0:
            self._slots.move_to_end(key)
        return slot

    def put(self, key: bytes) -> int | None:
        """A slot for the state after `key` (the least recently used one when none is free), or
        None when `key` already has one (the state after a prefix is the prefix's: keep it)."""
        if key in self._slots:
            self._slots.move_to_end(key)
            return None
        slot = self._free.pop() if self._free else self._slots.popitem(last=False)[1]
        self._slots[key] = slot
        self.saved += 1
        return slot

    def __len__(self) -> int:
        return len(self._slots)


# How far before a prompt's end its state is checkpointed too: a different question of up to
# about 64 tokens after a repeated document, an edited last message of up to about 512.
CHECKPOINT_TAILS = (64, 512)


def checkpoint_points(prompt_tokens: int, block_size: int) -> tuple[int, ...]:
    """Where a prompt's state is checkpointed, ascending: its last block boundary before its last
    token (find_prefix always leaves that token to compute) and the block boundaries at least
    CHECKPOINT_TAILS tokens before that token; () for a prompt too short for one."""
    points = {(prompt_tokens - 1 - tail) // block_size * block_size for tail in (0, *CHECKPOINT_TAILS)}
    return tuple(sorted(p for p in points if p > 0))


def first_point_inside(points: tuple[int, ...], start: int, n: int) -> int:
    """n tokens from `start` on, cut to end at the first checkpoint point strictly inside them."""
    return next((p - start for p in points if start < p < start + n), n)
