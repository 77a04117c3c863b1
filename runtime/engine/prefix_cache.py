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

Reuse to the token: the cache also knows each block's parent key and the tokens its computed
rows hold, full blocks and the partial last block a sequence left behind alike. After the
longest run of whole blocks, the child of the last one that agrees longest with what follows
is a copy source: the BlockManager copies those rows into a fresh block of the new sequence
(copy-on-write: the shared block itself is never written), so an exact repeat of a prompt
computes only its last token.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

ROOT_KEY = b""  # the parent of a sequence's first block
_DIGEST_BYTES = 16
_PARTIAL = b"partial:"  # a partial block's key: never equal to a whole block's chain key
MAX_PARTIAL_CANDIDATES = 32  # children of one prefix compared per lookup, at most


def chain_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The key of a block holding `tokens` after the prefix named by `parent`."""
    h = hashlib.blake2b(parent, digest_size=_DIGEST_BYTES)
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


def block_keys(tokens: Sequence[int], block_size: int, parent: bytes = ROOT_KEY) -> list[bytes]:
    """Chain keys of the full blocks of `tokens` (a trailing partial block has none)."""
    keys = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = chain_key(parent, tokens[start : start + block_size])
        keys.append(parent)
    return keys


class PrefixCache:
    """Key -> block id of full, computed blocks, and the unreferenced ones in LRU order."""

    def __init__(self) -> None:
        self._block_of: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # least recently released first
        # (parent key, first token) -> {block: the tokens of its computed rows}: the copy
        # sources of reuse to the token, found by what a prompt continues with
        self._children: dict[tuple[bytes, int], dict[int, tuple[int, ...]]] = {}
        self._child_of: dict[int, tuple[bytes, int]] = {}
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

    def register(self, block: int, key: bytes, parent: bytes | None = None, tokens: Sequence[int] = ()) -> None:
        """Remember that `block` (held by a sequence) now holds the prefix `key`. A key that
        another block already holds keeps that block: two sequences that computed the same
        prefix at once leave one copy in the cache. With `parent` and its `tokens`, the block
        is also a copy source for reuse to the token (find_partial)."""
        if key not in self._block_of and block not in self._key_of:
            self._block_of[key] = block
            self._key_of[block] = key
            if parent is not None and tokens:
                where = (parent, int(tokens[0]))
                self._children.setdefault(where, {})[block] = tuple(tokens)
                self._child_of[block] = where

    def register_partial(self, block: int, parent: bytes, tokens: Sequence[int]) -> None:
        """Remember the partial last block a sequence lets go of: its first len(tokens) rows
        hold `tokens` after the prefix `parent`. It is a copy source only (no whole-block
        lookup can find it), kept and evicted like any cached block."""
        if tokens:
            self.register(block, chain_key(_PARTIAL + parent, tokens), parent, tokens)

    def find_partial(self, parent: bytes, tokens: Sequence[int]) -> tuple[int, int]:
        """(block, n): a child of `parent` whose first n computed rows hold tokens[:n], n as
        large as the first MAX_PARTIAL_CANDIDATES children that start with tokens[0] offer
        (a bound: clients choose how many continuations of one prefix the cache holds);
        (-1, 0) if none."""
        best, best_n = -1, 0
        if not tokens:
            return best, best_n
        candidates = self._children.get((parent, int(tokens[0])), {})
        for block, held in itertools.islice(candidates.items(), MAX_PARTIAL_CANDIDATES):
            n = 1
            while n < len(held) and n < len(tokens) and held[n] == tokens[n]:
                n += 1
            if n > best_n:
                best, best_n = block, n
                if n == len(tokens):
                    break
        return best, best_n

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
        where = self._child_of.pop(block, None)
        if where is not None:
            children = self._children[where]
            del children[block]
            if not children:
                del self._children[where]
        self.evictions += 1
        return block

    def num_idle(self) -> int:
        return len(self._idle)

    def idle_blocks(self) -> list[int]:
        return list(self._idle)

    def num_cached(self) -> int:
        """Blocks that hold a known prefix, held by a sequence or idle."""
        return len(self._key_of)
