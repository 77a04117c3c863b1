"""Embeddings of a generative model: its final hidden states (after the output norm, where
llama.cpp takes them), pooled over the input and L2-normalized as OpenAI clients expect.

Pooling: the model's own `<arch>.pooling_type` when its GGUF states one; otherwise `last`
(the last token's state), which is what Ollama returns for a generative model. llama.cpp's
server refuses /v1/embeddings for such a model unless started with `--pooling`; `rfc serve
--pooling` overrides the choice for every model.
"""

from collections.abc import Generator
from contextlib import ExitStack
from enum import Enum

import numpy as np

from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.engine import Engine


class Pooling(Enum):
    MEAN = "mean"  # average over every token
    CLS = "cls"  # the first token
    LAST = "last"  # the last token

    @classmethod
    def parse(cls, name: str) -> "Pooling":
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown pooling '{name}' (expected {', '.join(p.value for p in cls)})") from None


# llama.cpp's enum llama_pooling_type, as GGUF files store it (0 none and 4 rank have no
# sentence embedding: the default applies).
_GGUF_POOLING = {1: Pooling.MEAN, 2: Pooling.CLS, 3: Pooling.LAST}
DEFAULT_POOLING = Pooling.LAST


def model_pooling(manifest: dict, override: Pooling | None = None) -> Pooling:
    """The pooling for a bundle: `override`, else its GGUF's pooling type, else `last`."""
    if override is not None:
        return override
    model = manifest.get("model", {})
    value = model.get("gguf_metadata", {}).get(f"{model.get('architecture')}.pooling_type")
    return _GGUF_POOLING.get(value, DEFAULT_POOLING) if isinstance(value, int) else DEFAULT_POOLING


def pooled_embedding(
    engine: Engine, token_ids: list[int], pooling: Pooling, chunk_tokens: int
) -> Generator[None, None, np.ndarray]:
    """A job (Engine.start_job) whose result is the normalized embedding float32[n_embd] of
    `token_ids`: it runs forward passes on the device, so on the engine thread only. The input
    is fed in chunks of `chunk_tokens`, as a prefill is, one chunk per piece of the job
    (runtime/engine/jobs.py): generation steps run between them."""
    if not token_ids:
        raise ValueError("nothing to embed")
    total = np.zeros(0)
    with engine.reserved_kv(len(token_ids)) as seq_id:
        for start in range(0, len(token_ids), chunk_tokens):
            part = tuple(token_ids[start : start + chunk_tokens])
            every_row = pooling is Pooling.MEAN or (pooling is Pooling.CLS and start == 0)
            batch = build_batch([ScheduledChunk(seq_id, start, part, all_logits=every_row)], engine.blocks)
            hidden = engine.model.executor.forward_hidden(batch).astype(np.float64)
            if pooling is Pooling.MEAN:
                total = hidden.sum(axis=0) + (total if total.size else 0)
            elif pooling is Pooling.CLS and start == 0:
                total = hidden[0]
            elif pooling is Pooling.LAST:
                total = hidden[-1]
            yield  # the engine runs a generation step before the next chunk
    return _normalized(total / len(token_ids) if pooling is Pooling.MEAN else total)


def _normalized(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def _whole_steps(
    engine: Engine, inputs: list[list[int]], step_tokens: int, forward
) -> Generator[list[np.ndarray], None, None]:
    """An encoder's inputs run whole: consecutive inputs share a step, each a sequence of its own,
    up to `step_tokens` tokens (an input longer than that runs alone), as embedding servers batch
    them. Yields, per step, each of its inputs' rows of `forward(batch)` (every token a row)."""
    i = 0
    while i < len(inputs):
        group, n = [inputs[i]], len(inputs[i])
        while i + len(group) < len(inputs) and n + len(inputs[i + len(group)]) <= step_tokens:
            n += len(inputs[i + len(group)])
            group.append(inputs[i + len(group)])
        i += len(group)
        with ExitStack() as stack:
            ids = [stack.enter_context(engine.reserved_kv(len(g))) for g in group]
            chunks = [ScheduledChunk(s, 0, tuple(g), all_logits=True) for s, g in zip(ids, group)]
            rows = forward(build_batch(chunks, engine.blocks))
        ends = np.cumsum([len(g) for g in group])
        yield [rows[end - len(g) : end] for g, end in zip(group, ends)]


def whole_embeddings(
    engine: Engine, inputs: list[list[int]], pooling: Pooling, step_tokens: int
) -> Generator[None, None, list[np.ndarray]]:
    """A job whose result is the normalized embeddings of `inputs` for an encoder (its attention
    sees each input whole), several inputs a step (_whole_steps); other jobs run between the steps."""
    out: list[np.ndarray] = []
    for step in _whole_steps(engine, inputs, step_tokens, engine.model.executor.forward_hidden):
        for rows in step:
            rows = rows.astype(np.float64)
            pooled = rows.mean(axis=0) if pooling is Pooling.MEAN else rows[0] if pooling is Pooling.CLS else rows[-1]
            out.append(_normalized(pooled))
        yield  # the next step's inputs after whatever else the engine has to run
    return out


def rerank_tokens(info: dict, query: list[int], document: list[int]) -> list[int]:
    """A rerank pair as llama-server's format_prompt_rerank lays it out for a model without a
    rerank template: the bundle's tokenizer info's `rerank` layout (compiler/tokenizer/build.py
    rerank_layout: BOS, EOS / SEP as llama.cpp's vocabulary adds them) around the two texts, each
    tokenized without specials."""
    layout = info.get("rerank") or {}
    return [*layout.get("prefix", []), *query, *layout.get("between", []), *document, *layout.get("suffix", [])]


def rerank_prompt(template: str, query: str, document: str) -> str:
    """A rerank pair through a model's rerank template, as llama-server's format_prompt_rerank
    makes it: every "{query}" replaced by the query, then every "{document}" by the document."""
    return template.replace("{query}", query).replace("{document}", document)


def rank_scores(engine: Engine, pairs: list[list[int]], step_tokens: int) -> Generator[None, None, list[float]]:
    """A job whose result is a reranker's relevance score of each pair (rerank_tokens or
    rerank_prompt): its classifier's first output at the pair's first token for an encoder
    (llama.cpp's CLS row) and at its last for a decoder (llama.cpp's rank pooling of a causal
    model), after a softmax over the labels where the plan says so (Qwen3-Reranker's P("yes")),
    several pairs a step (_whole_steps), as an encoder's inputs run."""
    plan = engine.model.bundle.plan
    row = -1 if plan.causal else 0
    out: list[float] = []
    for step in _whole_steps(engine, pairs, step_tokens, engine.model.executor.forward_scores):
        out.extend(_score(rows[row], plan.scores_softmax) for rows in step)
        yield
    return out


def _score(labels: np.ndarray, softmax: bool) -> float:
    """The first label, or its softmax probability in float32 as ggml_soft_max computes it."""
    if not softmax:
        return float(labels[0])
    x = labels.astype(np.float32)
    e = np.exp(x - x.max())
    return float(e[0] / e.sum(dtype=np.float32))
