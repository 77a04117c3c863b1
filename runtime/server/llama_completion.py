"""llama-server's own completion API: `POST /completion` (and its alias `/completions`), the
reply objects it shares with `/infill` (runtime/server/infill.py), and `GET /props`, which
llama-server's clients read for the context size, the chat template and /completion's defaults.

The request is llama-server's: `prompt` (text, token ids, or ids and text mixed: one prompt),
`n_predict` (-1: until the context is full), its sampling defaults (temperature 0.8, top_k 40,
top_p 0.95, min_p 0.05), `repeat_penalty` over `repeat_last_n` tokens, `presence_penalty`,
`frequency_penalty`, `logit_bias` (`[[id or text, bias or false], ...]` or `{"id": bias}`),
`stop`, `ignore_eos`, `grammar` (GBNF) or `json_schema`, `n_probs`, `return_tokens`, `stream`.
Several prompts in one request (a list of strings) and `n_predict: 0` (the prompt cached,
nothing generated) are a 400; /v1/completions takes lists of prompts.
`cache_prompt` and `id_slot` are accepted: rfc's prefix cache serves every request, and it has
no slots to choose. llama-server's samplers rfc does not have (mirostat, typical, dynamic
temperature, XTC, DRY, a custom sampler chain) and its other options (`n_keep`, `n_indent`,
`t_max_predict_ms`, `min_keep`, `n_cmpl`, `return_progress`, LoRA, `post_sampling_probs`,
`response_fields`) are a 400 naming the field
when set to anything but their "off" value; never silently ignored.

The reply is llama-server's: `content`, `tokens`, `stop`, `stop_type` (`eos`, `word`, `limit`),
`stopping_word`, the counts, `generation_settings`, `timings` and, with `n_probs`,
`completion_probabilities` (`{id, token, bytes, logprob, top_logprobs}` per token). A stream is
server-sent events of `{content, tokens, stop: false, ...}` and a last one with `stop: true` and the
whole reply's fields; no `[DONE]`."""

import time

import falcon

from rfc.artifacts import RFC_VERSION
from rfc.runtime.engine.budget import BudgetRule, PastContext
from rfc.runtime.engine.engine import EOS, FAILED, LENGTH, STOP, GenerationRequest, RequestState, TokenEvent
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.server.api_fields import JSON_SCHEMA, MAX_STOP_STRINGS, MODEL, SEED, TEMPERATURE, TOP_K, TOP_P
from rfc.runtime.server.config import ServerConfig
from rfc.runtime.server.errors import bad_request, generation_failure
from rfc.runtime.server.fields import Field, Kind, RequestFields, RequestModel, at_default, read_query
from rfc.runtime.server.generation import Answer, BodyResource, budget, check_token_ids, generation_operations, run
from rfc.runtime.server.model_info import has_chat_template
from rfc.runtime.server.openai_format import TokenPieces, output_events
from rfc.runtime.server.openapi import Operation
from rfc.runtime.server.response_schemas import (
    JSON,
    LLAMA_COMPLETION_EVENT,
    LLAMA_COMPLETION_REPLY,
    LLAMA_PROPS,
    streamed,
)
from rfc.runtime.server.served_models import EngineHandle, ServedModel
from rfc.runtime.server.streaming import SseRenderer, sse
from rfc.runtime.server.structured import grammar
from rfc.runtime.text.values import shown

MAX_N_PROBS = 20  # as OpenAI's top_logprobs: each is a token's text and bytes in every event
STOP_LIST = {"type": "array", "maxItems": MAX_STOP_STRINGS, "items": {"type": "string", "minLength": 1}}
# n_predict past the context stops at it, as llama-server's does
BUDGET = BudgetRule(past_context=PastContext.CLAMP)
STOP_TYPES = {EOS: "eos", STOP: "word", LENGTH: "limit"}

# llama-server's options rfc does not implement: each with the value that leaves it off
_OFF = {
    "mirostat": 0,
    "typical_p": 1.0,
    "dynatemp_range": 0.0,
    "xtc_probability": 0.0,
    "dry_multiplier": 0.0,
    "n_keep": 0,
    "n_indent": 0,
    "t_max_predict_ms": 0,
    "post_sampling_probs": False,
    "min_keep": 0,
    "n_cmpl": 1,
    "return_progress": False,
}
_ABSENT = ("samplers", "lora", "response_fields")  # accepted only when absent or null
_PROMPT = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}},
    ]
}
_LOGIT_BIAS = {
    "anyOf": [
        {"type": "object", "additionalProperties": {"anyOf": [{"type": "number"}, {"const": False}]}},
        {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}},
    ]
}

