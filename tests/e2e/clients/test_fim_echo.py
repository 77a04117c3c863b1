"""`echo` (with the prompt's logprobs) and `suffix` (fill in the middle) on
/v1/completions through the openai package, and llama-server's /infill. The demo model has
no FIM tokens; a copy of it with three tokens renamed <fim_prefix>, <fim_suffix>,
<fim_middle> (control tokens) stands for a code model."""

import json

import openai
import pytest
import requests

from tests.conftest import DEMO_MODEL, rfc
from tests.e2e.conftest import ServerProcess, sse_json
from tests.gguf_edit import rewrite_gguf

pytestmark = [pytest.mark.slow]
DEMO = "stories260K"
FIM = "stories260K-fim"
FIM_TOKENS = {507: "<fim_prefix>", 510: "<fim_suffix>", 511: "<fim_middle>"}  # rare characters of its vocabulary
CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


@pytest.fixture(scope="module")
def fim_url(tmp_path_factory):
    from gguf import GGUFReader

    root = tmp_path_factory.mktemp("fim")
    reader = GGUFReader(DEMO_MODEL)
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    types = [
        int(reader.fields["tokenizer.ggml.token_type"].parts[i][0])
        for i in reader.fields["tokenizer.ggml.token_type"].data
    ]
    for i, name in FIM_TOKENS.items():
        tokens[i], types[i] = name, CONTROL
    gguf = rewrite_gguf(
        DEMO_MODEL, root / f"{FIM}.gguf", {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
    )
    rfc("compile", gguf, "-o", root / FIM, "-q", check=True)
    proc = ServerProcess(root / FIM, log_dir=root)
    try:
        yield proc.wait_ready().url
    finally:
        proc.stop()


def _count(url: str, text: str) -> int:
    return len(requests.post(url + "/tokenize", json={"content": text}, timeout=10).json()["tokens"])


def test_suffix_fills_in_the_middle(fim_url):
    client = openai.OpenAI(base_url=fim_url + "/v1", api_key="unused", max_retries=0)
    r = client.completions.create(
        model=FIM, prompt="Once upon a time", suffix=" and they lived happily.", max_tokens=8, temperature=0
    )
    # <s> <fim_prefix> prefix <fim_suffix> suffix <fim_middle>
    expected = 1 + 3 + _count(fim_url, "Once upon a time") + _count(fim_url, " and they lived happily.")
    assert r.usage.prompt_tokens == expected and r.choices[0].text is not None
    body = {
        "input_prefix": "Once upon a time",
        "input_suffix": " and they lived happily.",
        "n_predict": 8,
        "temperature": 0,
    }
    infill = requests.post(fim_url + "/infill", json=body, timeout=30).json()
    assert infill["content"] == r.choices[0].text and infill["tokens_evaluated"] == expected
    assert infill["stop"] is True and infill["stop_type"] in ("eos", "limit")
    with requests.post(fim_url + "/infill", json={**body, "stream": True}, stream=True, timeout=30) as s:
        events = list(sse_json(s))
    assert "".join(e.get("content", "") for e in events) == infill["content"] and events[-1]["stop"] is True
    more = requests.post(fim_url + "/infill", json={**body, "prompt": "there"}, timeout=30).json()
    assert more["tokens_evaluated"] == expected + _count(fim_url, "there")
    # Ollama's /api/generate takes `suffix` too
    served = requests.get(fim_url + "/api/tags", timeout=10).json()["models"][0]["name"]
    ollama = requests.post(
        fim_url + "/api/generate",
        json={
            "model": served,
            "prompt": "Once upon a time",
            "stream": False,
            "suffix": " and they lived happily.",
            "options": {"temperature": 0, "num_predict": 8, "repeat_penalty": 1.0},
        },
        timeout=30,
    ).json()
    assert ollama["response"] == infill["content"] and ollama["prompt_eval_count"] == expected


def test_no_fim_tokens_no_suffix(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=DEMO, prompt="Once", suffix="end", max_tokens=2)
    assert e.value.body["param"] == "suffix" and "fill-in-the-middle" in e.value.body["message"]
    r = requests.post(server.url + "/infill", json={"input_prefix": "a", "input_suffix": "b"}, timeout=10)
    assert r.status_code == 400 and "fill-in-the-middle" in r.json()["error"]


def test_echo_with_the_prompts_logprobs(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    prompt = "Once upon a time"
    plain = client.completions.create(model=DEMO, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    echoed = client.completions.create(model=DEMO, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text
    n_prompt = echoed.usage.prompt_tokens
    lp = echoed.choices[0].logprobs
    assert len(lp.tokens) == n_prompt + 6 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens[n_prompt:]) == plain.choices[0].text
    assert lp.token_logprobs[n_prompt:] == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-4)
    assert all(x <= 0 for x in lp.token_logprobs[1:]) and all(len(t) == 2 for t in lp.top_logprobs[1:n_prompt])
    # teacher forcing: the prompt + the greedy text, echoed, gives the greedy tokens the logprobs they were sampled with
    ids = requests.post(server.url + "/tokenize", json={"content": prompt, "add_special": True}, timeout=10).json()[
        "tokens"
    ]
    generated = [
        t
        for t in requests.post(
            server.url + "/generate", json={"prompt": prompt, "max_tokens": 6, "temperature": 0}, timeout=30
        ).json()["tokens"]
    ]
    forced = client.completions.create(
        model=DEMO, prompt=ids + generated, max_tokens=1, temperature=0, logprobs=0, echo=True
    )
    got = forced.choices[0].logprobs.token_logprobs[len(ids) : len(ids) + 6]
    assert got == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=2e-3)
    # streamed: the prompt comes first
    stream = client.completions.create(model=DEMO, prompt=prompt, max_tokens=6, temperature=0, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in stream) == echoed.choices[0].text


def test_echo_on_every_choice(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    r = client.completions.create(model=DEMO, prompt=["Once", "The dog"], n=2, max_tokens=3, temperature=0, echo=True)
    assert [c.text.split(" ")[0] for c in r.choices] == ["Once", "Once", "The", "The"]
    assert json.loads(r.model_dump_json())["usage"]["prompt_tokens"] > 2
