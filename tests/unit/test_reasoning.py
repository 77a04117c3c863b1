"""The `<think>` split, whole and streamed piece by piece, on the prompts the real Qwen3 and
DeepSeek-R1 templates render."""

import pytest

from rfc.runtime.text.chat import ChatTemplate
from rfc.runtime.text.reasoning import ReasoningSplitter, prompt_opens_thinking, split_whole, template_thinks
from tests.conftest import CHAT_TEMPLATES

pytestmark = pytest.mark.shared

TEMPLATES = CHAT_TEMPLATES
USER = [{"role": "user", "content": "2+2?"}]


def render(name: str, **extra) -> str:
    t = ChatTemplate((TEMPLATES / name).read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>")
    return t.render(USER, add_generation_prompt=True, **extra)


def streamed(text: str, starts_inside: bool, size: int) -> tuple[str, str]:
    s = ReasoningSplitter(starts_inside)
    reasoning = content = ""
    for i in range(0, len(text), size):
        part = s.push(text[i:i + size])
        reasoning, content = reasoning + part.reasoning, content + part.content
    end = s.flush()
    return reasoning + end.reasoning, content + end.content


def test_deepseek_r1_opens_the_block_in_the_prompt():
    for name in ("llama-cpp-deepseek-r1.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
                 "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"):
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
