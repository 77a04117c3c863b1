"""Fill-in-the-middle: OpenAI's `suffix` on /v1/completions and llama-server's `/infill`.

The prompt is laid out in the model's own FIM tokens, prefix-suffix-middle as llama.cpp
does: `<FIM_PRE>prefix<FIM_SUF>suffix<FIM_MID>` (and /infill's `prompt` after it, the start
of the middle). The tokens are found in the vocabulary by the names the model families give
them (StarCoder's and SmolLM's `<fim_prefix>`, Qwen's `<|fim_prefix|>`, DeepSeek's
`<｜fim▁begin｜>`, CodeLlama's `<PRE>`...); a model without all three is a 400."""

from dataclasses import dataclass

import falcon

from rfc.runtime.engine.budget import BudgetRule, PastContext
from rfc.runtime.engine.engine import EOS, FAILED, LENGTH, STOP, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.server.api_fields import MAX_STOP_STRINGS, MODEL, SEED, TEMPERATURE, TOP_K, TOP_P
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import Field, Kind, RequestFields, RequestModel
from rfc.runtime.server.generation import Answer, BodyResource, budget, generation_operations, run
from rfc.runtime.server.served_models import ServedModel
from rfc.runtime.server.response_schemas import INFILL_EVENT, INFILL_REPLY, streamed
from rfc.runtime.server.streaming import SseRenderer, sse

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
        Field("n_predict", Kind.INTEGER, -1, -1, description="tokens to generate; -1: until the context is full"),
        TEMPERATURE.but(default=0.8, maximum=1e4),
        TOP_K.but(default=40, minimum=0),
        TOP_P.but(default=0.95),
        Field("min_p", Kind.NUMBER, 0.05, 0.0, 1.0),
        SEED,
        Field(
            "stop",
            Kind.JSON,
            [],
            schema={"type": "array", "maxItems": MAX_STOP_STRINGS, "items": {"type": "string", "minLength": 1}},
        ),
        Field("stream", Kind.BOOLEAN, False, description="SSE: one {content, stop} event per piece"),
    ),
    example={"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n", "n_predict": 16},
)
# n_predict past the context stops at it, as llama-server's does
BUDGET = BudgetRule(past_context=PastContext.CLAMP)
STOP_TYPES = {EOS: "eos", STOP: "word", LENGTH: "limit"}


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
    stops = f.raw("stop")
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"'stop' must be a list of at most {MAX_STOP_STRINGS} non-empty strings", "stop")
    n = f.integer("n_predict")
    params = SamplingParams(
        temperature=f.number("temperature"),
        top_k=f.integer("top_k"),
        top_p=f.number("top_p"),
        min_p=f.number("min_p"),
        seed=f.integer("seed"),
    )
    return GenerationRequest(
        prompt_ids=ids, params=params, max_tokens=budget(served, BUDGET, n if n > 0 else None, ids), stop=tuple(stops)
    )


class InfillReply:
    """llama-server's completion objects: `content`, `stop`, and at the end the counts."""

    def __init__(self, model_id: str, state: RequestState):
        self.model_id = model_id
        self.state = state

    def final(self, content: str) -> dict:
        s = self.state
        matched = s.stopper.matched if s.stopper is not None and s.finish_reason == STOP else ""
        return {
            "content": content,
            "stop": True,
            "model": self.model_id,
            "tokens_predicted": len(s.tokens),
            "tokens_evaluated": s.prompt_tokens,
            "stop_type": STOP_TYPES.get(s.finish_reason, "none"),
            "stopping_word": matched or "",
            "truncated": False,
        }


class InfillStreamRenderer(SseRenderer):
    def __init__(self, reply: InfillReply):
        self._reply = reply

    def event(self, event: TokenEvent) -> list[bytes]:
        if event.finish_reason == FAILED:
            return [
                sse(
                    {
                        "error": {
                            "code": 500,
                            "message": f"generation failed: {self._reply.state.error}",
                            "type": "server_error",
                        }
                    }
                )
            ]
        out = [sse({"content": event.text, "stop": False})] if event.text else []
        if event.finished:
            out.append(sse(self._reply.final("")))
        return out


class InfillResource(BodyResource):
    """llama-server's /infill: code completion between `input_prefix` and `input_suffix`."""

    model = INFILL
    operations = generation_operations("Fill in the middle", INFILL, streamed(INFILL_REPLY, INFILL_EVENT))

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        def answer(state: RequestState) -> Answer:
            reply = InfillReply(served.model_id, state)
            return Answer(whole=lambda _events: reply.final(state.text), stream=InfillStreamRenderer(reply))

        run(served, infill_request(f, served), req, resp, f.boolean("stream"), answer)
