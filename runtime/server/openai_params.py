"""OpenAI request bodies -> GenerationRequests: one per choice, `n` per prompt (a seed `s`
gives the choices of a prompt the seeds s, s+1, ...; the engine's prefix cache shares the
prompt's KV blocks between them). Parameters the engine cannot honour are a 400, never
silently ignored (best_of > 1); unknown fields are ignored. `echo` shows the prompt before each
choice (and its tokens' logprobs, computed by one forward pass), `suffix` fills in the middle
with the model's FIM tokens (runtime/server/infill.py).
llama.cpp/vLLM extras are accepted: top_k, min_p, repetition_penalty, ignore_eos,
chat_template_kwargs, json_schema, grammar (GBNF), reasoning_format, and vLLM's structured
outputs (`structured_outputs`, the older `guided_*`).

Structured output: `response_format` (`text`, `json_object`, `json_schema`), `tools`,
`tool_choice`, `parallel_tool_calls` and the legacy `functions` / `function_call`
(runtime/server/structured.py)."""

from dataclasses import dataclass, replace

from rfc.runtime.text.assistant_output import OutputSpec
from rfc.runtime.engine.budget import BudgetRule
from rfc.runtime.engine.engine import GenerationRequest
from rfc.runtime.sampling.sampler import SamplingParams
from rfc.runtime.server.chat_prompt import continuation, render_chat
from rfc.runtime.server.api_fields import MAX_STOP_STRINGS, speculative_request
from rfc.runtime.server.errors import bad_request
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.generation import budget, check_token_ids
from rfc.runtime.server.served_models import ServedModel
from rfc.runtime.server.infill import fim_prompt
from rfc.runtime.server.prompt_logprobs import prompt_logprobs
from rfc.runtime.server.openai_models import MAX_CHOICES
from rfc.runtime.server import vllm_sampling
from rfc.runtime.server.vllm_structured import vllm_constraints
from rfc.runtime.server.structured import (
    OutputPlan,
    grammar,
    legacy_functions,
    openai_tool_choice,
    tool_plan,
)
from rfc.runtime.text.values import shown


@dataclass(frozen=True)
class OpenAIRequest:
    generation: GenerationRequest  # the first choice's; `choices` has them all
    stream: bool
    include_usage: bool
    output: OutputSpec = OutputSpec()
    legacy_functions: bool = False  # answer with `function_call` rather than `tool_calls`
    choices: tuple[GenerationRequest, ...] = ()  # every choice: `n` per prompt, prompt after prompt
    prompts: int = 1
    echo: tuple["Echo", ...] = ()  # per prompt: what `echo` shows before its choices' text
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats: usage in every chunk


@dataclass(frozen=True)
class Echo:
    """A prompt as `echo` shows it: its text, and its tokens' logprobs when they are asked for."""

    text: str
    logprobs: list[tuple[int, float | None, tuple]] | None = None


def with_choices(request: OpenAIRequest, prompts: list[GenerationRequest], n: int) -> OpenAIRequest:
    """`request` answering `n` choices for each of `prompts`, each choice's seed one more
    than the one before (different texts, and the same again for the same seed)."""
    if len(prompts) * n > MAX_CHOICES:
        raise bad_request(f"at most {MAX_CHOICES} choices per request (prompts x n), got {len(prompts) * n}", "n")
    choices = []
    for g in prompts:
        for j in range(n):
            seed = g.params.seed
            choices.append(g if j == 0 or seed is None else replace(g, params=replace(g.params, seed=seed + j)))
    return replace(request, generation=choices[0], choices=tuple(choices), prompts=len(prompts))


# max_tokens past the context: the engine's 400. Completions default to 16 (COMPLETION declares
# it); chat to the rest of the context.
COMPLETION_BUDGET = BudgetRule()
CHAT_BUDGET = BudgetRule("the messages", "messages", plural=True)


def completion_request(f: RequestFields, served: ServedModel) -> OpenAIRequest:
    _refuse_unsupported(f)
    logprobs = f.integer("logprobs")
    plan = OutputPlan()
    _response_format(f, served, plan)
    constraint = plan.constraint(served)
    suffix = f.string("suffix")
    built, echoes = [], []
    for prompt in _completion_prompts(f, served):
        prompt_ids, text = prompt.ids, prompt.text
        if suffix:  # fill in the middle: the prompt is the prefix, laid out in the model's FIM tokens
            prompt_ids = fim_prompt(served, text, suffix)
        prompt_ids = vllm_sampling.truncated(f, prompt_ids, served.model.context_length)
        max_tokens = budget(served, COMPLETION_BUDGET, f.integer("max_tokens"), prompt_ids)
        built.append(_build(f, served, prompt_ids, max_tokens, logprobs, constraint))
        if f.boolean("echo"):
            echoes.append(_echo(served, prompt_ids, text, logprobs))
    request = with_choices(built[0], [b.generation for b in built], f.integer("n"))
    return replace(request, echo=tuple(echoes))


