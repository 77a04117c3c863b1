"""OpenAI's `n` (chat and completions, streamed or not) and several prompts
in one /v1/completions, through the openai package: one sequence per choice, the prompt's
KV shared through the prefix cache; usage counts each prompt once and every completion."""

import openai
import pytest

from tests.e2e.clients.conftest import CHAT

pytestmark = [pytest.mark.shared, pytest.mark.slow]
MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_chat_n2_differs_hot_and_agrees_cold(client):
    hot = client.chat.completions.create(model=CHAT, messages=MESSAGES, n=2, temperature=1.0, max_tokens=24, seed=7)
    assert [c.index for c in hot.choices] == [0, 1]
    texts = [c.message.content for c in hot.choices]
    assert texts[0] != texts[1]
    one = client.chat.completions.create(model=CHAT, messages=MESSAGES, temperature=1.0, max_tokens=24, seed=7)
    assert one.choices[0].message.content == texts[0]  # choice 0 has the request's seed, choice 1 the next
    assert hot.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert hot.usage.completion_tokens == sum(len_tokens for len_tokens in (24, 24)) or hot.usage.completion_tokens > 24
    cold = client.chat.completions.create(model=CHAT, messages=MESSAGES, n=2, temperature=0, max_tokens=24)
    assert cold.choices[0].message.content == cold.choices[1].message.content
    assert cold.usage.completion_tokens == 2 * (cold.usage.completion_tokens // 2)  # both choices counted


def test_completions_n2_and_usage(client):
    hot = client.completions.create(model=CHAT, prompt="Once upon a time", n=2, temperature=1.0, max_tokens=16, seed=3)
    assert hot.choices[0].text != hot.choices[1].text
    one = client.completions.create(model=CHAT, prompt="Once upon a time", temperature=1.0, max_tokens=16, seed=3)
    assert hot.usage.prompt_tokens == one.usage.prompt_tokens
    assert hot.usage.completion_tokens == 32 and hot.usage.total_tokens == one.usage.prompt_tokens + 32
    cold = client.completions.create(model=CHAT, prompt="Once upon a time", n=2, temperature=0, max_tokens=16)
    assert cold.choices[0].text == cold.choices[1].text and cold.usage.completion_tokens == 32


def test_streamed_n2_reassembles_to_the_whole_reply(client):
    whole = client.chat.completions.create(model=CHAT, messages=MESSAGES, n=2, temperature=1.0, max_tokens=16, seed=11)
    stream = client.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,
        n=2,
        temperature=1.0,
        max_tokens=16,
        seed=11,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, finish, usage = ["", ""], [None, None], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finish[c.index] = c.finish_reason or finish[c.index]
    assert texts == [c.message.content for c in whole.choices]
    assert finish == [c.finish_reason for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens and usage.prompt_tokens == whole.usage.prompt_tokens
    comp = client.completions.create(
        model=CHAT, prompt="Once upon a time", n=2, temperature=0, max_tokens=8, stream=True
    )
    ctexts = ["", ""]
    for chunk in comp:
        for c in chunk.choices:
            ctexts[c.index] += c.text
    assert ctexts[0] == ctexts[1] != ""


def test_several_prompts_in_one_completion(client):
    prompts = ["Once upon a time", "The capital of France is"]
    both = client.completions.create(model=CHAT, prompt=prompts, n=2, temperature=0, max_tokens=8)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    alone = [client.completions.create(model=CHAT, prompt=p, temperature=0, max_tokens=8) for p in prompts]
    assert [c.text for c in both.choices] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
    assert both.usage.prompt_tokens == alone[0].usage.prompt_tokens + alone[1].usage.prompt_tokens
    assert both.usage.completion_tokens == 4 * 8


def test_choices_share_the_prompts_kv_blocks(client, url):
    """Choices 2..n find the prompt's full KV blocks in the prefix cache: computed once."""
    import re

    import requests

    def counters() -> dict[str, float]:
        text = requests.get(url + "/metrics", timeout=10).text
        return {
            k: float(v)
            for k, v in re.findall(
                r'^rocmforge_prefix_cache_(hit|miss)_tokens_total\{model="' + CHAT + r'"\} (\S+)$', text, re.M
            )
        }

    prompt = (
        "A long prompt that fills several blocks of the cache: " + " ".join(f"word{i}" for i in range(60)) + " The end."
    )
    before = counters()
    r = client.completions.create(model=CHAT, prompt=prompt, n=4, max_tokens=4, temperature=1.0)
    after = counters()
    full_blocks = r.usage.prompt_tokens // 16 * 16
    assert full_blocks >= 64
    assert after["hit"] - before["hit"] >= 3 * full_blocks  # the three later choices reuse the first one's blocks
    assert after["miss"] - before["miss"] <= r.usage.prompt_tokens + 3 * 16
