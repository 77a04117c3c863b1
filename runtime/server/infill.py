"""Fill-in-the-middle: OpenAI's `suffix` on /v1/completions and llama-server's `/infill`.

The prompt is laid out in the model's own FIM tokens, prefix-suffix-middle as llama.cpp
does: `<FIM_PRE>prefix<FIM_SUF>suffix<FIM_MID>` (and /infill's `prompt` after it, the start
of the middle). The tokens are found in the vocabulary by the names the model families give
them (StarCoder's and SmolLM's `<fim_prefix>`, Qwen's `<|fim_prefix|>`, DeepSeek's
`<｜fim▁begin｜>`, CodeLlama's `<PRE>`...); a model without all three is a 400."""

from dataclasses import dataclass

import falcon

from rfc.runtime.engine.engine import GenerationRequest
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.server.api_fields import MODEL
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind, RequestFields, RequestModel
from rfc.runtime.server.generation import BodyResource, generation_operations, run
from rfc.runtime.server.llama_completion import SAMPLING, answer_with, max_tokens, sampling, stop_strings
from rfc.runtime.server.served_models import ServedModel
from rfc.runtime.server.response_schemas import LLAMA_COMPLETION_EVENT, LLAMA_COMPLETION_REPLY, streamed

# (prefix, suffix, middle) token names, one row per family, as llama.cpp's vocabulary loader knows them
FIM_NAMES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    ("<PRE>", "<SUF>", "<MID>"),
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),
    ("<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"),
    ("<|prefix|>", "<|suffix|>", "<|middle|>"),
)


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int


def fim_tokens(served: ServedModel) -> FimTokens | None:
    tokenizer = served.model.tokenizer
    for names in FIM_NAMES:
        ids = [tokenizer.token_to_id(n) for n in names]
        if all(i is not None for i in ids):
            return FimTokens(*ids)
    return None


def fim_prompt(served: ServedModel, prefix: str, suffix: str, middle: str = "", field: str = "suffix") -> list[int]:
    """The token ids of a fill-in-the-middle prompt (a 400 naming `field` without FIM tokens)."""
    fim = fim_tokens(served)
    if fim is None:
        raise bad_request(
            "this model has no fill-in-the-middle tokens (<fim_prefix>, <fim_suffix>, <fim_middle> "
            "or its family's own)",
            field,
        )
    encode = served.model.tokenizer.encode
    bos = (
        [served.model.tokenizer_info["bos_id"]]
        if served.model.tokenizer_info.get("add_bos") and served.model.tokenizer_info.get("bos_id") is not None
        else []
    )
    ids = [
        *bos,
        fim.prefix,
        *encode(prefix, add_special_tokens=False).ids,
        fim.suffix,
        *encode(suffix, add_special_tokens=False).ids,
        fim.middle,
    ]
    if middle:
        ids += encode(middle, add_special_tokens=False).ids
    return ids


# -- llama-server's /infill --------------------------------------------------------------------
_EXTRA = {
    "type": "array",
    "items": {"type": "object", "properties": {"filename": {"type": "string"}, "text": {"type": "string"}}},
}
INFILL = RequestModel(
    "InfillRequest",
    (
        MODEL,
        Field("input_prefix", Kind.STRING, "", description="the code before the hole"),
        Field("input_suffix", Kind.STRING, "", description="the code after the hole"),
        Field("input_extra", Kind.JSON, [], schema=_EXTRA, description="other files' text, before the prefix"),
        Field("prompt", Kind.STRING, "", description="the start of the middle"),
        *SAMPLING,
    ),
    example={"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n", "n_predict": 16},
)


def infill_request(f: RequestFields, served: ServedModel) -> GenerationRequest:
    extra = f.raw("input_extra")
    if not isinstance(extra, list) or not all(
        isinstance(c, dict) and isinstance(c.get("text", ""), str) for c in extra
    ):
        raise bad_request("'input_extra' must be a list of {'filename', 'text'} objects", "input_extra")
    context = "".join(c.get("text", "") for c in extra)
    ids = fim_prompt(
        served, context + f.string("input_prefix"), f.string("input_suffix"), f.string("prompt"), "input_prefix"
    )
    return GenerationRequest(
        prompt_ids=ids,
        params=SamplingParams(**sampling(f)),
        max_tokens=max_tokens(f, served, ids),
        stop=stop_strings(f),
    )


class InfillResource(BodyResource):
    """llama-server's /infill: code completion between `input_prefix` and `input_suffix`."""

    model = INFILL
    operations = generation_operations(
        "Fill in the middle", INFILL, streamed(LLAMA_COMPLETION_REPLY, LLAMA_COMPLETION_EVENT)
    )

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        run(served, infill_request(f, served), req, resp, f.boolean("stream"), answer_with(served, f))