SAMPLING = (
    Field("n_predict", Kind.INTEGER, -1, -1, description="tokens to generate; -1: until the context is full"),
    TEMPERATURE.but(default=0.8, maximum=1e4),
    TOP_K.but(default=40, minimum=0),
    TOP_P.but(default=0.95),
    Field("min_p", Kind.NUMBER, 0.05, 0.0, 1.0),
    SEED.but(description="-1: random"),
    Field("stop", Kind.JSON, [], schema=STOP_LIST),
    Field("stream", Kind.BOOLEAN, False, description="SSE: one {content, stop} event per piece"),
)
COMPLETION = RequestModel(
    "LlamaCompletionRequest",
    (
        MODEL,
        Field("prompt", Kind.JSON, required=True, schema=_PROMPT, description="text, token ids, or both mixed"),
        *SAMPLING,
        Field("repeat_penalty", Kind.NUMBER, 1.0, description="in [0.001, 1000]; 1: off"),
        Field("repeat_last_n", Kind.INTEGER, 64, -1, description="the penalties' window; -1: the whole context"),
        Field("presence_penalty", Kind.NUMBER, 0.0, -1e4, 1e4),
        Field("frequency_penalty", Kind.NUMBER, 0.0, -1e4, 1e4),
        Field("logit_bias", Kind.JSON, [], schema=_LOGIT_BIAS, description="[[id or text, bias or false], ...]"),
        Field("ignore_eos", Kind.BOOLEAN, False),
        Field("grammar", Kind.STRING, description="constrain the output to this GBNF grammar"),
        Field("json_schema", Kind.JSON, schema=JSON_SCHEMA, description="constrain the output to this schema"),
        Field("n_probs", Kind.INTEGER, 0, 0, MAX_N_PROBS, description="each token's top N logprobs"),
        Field("return_tokens", Kind.BOOLEAN, False, description="the generated token ids"),
        Field("cache_prompt", Kind.BOOLEAN, True, description="accepted: the prefix cache serves every request"),
        Field("id_slot", Kind.INTEGER, -1, -1, description="accepted: rfc has no slots to choose"),
        Field("timings_per_token", Kind.BOOLEAN, False, description="timings in every streamed event"),
        *(Field(name, Kind.JSON, description=f"refused unless {off!r}: not implemented") for name, off in _OFF.items()),
        *(Field(name, Kind.JSON, description="refused unless absent: not implemented") for name in _ABSENT),
    ),
    example={"prompt": "Once upon a time", "n_predict": 16},
)


def completion_request(f: RequestFields, served: ServedModel) -> GenerationRequest:
    for name, off in _OFF.items():
        if not at_default(f.raw(name), off):
            raise bad_request(f"'{name}' is not supported (only {str(off).lower()}, its off value)", name)
    for name in _ABSENT:
        if f.raw(name) is not None:
            raise bad_request(f"'{name}' is not supported", name)
    ids = _prompt_ids(served, f.raw("prompt"))
    constraint = _constraint(f, served)
    if constraint is not None and f.boolean("ignore_eos"):
        raise bad_request("ignore_eos cannot be combined with a grammar or json_schema", "ignore_eos")
    params = SamplingParams(
        **sampling(f),
        repetition_penalty=f.number("repeat_penalty"),
        presence_penalty=f.number("presence_penalty"),
        frequency_penalty=f.number("frequency_penalty"),
        penalty_last_n=f.integer("repeat_last_n"),
        logit_bias=_logit_bias(served, f.raw("logit_bias")),
    )
    return GenerationRequest(
        prompt_ids=ids,
        params=params,
        max_tokens=max_tokens(f, served, ids),
        stop=stop_strings(f),
        ignore_eos=f.boolean("ignore_eos"),
        logprobs=f.integer("n_probs") or None,
        constraint=constraint,
    )


def sampling(f: RequestFields) -> dict:
    """The SAMPLING fields' SamplingParams arguments (seed -1: random, as llama-server's)."""
    seed = f.integer("seed")
    return {
        "temperature": f.number("temperature"),
        "top_k": f.integer("top_k"),
        "top_p": f.number("top_p"),
        "min_p": f.number("min_p"),
        "seed": None if seed is None or seed == -1 else seed,
    }


def max_tokens(f: RequestFields, served: ServedModel, ids: list[int]) -> int:
    """n_predict, or -1: until the context is full; past it, stops at it."""
    n = f.integer("n_predict")
    if n == 0:  # llama-server evaluates the prompt into its cache and generates nothing
        raise bad_request("n_predict 0 (the prompt cached, nothing generated) is not supported", "n_predict")
    return budget(served, BUDGET, n if n > 0 else None, ids)


def stop_strings(f: RequestFields) -> tuple[str, ...]:
    stops = f.raw("stop")
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"'stop' must be a list of at most {MAX_STOP_STRINGS} non-empty strings", "stop")
    return tuple(stops)


