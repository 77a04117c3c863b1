"""The `openai` package against the two-model server: model metadata, content parts,
the Responses API and embeddings."""

import math

import ollama
import openai
import pytest
import requests

from tests.e2e.clients.conftest import CHAT, DEMO

pytestmark = [pytest.mark.shared, pytest.mark.slow]
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_models_list_both_with_their_metadata(client):
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert set(cards) == {DEMO, CHAT}
    chat, demo = cards[CHAT], cards[DEMO]
    assert chat["object"] == "model" and chat["owned_by"] == "rfc" and chat["created"] > 0
    assert chat["architecture"] == "llama" and chat["quantization"] == "Q4_1" and chat["parameter_size"] == "135M"
    assert chat["context_length"] == 8192 and chat["tensor_count"] == 272 and 85 < chat["file_size_mb"] < 95
    assert chat["capabilities"] == {
        "completion": True,
        "chat": True,
        "embeddings": True,
        "tools": False,
        "tool_call_format": "generic",
        "json_schema": True,
        "grammar": True,
        "thinking": False,
    }
    assert demo["capabilities"]["chat"] is False and demo["quantization"] == "F32" and demo["context_length"] == 512
    assert chat["targets"] == ["cpu"] and chat["device"] in ("cpu", "ref")
    assert chat["details"]["family"] == "llama" and chat["details"]["parameter_size"] == "135M"
    assert client.models.retrieve(CHAT).model_dump()["embedding_length"] == 576
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.body["code"] == "model_not_found" and CHAT in e.value.body["message"]


def _chat(client, messages, **kwargs) -> str:
    return (
        client.chat.completions.create(model=CHAT, messages=messages, max_tokens=16, temperature=0, **kwargs)
        .choices[0]
        .message.content
    )


def test_content_parts_give_the_same_text_as_a_string(client):
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in QUESTION]
    assert _chat(client, parts) == _chat(client, QUESTION) != ""
    split = [
        QUESTION[0],
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}],
        },
    ]
    joined = [QUESTION[0], {"role": "user", "content": "What is the capital\nof France?"}]
    assert _chat(client, split) == _chat(client, joined)


def test_roles_and_null_content(client, url):
    def prompt(messages):
        return requests.post(url + "/apply-template", json={"model": CHAT, "messages": messages}, timeout=10).json()[
            "prompt"
        ]

    developer = [{"role": "developer", "content": "Answer in French."}, QUESTION[1]]
    system = [{"role": "system", "content": "Answer in French."}, QUESTION[1]]
    assert prompt(developer) == prompt(system) and "Answer in French." in prompt(developer)
    history = [*QUESTION, {"role": "assistant", "content": None}, {"role": "user", "content": "And Spain?"}]
    assert _chat(client, history)  # OpenAI allows an assistant turn without content
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, [{"role": "wizard", "content": "hi"}])
    assert e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as e:
        _chat(
            client,
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}],
        )
    assert e.value.body["param"] == "messages[0].content[0]" and "image_url" in e.value.body["message"]


def test_responses_create_streamed_and_not(client):
    kwargs = dict(
        model=CHAT,
        instructions=QUESTION[0]["content"],
        input=QUESTION[1]["content"],
        max_output_tokens=16,
        temperature=0,
    )
    whole = client.responses.create(**kwargs)
    assert whole.object == "response" and whole.status in ("completed", "incomplete") and whole.output_text
    assert whole.usage.output_tokens <= 16 and whole.usage.input_tokens > 10
    events = list(client.responses.create(**kwargs, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert events[-1].response.output_text == whole.output_text
    assert whole.output_text == _chat(client, QUESTION)  # one model, one prompt, two APIs
    with pytest.raises(openai.NotFoundError):  # no such stored response
        client.responses.create(model=CHAT, input="hi", previous_response_id="resp_123")


def test_responses_input_items(client):
    items = [{"role": "user", "content": [{"type": "input_text", "text": QUESTION[1]["content"]}]}]
    r = client.responses.create(
        model=CHAT, instructions=QUESTION[0]["content"], input=items, max_output_tokens=16, temperature=0
    )
    assert r.output_text == _chat(client, QUESTION)


def test_embeddings_create(client):
    # the SDK asks for base64
    base64 = client.embeddings.create(model=CHAT, input=["The sky is blue", "Grass is green"])
    floats = client.embeddings.create(model=CHAT, input="The sky is blue", encoding_format="float")
    assert [d.index for d in base64.data] == [0, 1] and len(base64.data[0].embedding) == 576
    assert base64.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert math.isclose(sum(x * x for x in floats.data[0].embedding), 1.0, rel_tol=1e-5)
    assert base64.usage.prompt_tokens > 0 and base64.model == CHAT
    assert len(client.embeddings.create(model=DEMO, input="hello", dimensions=16).data[0].embedding) == 16
    ollama_client = ollama.Client(host=str(client.base_url).removesuffix("/v1/"))
    ollama_side = ollama_client.embed(model=CHAT, input="The sky is blue")
    assert ollama_side.embeddings[0] == pytest.approx(floats.data[0].embedding, abs=1e-6)  # one pooling for both APIs


def test_unknown_model_is_404_listing_the_ids(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)
    body = e.value.body
    assert (
        body["code"] == "model_not_found"
        and body["param"] == "model"
        and DEMO in body["message"]
        and CHAT in body["message"]
    )
