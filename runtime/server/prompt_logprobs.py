"""The log-probabilities of a prompt's own tokens (OpenAI's `echo` with `logprobs`): one
forward pass over the prompt with a logit row for every token, on the engine thread in pieces
that take turns with generation steps (as an embedding's: runtime/engine/jobs.py). Row i is the model's
distribution for token i+1; the first token has none (null, as OpenAI answers)."""

from collections.abc import Generator

import numpy as np

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.engine import Engine
from rfc.runtime.engine.jobs import JOB_TOKENS
from rfc.runtime.server.served_models import ServedModel
from rfc.runtime.server.jobs import Deadline, run_job

_TIMEOUT_S = 300.0
# Logits held at once (rows x vocabulary): a chunk of 512 tokens of a 152k
# vocabulary would be 300 MB of float32, twice that as the float64 of the softmax.
_MAX_LOGITS = 8 << 20


def prompt_logprobs(served: ServedModel, ids: list[int], top: int) -> list[tuple[int, float | None, tuple]]:
    """(token, its logprob, the top `top` (token, logprob)) for each prompt token."""
    engine = served.engine
    chunk = max(1, min(JOB_TOKENS, _MAX_LOGITS // served.model.vocab_size))
    deadline = Deadline(_TIMEOUT_S, "the prompt's logprobs")
    return run_job(
        engine, lambda: _forward(engine, ids, top, chunk), deadline, lambda: f"a prompt of {len(ids)} tokens"
    )


def _forward(
    engine: Engine, ids: list[int], top: int, chunk: int
) -> Generator[None, None, list[tuple[int, float | None, tuple]]]:
    out: list[tuple[int, float | None, tuple]] = [(ids[0], None, ())]
    with engine.reserved_kv(len(ids)) as seq_id:
        for start in range(0, len(ids) - 1, chunk):  # the last token predicts nothing of the prompt
            part = tuple(ids[start : start + chunk])
            batch = build_batch([ScheduledChunk(seq_id, start, part, all_logits=True)], engine.blocks)
            logits = np.asarray(engine.model.executor.forward(batch), dtype=np.float64)
            shifted = logits - logits.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            for row in range(len(part)):
                position = start + row + 1
                if position >= len(ids):
                    break
                token = ids[position]
                best = np.argsort(-logp[row])[:top] if top else []
                out.append((token, float(logp[row, token]), tuple((int(t), float(logp[row, t])) for t in best)))
            yield  # a job's piece (runtime/engine/jobs.py): a generation step runs before the next chunk
    return out