def _echo(served: ServedModel, prompt_ids: list[int], text: str, logprobs: int | None) -> Echo:
    """The prompt as `echo` shows it; with `logprobs`, its tokens' own (one forward pass)."""
    return Echo(text, prompt_logprobs(served, prompt_ids, logprobs) if logprobs is not None else None)


def chat_request(f: RequestFields, served: ServedModel) -> OpenAIRequest:
    _refuse_unsupported(f)
    modalities = f.raw("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise bad_request("only text output is supported: 'modalities' may hold \"text\" alone", "modalities")
    if f.raw("audio") is not None:
        raise bad_request("audio output is not supported: the models answer in text", "audio")
    if f.boolean("echo"):
        raise bad_request("'echo' on chat completions is not supported (vLLM's)", "echo")
    plan = _tools(f)
    _response_format(f, served, plan)
    plan.split_reasoning = f.string("reasoning_format") != "none"
    prompt = _render_chat(f, served, **plan.prompt_args(served))
    prompt_ids = vllm_sampling.truncated(f, served.prompts.encode(prompt, "messages"), served.model.context_length)
    top = f.integer("top_logprobs")
    logprobs = (top or 0) if f.boolean("logprobs") else None
    if top is not None and logprobs is None:
        raise bad_request("top_logprobs requires logprobs: true", "top_logprobs")
    asked = f.integer("max_completion_tokens")
    max_tokens = budget(served, CHAT_BUDGET, asked if asked is not None else f.integer("max_tokens"), prompt_ids)
    built = _build(f, served, prompt_ids, max_tokens, logprobs, plan.constraint(served))
    request = OpenAIRequest(
        built.generation,
        built.stream,
        built.include_usage,
        plan.output_spec(served, prompt),
        legacy_functions=f.raw("functions") is not None and f.raw("tools") is None,
        continuous_usage=built.continuous_usage,
    )
    return with_choices(request, [request.generation], f.integer("n"))


def _tools(f: RequestFields) -> OutputPlan:
    """tools / functions, tool_choice / function_call, parallel_tool_calls."""
    if f.raw("tools") is not None and f.raw("functions") is not None:
        raise bad_request("send 'tools' or the legacy 'functions', not both", "functions")
    if f.raw("functions") is not None:
        tools = legacy_functions(f.raw("functions"))
        raw = f.raw("function_call")
        choice = openai_tool_choice(raw if raw is not None else "auto", tools, "function_call")
        if choice.mode == "required":
            raise bad_request("'function_call' must be 'auto', 'none' or {'name': ...}", "function_call")
        return OutputPlan(tools=tools, choice=choice, parallel=False)
    if f.raw("function_call") not in (None, "none", "auto"):  # checked, as tool_choice is, not ignored
        raise bad_request("'function_call' needs 'functions'", "function_call")
    return tool_plan(f.raw("tools"), f.raw("tool_choice"), f.boolean("parallel_tool_calls"))


