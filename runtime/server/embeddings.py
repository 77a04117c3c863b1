"""Embeddings for the HTTP APIs (OpenAI /v1/embeddings, Ollama /api/embed): inputs encoded,
checked against the context, run on the model's engine thread in pieces of JOB_TOKENS tokens
that take turns with generation steps (runtime/engine/jobs.py), pooled and normalized
(runtime/engine/embedding.py says how). A request past its deadline gets a 503 saying so."""

from dataclasses import dataclass

import numpy as np

from rfc.runtime.engine.embedding import Pooling, model_pooling, pooled_embedding, whole_embeddings
from rfc.runtime.engine.jobs import JOB_TOKENS
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.generation import check_token_ids
from rfc.runtime.server.served_models import ServedModel
from rfc.runtime.server.jobs import Deadline, run_job

MAX_INPUTS = 2048  # OpenAI's limit per request
_TIMEOUT_S = 300.0  # one request's embeddings, all inputs together
_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}}
# What encode_inputs takes, for the request models: a string, token ids, or a list of either.
INPUTS = {
    "anyOf": [
        {"type": "string"},
        {**_IDS, "minItems": 1},
        {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": {"anyOf": [{"type": "string"}, _IDS]}},
    ]
}


@dataclass(frozen=True)
class Embeddings:
    vectors: list[np.ndarray]
    prompt_tokens: int


def encode_inputs(served: ServedModel, raw: object, field: str) -> list[list[int]]:
    """Token ids for each input: a string, a list of strings, a list of token ids, or a list
    of such lists (OpenAI accepts all four)."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise bad_request(f"'{field}' must be a non-empty string or list", field)
    if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        raw = [raw]  # one input given as token ids
    if len(raw) > MAX_INPUTS:
        raise bad_request(f"'{field}' holds {len(raw)} inputs; at most {MAX_INPUTS} per request", field)
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            out.append(served.prompts.encode(item, f"{field}[{i}]"))
        elif isinstance(item, list):
            out.append(check_token_ids(served, item, f"{field}[{i}]"))
        else:
            raise bad_request(f"'{field}[{i}]' must be a string or a list of token ids", f"{field}[{i}]")
        if not out[-1]:
            raise bad_request(f"'{field}[{i}]' is empty", f"{field}[{i}]")
    return out


def embed(
    served: ServedModel, inputs: list[list[int]], pooling: Pooling | None, truncate: bool, field: str
) -> Embeddings:
    ctx = served.model.context_length
    for i, ids in enumerate(inputs):
        if len(ids) > ctx and not truncate:
            raise bad_request(f"'{field}[{i}]' has {len(ids)} tokens, more than the context length ({ctx})", field)
    inputs = [ids[:ctx] for ids in inputs]
    chosen = model_pooling(served.model.manifest, pooling)
    engine = served.engine
    vectors: list[np.ndarray] = []
    deadline = Deadline(_TIMEOUT_S, f"the embedding of {len(inputs)} input{'s' if len(inputs) > 1 else ''}")
    if served.model.whole_inputs:  # an encoder: inputs whole, several to a step
        vectors = run_job(
            engine,
            lambda: whole_embeddings(engine, inputs, chosen, JOB_TOKENS),
            deadline,
            lambda: f"{len(inputs)} inputs, batched",
        )
        return Embeddings(vectors, sum(len(ids) for ids in inputs))
    for ids in inputs:  # one job per input: a request past its deadline stops asking for more
        vectors.append(
            run_job(
                engine,
                lambda ids=ids: pooled_embedding(engine, ids, chosen, JOB_TOKENS),
                deadline,
                lambda: f"{len(vectors)} of {len(inputs)} embedded",
            )
        )
    return Embeddings(vectors, sum(len(ids) for ids in inputs))


def shorten(vector: np.ndarray, dimensions: int | None, field: str) -> np.ndarray:
    """The first `dimensions` components, normalized again (Matryoshka-style, as OpenAI's
    and Ollama's `dimensions`)."""
    if dimensions is None:
        return vector
    if not 1 <= dimensions <= len(vector):
        raise bad_request(f"'{field}' must be in [1, {len(vector)}]", field)
    cut = vector[:dimensions].astype(np.float64)
    norm = float(np.linalg.norm(cut))
    return (cut / norm if norm > 0 else cut).astype(np.float32)
