"""One request as the engine and the APIs see it: what was asked (GenerationRequest), what
comes back (TokenEvent, RequestState) and the hooks that watch it (Observer). Its tokens and
scheduling status live in its scheduler Sequence alone; how its stream ended (`finish_reason`)
in its RequestState."""

import queue
import time
from dataclasses import dataclass, field
from typing import Any

from rfc.runtime.core.request_error import RequestError
from rfc.runtime.text.detokenize import IncrementalDetokenizer
from rfc.runtime.sampling.sampler import Sampler, SamplingParams
from rfc.runtime.engine.scheduler import FinishReason, Sequence
from rfc.runtime.engine.speculative import SeqSpec, SpecRequest
from rfc.runtime.text.stopping import StopChecker

__all__ = [
    "ContextOverflow",
    "FinishReason",
    "GenerationRequest",
    "Observer",
    "RequestError",
    "RequestState",
    "TokenEvent",
]


class ContextOverflow(RequestError):
    """A request that does not fit the context: its prompt alone (`asked` None), or its prompt
    and the tokens asked for. The numbers are kept for each API's own wording of it (OpenAI's
    `context_length_exceeded`, Anthropic's `prompt is too long`, which clients map to their
    context-window exceptions)."""

    def __init__(
        self,
        field_name: str,
        message: str,
        context: int,
        prompt_tokens: int,
        asked: int | None = None,
        at_least: bool = False,
    ):
        super().__init__(field_name, message)
        self.context = context
        self.prompt_tokens = prompt_tokens  # `at_least`: counting stopped there, past the context
        self.asked = asked
        self.at_least = at_least


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams = SamplingParams()
    max_tokens: int = 100
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; n >= 0: the chosen token's and the top n
    constraint: Any = None  # a runtime.constraints.Grammar: only the tokens it allows are sampled
    owner: str | None = None  # the API client that asked (server: a key's digest); None: anonymous
    speculative: SpecRequest | None = None  # speculative decoding: None takes the engine's own setting
    stop_ids: tuple[int, ...] = ()  # tokens that end it as the model's end-of-generation tokens do (vLLM's)
    include_stop: bool = False  # the matched stop string stays in the text (vLLM's include_stop_str_in_output)
    skip_special_tokens: bool = True  # special tokens' text left out of the output (vLLM's)


@dataclass(frozen=True)
class TokenEvent:
    request_id: int
    token: int | None  # None on an event that only ends the stream (cancel, failure)
    text: str
    finished: bool
    finish_reason: FinishReason | None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


class Observer:
    """Hooks for metrics and traces; every method is optional."""

    def on_start(self, state: "RequestState") -> None: ...

    def on_first_token(self, state: "RequestState") -> None: ...

    def on_finish(self, state: "RequestState") -> None: ...

    def on_step(self, prefill_tokens: int, decode_tokens: int, seconds: float) -> None:
        """A step ran: `prefill_tokens` prompt tokens fed, `decode_tokens` tokens generated for
        decoding sequences (a step with drafts: one per token emitted), in `seconds`."""


@dataclass(eq=False)
class RequestState:
    """The API side of one request: text, events, timings. Its tokens live in its scheduler
    `Sequence` alone (`tokens` reads them). It is `finished` once its final event is out: the
    output stage sets `finish_reason` just before, so the text, the tokens and the reason are
    final by then. While it runs, `tokens` may be a step ahead of `text` (the output stage
    detokenizes behind the engine)."""

    request_id: int
    request: GenerationRequest
    seq: Sequence
    text: str = ""
    finish_reason: FinishReason | None = None
    error: str | None = None
    error_field: str | None = None  # set when the request itself made it fail (its grammar): a 4xx
    created_at: float = field(default_factory=time.time)
    admitted_at: float | None = None  # first scheduled: queueing ends, prefill starts
    first_token_at: float | None = None
    prefill_done_at: float | None = None
    finished_at: float | None = None
    events: "queue.SimpleQueue[TokenEvent]" = field(default_factory=queue.SimpleQueue)
    # the engine thread's (sampling; the matcher is dropped when the sequence finishes)
    sampler: Sampler | None = None
    matcher: Any = None  # the constraint's per-request state (runtime.constraints.Matcher)
    spec: SeqSpec | None = None  # speculative decoding: its drafter and record (None: it does not speculate)
    # the output stage's (runtime/engine/output.py)
    detok: IncrementalDetokenizer | None = None
    stopper: StopChecker | None = None

    @property
    def tokens(self) -> list[int]:
        """The generated tokens (an end-of-generation token that stopped it excluded)."""
        return self.seq.output_ids

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prompt_tokens(self) -> int:
        return len(self.seq.prompt_ids)

    @property
    def samples_on_host(self) -> bool:
        """Whether its logit rows need the host's logits: a grammar mask, logit_bias, or top
        logprobs (the engine's device rows; decode queued ahead, runtime/engine/ahead.py)."""
        return self.matcher is not None or self.sampler.needs_host or bool(self.request.logprobs)

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens whose KV came from the prefix cache."""
        return self.seq.num_cached