def _response_format(f: RequestFields, served: ServedModel, plan: OutputPlan) -> None:
    """response_format, llama.cpp's json_schema / grammar, or vLLM's structured outputs
    (runtime/server/vllm_structured.py): at most one of them."""
    asked = []
    response_format = f.raw("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or not isinstance(response_format.get("type", "text"), str):
            raise bad_request("'response_format' must be an object with a 'type'", "response_format")
        kind = response_format.get("type", "text")
        if kind == "json_object":
            asked.append(("response_format", lambda g: g.any_json_object("response_format")))
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise bad_request(
                    "'response_format.json_schema' must be {'name': ..., 'schema': {...}, 'strict': ...}",
                    "response_format.json_schema",
                )
            asked.append(
                ("response_format", lambda g: g.json_schema(spec["schema"], "response_format.json_schema.schema"))
            )
        elif kind != "text":
            raise bad_request(
                f"response_format type '{kind}' is not supported (text, json_object, json_schema)",
                "response_format.type",
            )
    if f.raw("json_schema") is not None:
        asked.append(("json_schema", lambda g: g.json_schema(f.raw("json_schema"), "json_schema")))
    if f.has("grammar"):
        source = f.string("grammar")
        asked.append(("grammar", lambda g: g.gbnf(source, "grammar")))
    asked += vllm_constraints(f)
    if len(asked) > 1:
        raise bad_request(f"send one of {', '.join(a[0] for a in asked)}, not several", asked[1][0])
    if asked:
        plan.grammar_field, build = asked[0]
        plan.grammar = grammar(served, plan.grammar_field, build)


def _build(
    f: RequestFields, served: ServedModel, prompt_ids: list[int], max_tokens: int, logprobs: int | None, constraint=None
) -> OpenAIRequest:
    stream = f.boolean("stream")
    options = f.raw("stream_options")
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    include_usage = options.get("include_usage") is True
    continuous = include_usage and options.get("continuous_usage_stats") is True
    # a finished grammar allows only the end token: generating past it, or banning it, would break the grammar
    holds_off_the_end = {"ignore_eos": f.boolean("ignore_eos"), "min_tokens": f.integer("min_tokens") > 0}
    for name, asked in holds_off_the_end.items():
        if constraint is not None and asked:
            raise bad_request(f"{name} cannot be combined with a response format, grammar or forced tool call", name)
    generation = GenerationRequest(
        prompt_ids=prompt_ids,
        params=_sampling(f, served),
        max_tokens=max_tokens,
        stop=_stop(f),
        ignore_eos=f.boolean("ignore_eos"),
        logprobs=logprobs,
        constraint=constraint,
        speculative=speculative_request(f),
        stop_ids=vllm_sampling.stop_token_ids(f),
        include_stop=f.boolean("include_stop_str_in_output"),
        skip_special_tokens=f.boolean("skip_special_tokens"),
    )
    return OpenAIRequest(
        generation=generation,
        stream=stream,
        include_usage=stream and include_usage,
        continuous_usage=stream and continuous,
    )


def _sampling(f: RequestFields, served: ServedModel) -> SamplingParams:
    return SamplingParams(
        temperature=f.number("temperature"),
        top_p=f.number("top_p"),
        top_k=f.integer("top_k"),
        min_p=f.number("min_p"),
        repetition_penalty=f.number("repetition_penalty"),
        presence_penalty=f.number("presence_penalty"),
        frequency_penalty=f.number("frequency_penalty"),
        logit_bias=_logit_bias(f.raw("logit_bias"), served.model.vocab_size),
        seed=f.integer("seed"),
        min_tokens=f.integer("min_tokens"),
    )


def _refuse_unsupported(f: RequestFields) -> None:
    if f.integer("best_of") != 1:
        raise bad_request("best_of > 1 is not supported", "best_of")
    vllm_sampling.refuse_unsupported(f)


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str  # as sent, or the ids' text (special tokens left out)


def _completion_prompts(f: RequestFields, served: ServedModel) -> list[Prompt]:
    """The prompts: one (text or token ids), or a list of them."""
    prompt = f.raw("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > MAX_CHOICES:
            raise bad_request(f"at most {MAX_CHOICES} prompts per request", "prompt")
        return [_one_prompt(served, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    return [_one_prompt(served, prompt, "prompt")]


def _one_prompt(served: ServedModel, prompt: object, field: str) -> Prompt:
    if isinstance(prompt, str):
        return Prompt(served.prompts.encode(prompt, field), prompt)
    if isinstance(prompt, list):
        ids = check_token_ids(served, prompt, field)
        return Prompt(ids, served.model.tokenizer.decode(ids, skip_special_tokens=True))
    raise bad_request(f"'{field}' must be a string or a list of token ids", field)


def _render_chat(
    f: RequestFields, served: ServedModel, tools: list[dict] | None = None, note: str | None = None
) -> str:
    extra = f.raw("chat_template_kwargs")
    if not isinstance(extra, dict):
        raise bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs")
    return render_chat(served, f.raw("messages"), extra, tools=tools, note=note, **continuation(f))


def _stop(f: RequestFields) -> tuple[str, ...]:
    stop = f.raw("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings are supported", "stop")
    return tuple(stops)


def _logit_bias(raw: object, vocab_size: int) -> dict[int, float]:
    if not isinstance(raw, dict):
        raise bad_request("'logit_bias' must be an object mapping token ids to biases", "logit_bias")
    bias = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise bad_request(f"logit_bias key {shown(key)} is not a token id", "logit_bias") from None
        if not 0 <= token < vocab_size:
            raise bad_request(f"logit_bias token id {token} is not in [0, {vocab_size})", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise bad_request(f"logit_bias value for {key} must be a number in [-100, 100]", "logit_bias")
        bias[token] = float(value)
    return bias