def _prompt_ids(served: ServedModel, prompt: object) -> list[int]:
    """One prompt: its text as /v1/completions tokenizes it (BOS as the model adds it), its token
    ids, or ids and text mixed (the text pieces without special tokens added)."""
    if isinstance(prompt, str):
        return served.prompts.encode(prompt, "prompt")
    if not isinstance(prompt, list) or not prompt:
        raise bad_request("'prompt' must be a string, or a list of token ids and strings", "prompt")
    if all(isinstance(p, str) for p in prompt) and len(prompt) > 1:
        raise bad_request("/completion takes one prompt; several are /v1/completions' list of prompts", "prompt")
    if not all(isinstance(p, str) or (isinstance(p, int) and not isinstance(p, bool)) for p in prompt):
        raise bad_request("'prompt' must be a string, or a list of token ids and strings", "prompt")
    # a first piece of text is encoded as a whole prompt is (BOS as the model adds it), the others bare
    ids: list[int] = []
    for i, part in enumerate(prompt):
        if isinstance(part, int):
            ids.append(part)
        elif i == 0:
            ids += served.prompts.encode(part, "prompt")
        else:
            ids += served.model.tokenizer.encode(part, add_special_tokens=False).ids
    return check_token_ids(served, ids, "prompt")  # the context's bound: budget()


def _constraint(f: RequestFields, served: ServedModel):
    if f.has("grammar") and f.raw("json_schema") is not None:
        raise bad_request("send one of grammar, json_schema, not both", "json_schema")
    if f.has("grammar"):
        source = f.string("grammar")
        return grammar(served, "grammar", lambda g: g.gbnf(source, "grammar"))
    schema = f.raw("json_schema")
    if schema is not None:
        return grammar(served, "json_schema", lambda g: g.json_schema(schema, "json_schema"))
    return None


def _logit_bias(served: ServedModel, raw: object) -> dict[int, float]:
    """llama-server's forms: [[token id or text, bias or false], ...] or {"token id": bias};
    a text biases each of its tokens; false bans (a bias of -100)."""
    vocab = served.model.vocab_size
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise bad_request("'logit_bias' must be [[token, bias], ...] or {\"token id\": bias}", "logit_bias")
    bias: dict[int, float] = {}
    for key, value in pairs:
        if value is False:
            value = -100.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise bad_request(f"logit_bias for {shown(key)} must be false or a number in [-100, 100]", "logit_bias")
        if isinstance(key, str) and not (isinstance(raw, dict) and key.lstrip("-").isdigit()):
            tokens = served.model.tokenizer.encode(key, add_special_tokens=False).ids
        elif isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
            tokens = [int(key)]
        else:
            raise bad_request(f"logit_bias key {shown(key)} is not a token id or a text", "logit_bias")
        for token in tokens:
            if not 0 <= token < vocab:
                raise bad_request(f"logit_bias token id {token} is not in [0, {vocab})", "logit_bias")
            bias[token] = float(value)
    return bias


