"""Speculative decoding through `rfc serve --spec-type ngram`: greedy text is `rfc run`'s (no
speculation) over the OpenAI and native APIs, streamed or not; a request opts out or asks
fewer drafts with llama-server's `speculative.type` / `speculative.n_max`, and asking what the
server cannot do is a 400; /metrics counts the drafts and the accepted ones."""

import pytest
import requests

from tests.e2e.conftest import ServerProcess, sse_json
from tests.e2e.test_server_ops import _scrape

pytestmark = pytest.mark.shared

# The demo model continues a story it has just read: n-gram drafts from the prompt get accepted.
PROMPT = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, Lily went to the park with her mom. Once upon a time, there was a little"
)
MODEL = "{model=stories260K}"


@pytest.fixture(scope="module")
def spec_server(demo_bundle):
    proc = ServerProcess(demo_bundle, "--spec-type", "ngram", "--spec-draft-n-max", "12")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def _complete(url: str, **extra) -> dict:
    r = requests.post(
        url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 64, "temperature": 0, **extra}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_greedy_text_with_drafts_is_that_without(spec_server, rfc_run):
    _, before = _scrape(spec_server.url)
    drafted = _complete(spec_server.url)["choices"][0]["text"]
    _, after = _scrape(spec_server.url)
    assert drafted == rfc_run(PROMPT, 64)
    accepted = (
        after["rocmforge_spec_accepted_tokens_total" + MODEL] - before["rocmforge_spec_accepted_tokens_total" + MODEL]
    )
    verified = after["rocmforge_spec_draft_tokens_total" + MODEL] - before["rocmforge_spec_draft_tokens_total" + MODEL]
    assert 0 < accepted <= verified
    assert 0 < after["rocmforge_spec_acceptance_rate" + MODEL] <= 1

    # opting out, and asking fewer drafts, give the same text
    _, before = _scrape(spec_server.url)
    assert _complete(spec_server.url, **{"speculative.type": "none"})["choices"][0]["text"] == drafted
    _, after = _scrape(spec_server.url)
    assert after["rocmforge_spec_draft_tokens_total" + MODEL] == before["rocmforge_spec_draft_tokens_total" + MODEL]
    assert _complete(spec_server.url, **{"speculative.n_max": 2})["choices"][0]["text"] == drafted


def test_streamed_and_native_text_with_drafts(spec_server, rfc_run):
    want = rfc_run(PROMPT, 64)
    body = {"prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stream": True}
    with requests.post(spec_server.url + "/v1/completions", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200
        assert "".join(c["choices"][0]["text"] for c in sse_json(r) if c["choices"]) == want
    r = requests.post(
        spec_server.url + "/generate",
        json={"prompt": PROMPT, "max_tokens": 64, "temperature": 0, "speculative.type": "ngram"},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["text"] == want


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"speculative.n_max": 13}, "speculative.n_max"),  # above the server's --spec-draft-n-max
        ({"speculative.n_max": 65}, "speculative.n_max"),  # above any
        ({"speculative.type": "draft"}, "speculative.type"),  # no --model-draft
        ({"speculative.type": "ngram-simple"}, "speculative.type"),
    ],
)
def test_what_the_server_cannot_do_is_a_400(spec_server, extra, field):
    r = requests.post(spec_server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, **extra}, timeout=60)
    assert r.status_code == 400, r.text
    assert field in r.text


def test_the_flags_refuse_a_draft_type_without_a_draft_model(demo_bundle):
    from tests.conftest import rfc

    proc = rfc("serve", demo_bundle, "--spec-type", "draft", "--port", "0")
    assert proc.returncode == 2 and "--model-draft" in proc.stderr
