"""Continuing the final assistant message (Anthropic's prefill, vLLM's continue_final_message)
over the real chat templates in tests/data/chat-templates: the prompt is the chat rendered as
history, cut where the final message's text ends, so the model goes on from that text rather
than answering in a new turn."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from rfc.runtime.server.chat_prompt import render_chat
from rfc.runtime.server.errors import ApiError
from rfc.runtime.text.call_ids import CallIdForm
from rfc.runtime.text.chat import ChatTemplate, ChatTemplateError
from tests.conftest import CHAT_TEMPLATES

pytestmark = pytest.mark.shared

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Germany?"},
]
PREFILL = "The capital of Germany is"
# a template that renders the final message as history puts only this between its generation
# prompt and the text: nothing, or an empty thinking block, or the answer channel's header
OPENERS = ("", "<think></think>", "<think>\n\n</think>\n\n", "<|channel|>final<|message|>")


def _served(path: Path) -> SimpleNamespace:
    template = ChatTemplate(path.read_text(), bos_token="<s>", eos_token="</s>")
    return SimpleNamespace(chat=template, chat_error=None, call_ids=CallIdForm.OPENAI)


def test_every_template_continues_the_final_text():
    continued = exact = 0
    for path in sorted(CHAT_TEMPLATES.glob("*.jinja")):
        served = _served(path)
        chat = [*CONVERSATION, {"role": "assistant", "content": PREFILL}]
        try:
            closed = render_chat(served, chat, add_generation_prompt=False)
            fresh = render_chat(served, CONVERSATION)
        except (ApiError, ChatTemplateError):
            continue  # a template that wants something else of a conversation (tools, alternation)
        prompt = render_chat(served, chat, continue_final=True)
        assert prompt.endswith(PREFILL) and closed.startswith(prompt), path.name
        continued += 1
        exact += any(prompt == fresh + opener + PREFILL for opener in OPENERS)
    assert continued >= 65 and exact >= 33, (continued, exact)  # 65 and 33 of the 72 when written


def test_spacing_as_sent_or_as_the_template_trims_it():
    served = _served(CHAT_TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja")
    chat = [CONVERSATION[1], {"role": "assistant", "content": "It is "}]
    assert render_chat(served, chat, continue_final=True).endswith("<|im_start|>assistant\nIt is ")
    trims = SimpleNamespace(
        chat=ChatTemplate(
            "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}",
            bos_token="",
            eos_token="",
        ),
        chat_error=None,
        call_ids=CallIdForm.OPENAI,
    )
    assert (
        render_chat(trims, chat, continue_final=True) == "<user>What is the capital of France?</user><assistant>It is"
    )


def test_what_cannot_be_continued():
    served = _served(CHAT_TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja")
    with pytest.raises(ApiError) as e:
        render_chat(served, CONVERSATION, continue_final=True)
    assert "must be the assistant's" in e.value.message and e.value.param == "messages[3]"
    # a final message without text opens a fresh turn, as if it were not there; one with tool
    # calls (its text would be cut from its calls) is answered in a new turn after it
    empty = [*CONVERSATION, {"role": "assistant", "content": ""}]
    assert render_chat(served, empty, continue_final=True) == render_chat(served, CONVERSATION)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    called = [*CONVERSATION, {"role": "assistant", "content": "Let me look.", "tool_calls": [call]}]
    assert render_chat(served, called, continue_final=True) == render_chat(served, called)
    drops = SimpleNamespace(
        chat=ChatTemplate(
            "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}{% endif %}{% endfor %}",
            bos_token="",
            eos_token="",
        ),
        chat_error=None,
        call_ids=CallIdForm.OPENAI,
    )
    with pytest.raises(ApiError) as e:
        render_chat(drops, [*CONVERSATION, {"role": "assistant", "content": PREFILL}], continue_final=True)
    assert "cannot be continued" in e.value.message and e.value.param == "messages[4].content"
