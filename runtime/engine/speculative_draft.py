"""A draft model for speculative decoding (`--spec-type draft --model-draft SMALL`): a second,
smaller bundle with the target's vocabulary, run on the same device by the engine thread.

It keeps its own KV pool and block tables, keyed by the target's sequence ids. Before drafting
for a sequence it catches up on the tokens the target accepted since (the tokens its KV holds
that the sequence no longer has, rejected drafts, are dropped first), then draws greedily one
token per step: a draft model's greedy token is a point mass, which is what the target's
verify walk (runtime/engine/speculative.py `accept`) needs for the output to keep the target's distribution.
All sequences drafting in a step share each of the draft model's forward steps.
"""

from __future__ import annotations

import numpy as np

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.assemble import LoadedModel

# Tokens of catch-up per forward step at most (a sequence's first draft feeds its whole prompt).
CATCH_UP_TOKENS = 512


class DraftModel:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        pool = model.kv_pool
        self.blocks = BlockManager(pool.num_blocks, pool.block_size, prefix_caching=False)
        self._held: dict[int, list[int]] = {}  # sequence id -> the tokens whose KV this model holds

    def propose(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        """Greedy drafts: `wanted` maps a sequence id to (its tokens, drafts wanted). A
        sequence whose KV does not fit the draft pool, or whose drafts would pass the draft
        model's context length, gets none."""
        last: dict[int, int] = {}  # sequence id -> its position whose logits draw the next draft
        chunks: list[ScheduledChunk] = []
        for seq_id, (tokens, n) in wanted.items():
            if n < 1 or not tokens:
                continue
            if len(tokens) + n - 1 > self.model.context_length:
                # past the draft model's own context (it may be shorter than the target's):
                # its device has no room for those positions, so this sequence drafts no more
                self.release_one(seq_id)
                continue
            keep = self._sync(seq_id, tokens)
            if not self._fits(seq_id, len(tokens) + n - 1, wanted):
                self.release_one(seq_id)
                continue
            for start in range(keep, len(tokens), CATCH_UP_TOKENS):
                part = tuple(tokens[start : start + CATCH_UP_TOKENS])
                chunks.append(ScheduledChunk(seq_id, start, part, needs_logits=start + len(part) == len(tokens)))
            self._held[seq_id] = list(tokens)
            last[seq_id] = len(tokens)
        drafts: dict[int, list[int]] = {seq_id: [] for seq_id in last}
        picks = self._forward_chunks(chunks)
        for step in range(max((wanted[s][1] for s in last), default=0)):
            for seq_id, token in picks.items():
                drafts[seq_id].append(token)
            going = [s for s in picks if len(drafts[s]) < wanted[s][1]]
            if not going:
                break
            feed = []
            for seq_id in going:
                token = drafts[seq_id][-1]
                feed.append(ScheduledChunk(seq_id, last[seq_id], (token,)))
                self._held[seq_id].append(token)
                last[seq_id] += 1
            picks = self._forward_chunks(feed)
        return drafts

    def release(self, live: set[int]) -> None:
        """Frees the KV of every sequence not in `live` (ended or cancelled)."""
        for seq_id in [s for s in self._held if s not in live]:
            self.release_one(seq_id)

    def release_one(self, seq_id: int) -> None:
        self._held.pop(seq_id, None)
        self.blocks.free(seq_id)

    def _sync(self, seq_id: int, tokens: list[int]) -> int:
        """Drops the KV of the tokens the sequence no longer has (rejected drafts); returns how
        many leading tokens keep theirs (never the last: its logits draw the first draft)."""
        held = self._held.get(seq_id, [])
        keep = 0
        limit = min(len(held), len(tokens) - 1)
        while keep < limit and held[keep] == tokens[keep]:
            keep += 1
        del held[keep:]
        if self.blocks.has(seq_id):
            self.blocks.truncate(seq_id, keep)
        return keep

    def _fits(self, seq_id: int, total: int, wanted: dict) -> bool:
        """Makes room for `total` tokens of `seq_id`, dropping sequences not drafting now."""
        for other in list(self._held):
            if self.blocks.can_allocate(seq_id, total):
                break
            if other != seq_id and other not in wanted:
                self.release_one(other)
        if not self.blocks.can_allocate(seq_id, total):
            return False
        self.blocks.allocate(seq_id, total)
        return True

    def _forward_chunks(self, chunks: list[ScheduledChunk]) -> dict[int, int]:
        """Runs the chunks (in steps of at most CATCH_UP_TOKENS tokens); the greedy token of
        each chunk that wants logits, by sequence id."""
        picks: dict[int, int] = {}
        i = 0
        while i < len(chunks):
            step, size = [], 0
            while i < len(chunks) and (not step or size + len(chunks[i].tokens) <= CATCH_UP_TOKENS):
                step.append(chunks[i])
                size += len(chunks[i].tokens)
                i += 1
            logits = self.model.executor.forward(build_batch(step, self.blocks))
            rows = [c for c in step if c.needs_logits]
            for chunk, row in zip(rows, logits):
                picks[chunk.seq_id] = int(np.argmax(row))
        return picks
