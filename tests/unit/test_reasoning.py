"""The `<think>` split, whole and streamed piece by piece, on the prompts the real Qwen3 and
DeepSeek-R1 templates render."""

import json

import pytest

from rfc.runtime.text.chat import ChatTemplate
from rfc.runtime.text.assistant_output import OutputParser, OutputSpec
from rfc.runtime.text.reasoning import (
    ReasoningSplitter, prompt_opens_thinking, split_whole, template_thinks, thinking_tags,
)  # fmt: skip
from tests.conftest import CHAT_TEMPLATES

pytestmark = pytest.mark.shared

TEMPLATES = CHAT_TEMPLATES
USER = [{"role": "user", "content": "2+2?"}]


def render(name: str, **extra) -> str:
    t = ChatTemplate((TEMPLATES / name).read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>")
    return t.render(USER, add_generation_prompt=True, **extra)


def streamed(
    text: str, starts_inside: bool, size: int, tags: tuple[str, str] = ("<think>", "</think>")
) -> tuple[str, str]:
    s = ReasoningSplitter(starts_inside, tags)
    reasoning = content = ""
    for i in range(0, len(text), size):
        part = s.push(text[i : i + size])
        reasoning, content = reasoning + part.reasoning, content + part.content
    end = s.flush()
    return reasoning + end.reasoning, content + end.content


def test_deepseek_r1_opens_the_block_in_the_prompt():
    for name in (
        "llama-cpp-deepseek-r1.jinja",
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
    ):
        assert template_thinks((TEMPLATES / name).read_text(encoding="utf-8"))
        assert prompt_opens_thinking(render(name, enable_thinking=True)), name
    # this copy of the distill's template closes the block unless enable_thinking is set
    assert not prompt_opens_thinking(render("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"))


def test_qwen3_enable_thinking():
    assert not prompt_opens_thinking(render("Qwen-Qwen3-0.6B.jinja"))  # the model opens it itself
    closed = render("Qwen-Qwen3-0.6B.jinja", enable_thinking=False)
    assert closed.endswith("<think>\n\n</think>\n\n") and not prompt_opens_thinking(closed)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_qwen3_output_split(size):
    out = "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is 4."
    assert streamed(out, False, size) == ("The user asks 2+2. That is 4.\n", "The answer is 4.")
    whole = split_whole(out, False)
    assert (whole.reasoning, whole.content) == ("The user asks 2+2. That is 4.\n", "The answer is 4.")


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_r1_output_starts_inside(size):
    out = "Okay, 2+2 is 4.\n</think>\n\n**4**"
    assert streamed(out, True, size) == ("Okay, 2+2 is 4.\n", "**4**")


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_no_block_is_all_content(size):
    assert streamed("4, and <think> is a tag.", False, size) == ("", "4, and <think> is a tag.")
    assert streamed("  <thin", False, size) == ("", "  <thin")  # an unfinished tag at the end stays content


def test_unclosed_block_is_reasoning():
    assert streamed("<think>still thinking when max_tokens hit", False, 3) == ("still thinking when max_tokens hit", "")
    assert streamed("thinking </thi", True, 1) == ("thinking </thi", "")


GEMMA4 = ("<|channel>thought", "<channel|>")


@pytest.mark.parametrize("name", ["google-gemma-4-31B-it.jinja", "google-gemma-4-31B-it-interleaved.jinja"])
def test_gemma4_thinks_in_its_thought_channel(name):
    """Gemma 4 thinks in `<|channel>thought ... <channel|>`: with thinking on the prompt ends at
    the model's turn (the model opens the block), off it holds an empty block."""
    source = (TEMPLATES / name).read_text(encoding="utf-8")
    assert template_thinks(source) and thinking_tags(source) == GEMMA4
    assert render(name, enable_thinking=True).endswith("<|turn>model\n")
    assert render(name, enable_thinking=False).endswith("<|turn>model\n<|channel>thought\n<channel|>")
    assert not prompt_opens_thinking(render(name, enable_thinking=True))
    assert thinking_tags((TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")) == ("<think>", "</think>")


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_gemma4_output_split(size):
    out = "<|channel>thought\nThe user asks 2+2. That is 4.\n<channel|>The answer is 4."
    assert streamed(out, False, size, GEMMA4) == ("The user asks 2+2. That is 4.\n", "The answer is 4.")
    assert streamed("The answer is 4.", False, size, GEMMA4) == ("", "The answer is 4.")  # thinking off
    assert streamed(out, False, size) == ("", out)  # the <think> splitter leaves it alone


def test_gemma4_reasoning_and_tool_call_through_the_output_parser():
    """The server's parser (OutputSpec as structured.py builds it): the thought channel as
    reasoning, then a Gemma 4 tool call."""
    from rfc.runtime.text.tool_calls import FORMATS

    fmt = next(f for f in FORMATS if f.name == "gemma4")
    parser = OutputParser(OutputSpec(thinks=True, tags=GEMMA4, tool_format=fmt))
    text = '<|channel>thought\nCall f.\n<channel|><|tool_call>call:f{a:<|"|>x<|"|>}<tool_call|>'
    for i in range(0, len(text), 3):
        parser.push(text[i : i + 3])
    parser.finish()
    message = parser.message
    assert message.reasoning == "Call f.\n" and message.content == ""
    assert [(c.name, json.loads(c.arguments)) for c in message.calls] == [("f", {"a": "x"})]
