"""Synchronous generation for the command line: the engine stepped in the caller's thread (with
no engine thread started, each step delivers its text and events before it returns)."""

import time
from collections.abc import Callable
from dataclasses import dataclass

from rfc.runtime.engine.engine import Engine, GenerationRequest, RequestState


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    generated_tokens: int
    prompt_seconds: float
    generate_seconds: float

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generate_tps(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0


def generate(
    engine: Engine, request: GenerationRequest, on_text: Callable[[str], None]
) -> tuple[RequestState, GenerationStats]:
    started = time.perf_counter()
    state = engine.submit(request)
    first = None
    while not state.finished:
        engine.step()
        while not state.events.empty():
            event = state.events.get()
            if first is None and event.token is not None:
                first = time.perf_counter()
            if event.text:
                on_text(event.text)
    end = time.perf_counter()
    first = first or end
    # The first sampled token ends the prefill; the rest are decode steps.
    stats = GenerationStats(
        prompt_tokens=state.prompt_tokens,
        generated_tokens=max(len(state.tokens) - 1, 0),
        prompt_seconds=first - started,
        generate_seconds=end - first,
    )
    return state, stats
