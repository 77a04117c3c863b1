"""The `anthropic` package against `rfc serve`: Messages, streamed and not, and count_tokens.
(The SDK no longer takes sampling parameters as arguments; `extra_body` carries them.)"""

import anthropic
import ollama
import requests
import openai
import pytest

from tests.e2e.clients.conftest import CHAT, DEMO
from tests.e2e.conftest import ServerProcess

pytestmark = [pytest.mark.shared, pytest.mark.slow]
SYSTEM = "You are a helpful assistant."
MESSAGES = [{"role": "user", "content": "Hello! Who are you?"}]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(url):
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)


def test_messages_create_streamed_and_not(client, url):
    whole = client.messages.create(model=CHAT, system=SYSTEM, messages=MESSAGES, max_tokens=16, extra_body=GREEDY)
    assert whole.type == "message" and whole.role == "assistant" and whole.model == CHAT
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.content[0].type == "text" and whole.content[0].text
    assert whole.usage.output_tokens <= 16 and whole.usage.input_tokens > 10
    with client.messages.stream(
        model=CHAT, system=SYSTEM, messages=MESSAGES, max_tokens=16, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text and final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    chat = openai.OpenAI(base_url=url + "/v1", api_key="unused").chat.completions.create(
        model=CHAT, messages=[{"role": "system", "content": SYSTEM}, *MESSAGES], max_tokens=16, temperature=0
    )
    assert chat.choices[0].message.content == whole.content[0].text  # the same prompt through two APIs


def test_multi_turn_blocks_and_stop_sequences(client):
    turns = [
        {"role": "user", "content": [{"type": "text", "text": "Count to five."}]},
        {"role": "assistant", "content": "1, 2, 3, 4, 5."},
        {"role": "user", "content": "Again, please."},
    ]
    free = client.messages.create(model=CHAT, messages=turns, max_tokens=12, extra_body=GREEDY).content[0].text
    stop = free.strip()[1:3] or free[1:3]
    stopped = client.messages.create(
        model=CHAT, messages=turns, max_tokens=12, stop_sequences=[stop], extra_body=GREEDY
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert free.startswith(stopped.content[0].text) and stop not in stopped.content[0].text


def test_count_tokens_matches_usage(client):
    counted = client.messages.count_tokens(model=CHAT, system=SYSTEM, messages=MESSAGES)
    used = client.messages.create(model=CHAT, system=SYSTEM, messages=MESSAGES, max_tokens=1, extra_body=GREEDY)
    assert counted.input_tokens == used.usage.input_tokens > 0


def test_errors_are_anthropic_shaped(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="not-a-model", messages=MESSAGES, max_tokens=4)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    assert CHAT in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model=CHAT,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
                    ],
                }
            ],
            max_tokens=4,
        )
    assert e.value.body["error"]["type"] == "invalid_request_error" and "image" in e.value.body["error"]["message"]


def test_x_api_key_is_accepted(demo_bundle):
    proc = ServerProcess(demo_bundle, env={"RFC_API_KEY": "sekret"})
    try:
        proc.wait_ready()
        good = anthropic.Anthropic(base_url=proc.url, api_key="sekret", max_retries=0)  # sends x-api-key
        reply = good.messages.create(
            model="claude-anything", messages=[{"role": "user", "content": "Once"}], max_tokens=3
        )
        assert reply.model == DEMO and reply.usage.output_tokens == 3  # one model: any name reaches it
        with pytest.raises(anthropic.AuthenticationError) as e:
            anthropic.Anthropic(base_url=proc.url, api_key="wrong", max_retries=0).messages.create(
                model=DEMO, messages=[{"role": "user", "content": "Once"}], max_tokens=3
            )
        assert e.value.body["error"]["type"] == "authentication_error"
    finally:
        proc.stop()


def test_a_final_assistant_message_is_prefill(client, url):
    """Anthropic's prefill: the reply goes on from the final assistant message's text, as the
    same prompt text completed through /v1/completions does (and vLLM's continue_final_message)."""
    prefill = [*MESSAGES, {"role": "assistant", "content": "My name is"}]
    reply = client.messages.create(model=CHAT, system=SYSTEM, messages=prefill, max_tokens=8, extra_body=GREEDY)
    fresh = requests.post(
        url + "/apply-template",
        json={"model": CHAT, "messages": [{"role": "system", "content": SYSTEM}, *MESSAGES]},
        timeout=30,
    ).json()["prompt"]
    raw = openai.OpenAI(base_url=url + "/v1", api_key="unused").completions.create(
        model=CHAT, prompt=fresh + "My name is", max_tokens=8, temperature=0
    )
    assert reply.content[0].text == raw.choices[0].text and reply.content[0].text.strip()
    assert reply.usage.input_tokens == raw.usage.prompt_tokens
    counted = client.messages.count_tokens(model=CHAT, system=SYSTEM, messages=prefill)
    assert counted.input_tokens == reply.usage.input_tokens
    chat = openai.OpenAI(base_url=url + "/v1", api_key="unused").chat.completions.create(
        model=CHAT,
        messages=[{"role": "system", "content": SYSTEM}, *prefill],
        max_tokens=8,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert chat.choices[0].message.content == reply.content[0].text
    # without the flags, as llama-server: the final assistant message is continued; an explicit
    # add_generation_prompt (vLLM's default, sent) opens a new turn instead
    oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, *prefill]
    plain = oai.chat.completions.create(model=CHAT, messages=messages, max_tokens=8, temperature=0)
    assert plain.choices[0].message.content == reply.content[0].text
    fresh_turn = oai.chat.completions.create(
        model=CHAT, messages=messages, max_tokens=8, temperature=0, extra_body={"add_generation_prompt": True}
    )
    assert fresh_turn.usage.prompt_tokens > plain.usage.prompt_tokens  # the closed turn and a new header
    ollama_reply = ollama.Client(host=url).chat(
        model=CHAT, messages=messages, options={"temperature": 0, "num_predict": 8, "repeat_penalty": 1.0}
    )
    assert ollama_reply.message.content == reply.content[0].text
    template = requests.post(url + "/apply-template", json={"model": CHAT, "messages": messages}, timeout=30).json()
    assert template["prompt"] == fresh + "My name is"
    with pytest.raises(openai.BadRequestError) as e:  # vLLM refuses the two together too
        openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).chat.completions.create(
            model=CHAT,
            messages=prefill,
            max_tokens=1,
            extra_body={"continue_final_message": True, "add_generation_prompt": True},
        )
    assert e.value.body["param"] == "add_generation_prompt"
