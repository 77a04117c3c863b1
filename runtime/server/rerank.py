"""Reranking, as llama-server `--reranking` answers it: POST /rerank, /reranking, /v1/rerank and
/v1/reranking. A `query` and `documents` (Jina's and Cohere's shape) or `texts` (Hugging Face TEI's);
each pair laid out as llama-server lays it (runtime/engine/embedding.py: rerank_prompt through the
model's rerank template where it has one, else rerank_tokens) and scored by the model's classifier
head (a reranker: a bert with `cls` / `cls.output` and rank pooling, the raw score; a Qwen3-Reranker,
its "yes"/"no" head's P("yes")), sorted best first and cut to `top_n`. Jina's reply: {model, object, usage, results:
[{index, relevance_score, document?}]}; TEI's: [{index, score, text?}]. A model without a classifier
is a 400 naming `model`."""

import falcon

from rfc.runtime.engine.embedding import rank_scores, rerank_prompt, rerank_tokens
from rfc.runtime.engine.jobs import JOB_TOKENS
from rfc.runtime.server import response_schemas as replies
from rfc.runtime.server.api_fields import MODEL
from rfc.runtime.server.embeddings import MAX_INPUTS
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind, RequestFields, RequestModel
from rfc.runtime.server.generation import BodyResource
from rfc.runtime.server.jobs import Deadline, run_job
from rfc.runtime.server.openapi import MODEL_ERRORS, Operation, Routes
from rfc.runtime.server.served_models import EngineHandle, ServedModel

_TIMEOUT_S = 300.0  # one request's pairs, all together
# The text one request's pairs put through a rerank template, the query once per document: a long
# query with many short documents would otherwise ask for the body's size times 2048 of tokenizing.
MAX_TEMPLATED_CHARS = 1 << 24
_DOCUMENT = {"anyOf": [{"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}}]}
_DOCUMENTS = {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": _DOCUMENT}
RERANK = RequestModel(
    "RerankRequest",
    (
        MODEL,
        Field("query", Kind.STRING, required=True, description="what the documents are ranked against"),
        Field("documents", Kind.JSON, schema=_DOCUMENTS, description="Jina's and Cohere's: strings or {text}"),
        Field("texts", Kind.JSON, schema=_DOCUMENTS, description="Hugging Face TEI's: the reply is TEI's list"),
        Field("top_n", Kind.INTEGER, description="the best N results (default: all)"),
        Field("return_documents", Kind.BOOLEAN, False, description="each result with its document"),
        Field("return_text", Kind.BOOLEAN, False, description="TEI's: each result with its text"),
    ),
    example={"query": "What is a panda?", "documents": ["hi", "The giant panda is a bear native to China."]},
)


def add_routes(routes: Routes, handle: EngineHandle, config) -> None:
    for path in ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking"):
        routes.add(path, RerankResource(handle, config))


def _texts(raw: object, field: str) -> list[str]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_INPUTS:
        raise bad_request(f"'{field}' must be a list of 1 to {MAX_INPUTS} documents", field)
    out = []
    for i, doc in enumerate(raw):
        text = doc.get("text") if isinstance(doc, dict) else doc
        if not isinstance(text, str):
            raise bad_request(f"'{field}[{i}]' must be a string or an object with a string 'text'", f"{field}[{i}]")
        out.append(text)
    return out


class RerankResource(BodyResource):
    model = RERANK
    operations = {
        "post": Operation("Rerank documents against a query", RERANK, {replies.JSON: replies.RERANK}, MODEL_ERRORS)
    }

    any_name_if_single = True

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        if not served.model.ranks:
            raise bad_request(
                f"model '{served.model_id}' is not a reranker (no classifier head with rank pooling)", "model"
            )
        tei = f.raw("texts") is not None
        if tei == (f.raw("documents") is not None):
            raise bad_request("send 'documents' (or TEI's 'texts'), one of them", "documents")
        field = "texts" if tei else "documents"
        texts = _texts(f.raw(field), field)
        top_n = f.integer("top_n")
        if top_n is not None and top_n < 1:
            raise bad_request("'top_n' must be at least 1", "top_n")
        tokenizer, info = served.model.tokenizer, served.model.tokenizer_info
        template = (info.get("rerank") or {}).get("template")
        if template is not None:  # the model's own prompt around the two texts (Qwen3-Reranker)
            query = f.string("query")
            size = len(texts) * (len(template) + len(query)) + sum(map(len, texts))
            if size > MAX_TEMPLATED_CHARS:
                raise bad_request(
                    f"the query in each of the {len(texts)} pairs makes {size} characters to tokenize, more than "
                    f"{MAX_TEMPLATED_CHARS}: send a shorter query or fewer documents",
                    "query",
                )
            pairs = [_encode(tokenizer, rerank_prompt(template, query, text)) for text in texts]
        else:
            query = _encode(tokenizer, f.string("query"))
            pairs = [rerank_tokens(info, query, _encode(tokenizer, text)) for text in texts]
        ctx = served.model.context_length
        for i, ids in enumerate(pairs):
            if len(ids) > ctx:
                raise bad_request(
                    f"'{field}[{i}]' with the query is {len(ids)} tokens, more than the context length ({ctx})",
                    f"{field}[{i}]",
                )
        engine = served.engine
        deadline = Deadline(_TIMEOUT_S, f"the reranking of {len(pairs)} document{'s' if len(pairs) > 1 else ''}")
        scores = run_job(engine, lambda: rank_scores(engine, pairs, JOB_TOKENS), deadline, lambda: "pairs batched")
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: top_n or len(scores)]
        if tei:
            text = f.boolean("return_text")
            resp.media = [{"index": i, "score": scores[i], **({"text": texts[i]} if text else {})} for i in order]
            return
        docs = f.boolean("return_documents")
        n = sum(len(ids) for ids in pairs)
        resp.media = {
            "model": served.model_id,
            "object": "list",
            "usage": {"prompt_tokens": n, "total_tokens": n},
            "results": [
                {"index": i, "relevance_score": scores[i], **({"document": {"text": texts[i]}} if docs else {})}
                for i in order
            ],
        }


def _encode(tokenizer, text: str) -> list[int]:
    """A text's ids without special tokens (llama-server's tokenize_input_subprompt, add_special false)."""
    return tokenizer.encode(text, add_special_tokens=False).ids
