"""Prefix caching: full KV blocks found again by the tokens they hold and everything before.

A block's key is a chain hash: the digest of its parent block's key and its own tokens, so
one key names a whole prefix and two prompts share a block only when they agree on every
token up to its end (nano-vllm's block_manager.py and vLLM's prefix caching work the same
way). The digest is BLAKE2b, not Python's `hash()`: clients choose the tokens, and a
predictable 64-bit hash would let one client craft a collision that serves another
client's prompt from the wrong KV.

The cache only maps keys to block ids and keeps the blocks no sequence holds in
least-recently-used order; reference counts and the free list stay in the BlockManager,
which evicts from here only when it has no never-used block left.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

ROOT_KEY = b""  # the parent of a sequence's first block
_DIGEST_BYTES = 16


def chain_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The key of a block holding `tokens` after the prefix named by `parent`."""
    h = hashlib.blake2b(parent, digest_size=_DIGEST_BYTES)
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


def block_keys(tokens: Sequence[int], block_size: int, parent: bytes = ROOT_KEY) -> list[bytes]:
    """Chain keys of the full blocks of `tokens` (a trailing partial block has none)."""
    keys = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = chain_key(parent, tokens[start:start + block_size])
        keys.append(parent)
    return keys


class PrefixCache:
    """Key -> block id of full, computed blocks, and the unreferenced ones in LRU order."""

    def __init__(self) -> None:
        self._block_of: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # least recently released first
        self.hit_tokens = 0  # prompt tokens served from the cache, since start
        self.miss_tokens = 0  # prompt tokens that had to be computed
        self.evictions = 0

    def lookup(self, keys: Sequence[bytes]) -> list[int]:
        """Blocks of the longest prefix of `keys` the cache holds."""
        blocks = []
        for key in keys:
            block = self._block_of.get(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def register(self, block: int, key: bytes) -> None:
        """Remember that `block` (held by a sequence) now holds the prefix `key`. A key that
        another block already holds keeps that block: two sequences that computed the same
        prefix at once leave one copy in the cache."""
        if key not in self._block_of and block not in self._key_of:
            self._block_of[key] = block
            self._key_of[block] = key

    def is_idle(self, block: int) -> bool:
        return block in self._idle

    def hold(self, block: int) -> None:
        """A sequence takes an idle cached block: it may not be evicted while held."""
        del self._idle[block]

    def release(self, block: int) -> bool:
        """The last holder let go of `block`: keep it for reuse if it is cached (True), or
        report that it holds nothing worth keeping (False)."""
        if block not in self._key_of:
            return False
        self._idle[block] = None
        return True

    def evict(self) -> int:
        """Forget the least recently used idle block and return its id for reuse."""
        block, _ = self._idle.popitem(last=False)
        del self._block_of[self._key_of.pop(block)]
        self.evictions += 1
        return block

    def num_idle(self) -> int:
        return len(self._idle)

    def idle_blocks(self) -> list[int]:
        return list(self._idle)

    def num_cached(self) -> int:
        """Blocks that hold a known prefix, held by a sequence or idle."""
        return len(self._key_of)
