"""One forward step's inputs (`StepBatch`): the tokens of several sequences, flattened, and
their KV block tables. Every device reads the same arrays; the engine lays a batch out
(runtime/engine/batch.py `build_batch`)."""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StepBatch:
    tokens: np.ndarray  # int32[T]
    positions: np.ndarray  # int32[T]
    slots: np.ndarray  # int32[T]: KV-cache slot (block * block_size + offset) of each token
    seq_of_token: np.ndarray  # int32[T]: row of `block_tables` / `context_lens`
    seq_start: np.ndarray  # int32[S+1]: tokens of sequence s are [seq_start[s], seq_start[s+1])
    block_tables: np.ndarray  # int32[S, max_blocks], -1 padded
    context_lens: np.ndarray  # int32[S]: cached tokens after this step
    logit_rows: np.ndarray  # int32[R]: rows of T whose logits are wanted
    block_size: int
    # int32[S]: each sequence's recurrent-state slot (artifacts/plan.py StateSpec); -1: it has
    # none (a plan without state). Empty when the batch was built without a block manager.
    state_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_rows(self) -> int:
        return len(self.logit_rows)
