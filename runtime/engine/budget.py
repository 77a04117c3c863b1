"""How many tokens a request may generate: one rule for every HTTP dialect and `rfc run`.

No budget asked: the rest of the context, as llama.cpp and vLLM do (an API with a default of its
own, OpenAI completions' 16 or the native API's 100, asks for it: its request model declares it).
What an asked budget that cannot fit becomes is the API's: Ollama's num_predict, the
Responses API's max_output_tokens and `rfc run -n` stop at the context (llama.cpp's n_predict
does); Anthropic's max_tokens is refused naming the messages; OpenAI's and the native API's are
submitted as asked, and the engine's own check refuses them (Engine.submit)."""

from dataclasses import dataclass
from enum import Enum

from rfc.runtime.engine.requests import ContextOverflow


class PastContext(Enum):
    """What a budget asked past the room the prompt leaves becomes."""

    CLAMP = "clamp"  # the room: generation stops at the context
    REFUSE = "refuse"  # a ContextOverflow naming max_tokens and the prompt
    SUBMIT = "submit"  # as asked, for Engine.submit to refuse


@dataclass(frozen=True)
class BudgetRule:
    """One API's max_tokens rule."""

    prompt: str = "the prompt"  # how messages name the prompt
    field: str = "prompt"  # the field a prompt that fills the context is blamed on
    plural: bool = False  # "the messages fill", "the prompt fills"
    past_context: PastContext = PastContext.SUBMIT


def generation_budget(rule: BudgetRule, asked: int | None, prompt_tokens: int, context: int) -> int:
    """The tokens a request may generate after `prompt_tokens` in a context of `context`."""
    room = context - prompt_tokens
    if asked is None or rule.past_context is PastContext.CLAMP:
        if room < 1:
            raise ContextOverflow(
                rule.field,
                f"{rule.prompt} ({prompt_tokens} tokens) {'fill' if rule.plural else 'fills'} "
                f"the context ({context} tokens)",
                context,
                prompt_tokens,
            )
        return room if asked is None else min(asked, room)
    if rule.past_context is PastContext.REFUSE and asked > room:
        raise ContextOverflow(
            "max_tokens",
            f"{rule.prompt} ({prompt_tokens} tokens) + max_tokens ({asked}) "
            f"{'exceed' if rule.plural else 'exceeds'} the context ({context} tokens)",
            context,
            prompt_tokens,
            asked,
        )
    return asked
