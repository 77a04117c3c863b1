"""vLLM's sampling and output extras through the `openai` client's extra_body, on the real
SmolLM2: each changes the answer as vLLM's does (checked against the same request without it),
and each one rfc does not implement is a 400 naming it."""

import openai
import pytest
import requests

from tests.e2e.clients.conftest import CHAT

pytestmark = pytest.mark.shared

PROMPT = "The capital of France is"
GREEDY = {"model": CHAT, "temperature": 0}


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _greedy_ids(url: str, prompt: object, n: int) -> list[int]:
    body = {"model": CHAT, "prompt": prompt, "n_predict": n, "temperature": 0, "return_tokens": True}
    return requests.post(url + "/completion", json=body, timeout=60).json()["tokens"]


def _text(url: str, ids: list[int]) -> str:
    return requests.post(url + "/detokenize", json={"model": CHAT, "tokens": ids}, timeout=10).json()["content"]


def test_stop_token_ids_and_stop_strings_kept(client, url):
    ids = _greedy_ids(url, PROMPT, 6)
    reply = client.completions.create(prompt=PROMPT, max_tokens=6, extra_body={"stop_token_ids": [ids[2]]}, **GREEDY)
    assert reply.choices[0].text == _text(url, ids[:2]) and reply.choices[0].finish_reason == "stop"
    free = client.completions.create(prompt=PROMPT, max_tokens=12, **GREEDY).choices[0].text
    cut = free.index(".") + 1
    kept = client.completions.create(
        prompt=PROMPT, max_tokens=12, stop=["."], extra_body={"include_stop_str_in_output": True}, **GREEDY
    )
    assert kept.choices[0].text == free[:cut] and kept.choices[0].finish_reason == "stop"


def test_min_tokens_holds_off_the_end(client):
    messages = [{"role": "user", "content": "Say hi"}]
    free = client.chat.completions.create(messages=messages, max_tokens=60, **GREEDY)
    n = free.usage.completion_tokens
    assert free.choices[0].finish_reason == "stop" and n < 50  # the model ends by itself first
    longer = client.chat.completions.create(
        messages=messages, max_tokens=60, extra_body={"min_tokens": n + 5}, **GREEDY
    )
    assert longer.usage.completion_tokens >= n + 5
    assert longer.choices[0].message.content.startswith(free.choices[0].message.content)


def test_truncate_prompt_tokens_keeps_the_last_ones(client, url):
    ids = requests.post(url + "/tokenize", json={"model": CHAT, "prompt": PROMPT}, timeout=10).json()["tokens"]
    cut = client.completions.create(prompt=PROMPT, max_tokens=4, extra_body={"truncate_prompt_tokens": 2}, **GREEDY)
    tail = client.completions.create(prompt=ids[-2:], max_tokens=4, **GREEDY)
    assert cut.usage.prompt_tokens == 2 and cut.choices[0].text == tail.choices[0].text


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"prompt_logprobs": 1}, "prompt_logprobs"),
        ({"allowed_token_ids": [1, 2]}, "allowed_token_ids"),
        ({"bad_words": ["Paris"]}, "bad_words"),
        ({"use_beam_search": True}, "use_beam_search"),
        ({"length_penalty": 0.5}, "length_penalty"),
        ({"cache_salt": "tenant-a"}, "cache_salt"),
        ({"spaces_between_special_tokens": False}, "spaces_between_special_tokens"),
        ({"stop_token_ids": [10**9]}, "stop_token_ids"),
        ({"min_tokens": 9}, "min_tokens"),  # past max_tokens
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ],
)
def test_what_rfc_does_not_do_is_a_400(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(prompt=PROMPT, max_tokens=4, extra_body=extra, **GREEDY)
    assert e.value.body["param"] == param, e.value.body


def test_defaults_and_scheduling_hints_are_accepted(client):
    extra = {"use_beam_search": False, "length_penalty": 1.0, "bad_words": [], "priority": 3, "request_id": "r-1"}
    assert client.completions.create(prompt=PROMPT, max_tokens=2, extra_body=extra, **GREEDY).choices[0].text
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(messages=[{"role": "user", "content": "x"}], extra_body={"echo": True}, **GREEDY)
    assert e.value.body["param"] == "echo"


def test_continuous_usage_stats_put_the_usage_in_every_chunk(client):
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = list(
        client.chat.completions.create(
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=8,
            stream=True,
            stream_options=options,
            **GREEDY,
        )
    )
    counts = [c.usage.completion_tokens for c in chunks]
    assert all(c.usage is not None for c in chunks) and counts == sorted(counts) and counts[-1] == 8
    assert len({c.usage.prompt_tokens for c in chunks}) == 1
    plain = list(
        client.chat.completions.create(
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    # OpenAI's: null in every chunk but the last, which has the whole usage
    assert all(c.usage is None for c in plain[:-1]) and plain[-1].usage.completion_tokens == 8


def test_skip_special_tokens_false_keeps_their_text(client):
    """<|im_start|> (id 1, special, not an end token) forced by logit_bias: its text is left out
    of the output by default, and kept with skip_special_tokens false."""
    forced = {"logit_bias": {"1": 100}}
    skipped = client.completions.create(prompt=PROMPT, max_tokens=2, **forced, **GREEDY)
    kept = client.completions.create(
        prompt=PROMPT, max_tokens=2, extra_body={"skip_special_tokens": False}, **forced, **GREEDY
    )
    assert skipped.usage.completion_tokens == kept.usage.completion_tokens == 2
    assert skipped.choices[0].text == "" and kept.choices[0].text == "<|im_start|><|im_start|>"
