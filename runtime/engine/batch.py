"""One forward step's inputs: the tokens of several sequences, flattened.

Built from chunks (the scheduler's, or a caller's that drives the executor itself: an
embedding, a benchmark) and the KV block tables; every device reads the same arrays, so how a
batch is laid out is decided once, here.
"""

from dataclasses import dataclass

import numpy as np

from rfc.runtime.core.step import StepBatch
from rfc.runtime.engine.kv_cache import BlockManager


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens `tokens` of sequence `seq_id`, the first at position `start`. The scheduler's
    start where the sequence's computed tokens end; a caller that drives the executor itself
    (an embedding, a benchmark, a test) makes its own."""

    seq_id: int
    start: int
    tokens: tuple[int, ...]
    needs_logits: bool = True  # the chunk's last token gets a logit row (the engine samples it)
    all_logits: bool = False  # a logit row for every token of the chunk (teacher forcing, echo)
    # speculative decoding: the last `num_drafts` tokens are drafts the step verifies; every
    # token of the chunk then gets a logit row (row i: the target's next token after token i)
    num_drafts: int = 0

    @property
    def num_rows(self) -> int:
        """The logit rows this chunk gets in a step."""
        if self.all_logits or self.num_drafts:
            return len(self.tokens)
        return 1 if self.needs_logits else 0


def build_batch(chunks: list[ScheduledChunk], blocks: BlockManager) -> StepBatch:
    """Lays out chunks in order; KV blocks must already be allocated for them."""
    tokens, positions, slots, seq_of_token, rows = [], [], [], [], []
    seq_start = [0]
    tables, lens, state_slots = [], [], []
    for s, c in enumerate(chunks):
        if not c.tokens:
            raise ValueError(f"empty chunk for sequence {c.seq_id}")
        table = blocks.block_table(c.seq_id)
        for i, tok in enumerate(c.tokens):
            pos = c.start + i
            tokens.append(tok)
            positions.append(pos)
            slots.append(table[pos // blocks.block_size] * blocks.block_size + pos % blocks.block_size)
            seq_of_token.append(s)
        rows.extend(range(len(tokens) - c.num_rows, len(tokens)))
        seq_start.append(len(tokens))
        tables.append(table)
        lens.append(c.start + len(c.tokens))
        state_slots.append(blocks.state_slot(c.seq_id))
    width = max(len(t) for t in tables)
    block_tables = np.full((len(chunks), width), -1, dtype=np.int32)
    for s, t in enumerate(tables):
        block_tables[s, : len(t)] = t
    i32 = np.int32
    return StepBatch(
        tokens=np.asarray(tokens, dtype=i32),
        positions=np.asarray(positions, dtype=i32),
        slots=np.asarray(slots, dtype=i32),
        seq_of_token=np.asarray(seq_of_token, dtype=i32),
        seq_start=np.asarray(seq_start, dtype=i32),
        block_tables=block_tables,
        context_lens=np.asarray(lens, dtype=i32),
        logit_rows=np.asarray(rows, dtype=i32),
        block_size=blocks.block_size,
        state_slots=np.asarray(state_slots, dtype=i32),
    )