class LlamaReply:
    """llama-server's completion objects (/completion and /infill): each streamed piece, and at
    the end the whole reply with its counts, settings and timings."""

    def __init__(self, served: ServedModel, state: RequestState, f: RequestFields, prompt: str = ""):
        self.model_id = served.model_id
        self.state = state
        self.prompt = prompt
        self.pieces = TokenPieces(served.model.tokenizer)
        options = f.model is COMPLETION  # /infill has the SAMPLING fields alone
        self.return_tokens = options and f.boolean("return_tokens")
        self.per_token_timings = options and f.boolean("timings_per_token")
        self.settings = {
            "n_ctx": served.model.context_length,
            "model": served.model_id,
            "n_predict": f.integer("n_predict"),
            "seed": f.integer("seed") if f.integer("seed") is not None else -1,
            "temperature": f.number("temperature"),
            "top_k": f.integer("top_k"),
            "top_p": f.number("top_p"),
            "min_p": f.number("min_p"),
            "stop": list(state.request.stop),
            "ignore_eos": state.request.ignore_eos,
            "stream": f.boolean("stream"),
            "n_probs": state.request.logprobs or 0,
        }

    def piece(self, event: TokenEvent) -> dict:
        s = self.state
        out = {
            "index": 0,
            "content": event.text,
            "tokens": [event.token] if output_events(event) else [],  # streamed: always, as llama-server
            "stop": False,
            "id_slot": 0,
            "tokens_predicted": len(s.tokens),
            "tokens_evaluated": s.prompt_tokens,
        }
        if self.state.request.logprobs and output_events(event):
            out["completion_probabilities"] = [self._probability(event)]
        if self.per_token_timings:
            out["timings"] = self.timings()
        return out

    def final(self, content: str, events: list[TokenEvent] = ()) -> dict:
        s = self.state
        matched = s.stopper.matched if s.stopper is not None and s.finish_reason == STOP else ""
        out = {
            "index": 0,
            "content": content,
            "tokens": list(s.tokens) if self.return_tokens and events else [],
            "id_slot": 0,
            "stop": True,
            "model": self.model_id,
            "tokens_predicted": len(s.tokens),
            "tokens_evaluated": s.prompt_tokens,
            "generation_settings": self.settings,
            "prompt": self.prompt,
            "has_new_line": "\n" in content,
            "truncated": False,
            "stop_type": STOP_TYPES.get(s.finish_reason, "none"),
            "stopping_word": matched or "",
            "tokens_cached": s.cached_tokens,
            "timings": self.timings(),
        }
        if s.request.logprobs and events:
            out["completion_probabilities"] = [self._probability(e) for e in events if output_events(e)]
        return out

    def timings(self) -> dict:
        s = self.state
        now = time.time()
        first = s.first_token_at or now
        prompt_ms = (first - (s.admitted_at or s.created_at)) * 1e3
        predicted_ms = ((s.finished_at or now) - first) * 1e3
        prompt_n, predicted_n = s.prompt_tokens - s.cached_tokens, len(s.tokens)
        return {
            "cache_n": s.cached_tokens,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": prompt_n * 1e3 / prompt_ms if prompt_ms > 0 else 0.0,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
            "predicted_per_second": predicted_n * 1e3 / predicted_ms if predicted_ms > 0 else 0.0,
        }

    def _probability(self, event: TokenEvent) -> dict:
        return {
            **self._token(event.token),
            "logprob": event.logprob,
            "top_logprobs": [{**self._token(t), "logprob": lp} for t, lp in event.top_logprobs],
        }

    def _token(self, token: int) -> dict:
        text, raw = self.pieces.piece(token)
        return {"id": token, "token": text, "bytes": raw}


class LlamaStreamRenderer(SseRenderer):
    def __init__(self, reply: LlamaReply):
        self._reply = reply

    def event(self, event: TokenEvent) -> list[bytes]:
        if event.finish_reason == FAILED:
            status, message = generation_failure(self._reply.state)
            kind = "invalid_request_error" if status < 500 else "server_error"
            return [sse({"error": {"code": status, "message": message, "type": kind}})]
        reply = self._reply
        wanted = event.text or output_events(event)
        out = [sse(reply.piece(event))] if wanted else []
        if event.finished:
            out.append(sse(self._reply.final("")))
        return out


def answer_with(served: ServedModel, f: RequestFields, prompt: str = ""):
    """The Answer factory `run` takes, for llama-server's reply shapes."""

    def answer(state: RequestState) -> Answer:
        reply = LlamaReply(served, state, f, prompt)
        return Answer(whole=lambda events: reply.final(state.text, events), stream=LlamaStreamRenderer(reply))

    return answer


class CompletionResource(BodyResource):
    """llama-server's /completion (and /completions): text after a prompt."""

    model = COMPLETION
    operations = generation_operations(
        "Complete a prompt (llama-server's)", COMPLETION, streamed(LLAMA_COMPLETION_REPLY, LLAMA_COMPLETION_EVENT)
    )

    def post(self, f: RequestFields, served: ServedModel, req: falcon.Request, resp: falcon.Response) -> None:
        request = completion_request(f, served)
        prompt = f.raw("prompt")
        text = prompt if isinstance(prompt, str) else served.model.tokenizer.decode(request.prompt_ids)
        run(served, request, req, resp, f.boolean("stream"), answer_with(served, f, text))


_MODEL_QUERY = Field("model", Kind.STRING, description="a served model's id; absent: the first one")


class PropsResource:
    """llama-server's GET /props: the context size, /completion's defaults, the chat template."""

    operations = {
        "get": Operation(
            "Server properties (llama-server's)", reply={JSON: LLAMA_PROPS}, errors=(404, 503), query=(_MODEL_QUERY,)
        )
    }

    def __init__(self, handle: EngineHandle, config: ServerConfig):
        self._handle = handle
        self._config = config

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        served = self._handle.require(read_query(req, _MODEL_QUERY))
        defaults = {f.name: f.default for f in COMPLETION.fields if f.default is not None}
        defaults["seed"] = -1
        resp.media = {
            "default_generation_settings": {
                "n_ctx": served.model.context_length,
                "model": served.model_id,
                "params": defaults,
            },
            "total_slots": served.engine.scheduler.config.max_batch,  # sequences decoded at once
            "model_path": served.model.manifest.get("source", {}).get("file", ""),
            "chat_template": served.chat.source if has_chat_template(served) else "",
            "modalities": {"vision": False, "audio": False},
            "build_info": f"rfc {RFC_VERSION}",
            "is_sleeping": False,
        }
