"""Templates with an `enable_thinking` switch think by default, as
llama-server renders them, and a request turns it off (chat_template_kwargs, Ollama's
`think`). DeepSeek-V3.1's template is off unless the switch is set."""

import ollama
import openai
import pytest
import requests

from tests.e2e.clients.conftest import DEEPSEEK_V31

pytestmark = [pytest.mark.shared, pytest.mark.slow]
ASK = [{"role": "user", "content": "What is 2 + 2?"}]


def test_apply_template_opens_the_think_block_by_default(mistral_url):
    on = requests.post(
        mistral_url + "/apply-template", json={"model": DEEPSEEK_V31, "messages": ASK}, timeout=30
    ).json()
    assert on["prompt"].endswith("<think>")
    off = requests.post(
        mistral_url + "/apply-template",
        json={"model": DEEPSEEK_V31, "messages": ASK, "chat_template_kwargs": {"enable_thinking": False}},
        timeout=30,
    ).json()
    assert off["prompt"].endswith("<think></think>")


def test_chat_reasons_by_default_and_not_when_asked(mistral_url):
    client = openai.OpenAI(base_url=mistral_url + "/v1", api_key="unused", max_retries=0)
    on = client.chat.completions.create(model=DEEPSEEK_V31, messages=ASK, temperature=0, max_tokens=12)
    assert on.choices[0].message.model_dump().get("reasoning_content")  # SmolLM2 never closes the block
    off = client.chat.completions.create(
        model=DEEPSEEK_V31,
        messages=ASK,
        temperature=0,
        max_tokens=12,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert not off.choices[0].message.model_dump().get("reasoning_content") and off.choices[0].message.content
    quiet = ollama.Client(host=mistral_url).chat(
        model=DEEPSEEK_V31, messages=ASK, think=False, options={"temperature": 0, "num_predict": 12}
    )
    assert not quiet.message.thinking and quiet.message.content
