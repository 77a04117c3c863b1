"""runtime/engine/budget.py: the one max_tokens rule of every HTTP dialect and `rfc run`."""

import pytest

from rfc.runtime.engine.budget import BudgetRule, PastContext, generation_budget
from rfc.runtime.engine.requests import RequestError

CTX = 64
CLAMP = BudgetRule(past_context=PastContext.CLAMP)  # Ollama, rfc run
CHAT = BudgetRule("the messages", "messages", plural=True)  # OpenAI chat: the engine refuses past the context
ANTHROPIC = BudgetRule("the messages", "messages", plural=True, past_context=PastContext.REFUSE)


def test_no_budget_asked_is_the_rest_of_the_context():
    assert generation_budget(CHAT, None, 10, CTX) == 54
    assert generation_budget(CLAMP, None, 63, CTX) == 1


def test_a_prompt_that_fills_the_context_names_its_field():
    with pytest.raises(RequestError) as e:
        generation_budget(CHAT, None, 64, CTX)
    assert (e.value.field, str(e.value)) == ("messages", "the messages (64 tokens) fill the context (64 tokens)")
    with pytest.raises(RequestError, match=r"^the prompt \(70 tokens\) fills the context \(64 tokens\)$"):
        generation_budget(CLAMP, 5, 70, CTX)


def test_past_the_context_clamps_refuses_or_is_left_to_the_engine():
    assert generation_budget(CLAMP, 1000, 10, CTX) == 54
    assert generation_budget(CLAMP, 5, 10, CTX) == 5
    assert generation_budget(CHAT, 1000, 10, CTX) == 1000  # Engine.submit refuses it with its own message
    assert generation_budget(BudgetRule(), 16, 70, CTX) == 16  # OpenAI completions: the engine names the numbers
    assert generation_budget(ANTHROPIC, 54, 10, CTX) == 54
    with pytest.raises(RequestError) as e:
        generation_budget(ANTHROPIC, 55, 10, CTX)
    assert (e.value.field, str(e.value)) == (
        "max_tokens",
        "the messages (10 tokens) + max_tokens (55) exceed the context (64 tokens)",
    )
