"""Chat input as clients send it (runtime/text/messages.py), checked against every real chat
template in tests/data/chat-templates: content parts must render exactly as strings do."""

import pytest

from rfc.runtime.text.chat import ChatTemplate, ChatTemplateError
from rfc.runtime.text.messages import MessageError, flatten_content, normalize_messages, template_knows_role
from tests.conftest import CHAT_TEMPLATES

TEMPLATES = sorted(CHAT_TEMPLATES.glob("*.jinja"))
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
]


def _as_parts(messages):
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]


def test_text_parts_are_joined_with_newlines():
    assert flatten_content([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "c") == "a\nb"
    assert flatten_content([{"type": "input_text", "text": "x"}, "y"], "c") == "x\ny"
    assert flatten_content("plain", "c") == "plain"


@pytest.mark.parametrize(
    "part, field",
    [
        ({"type": "image_url", "image_url": {"url": "x"}}, "messages[0].content[1]"),
        ({"type": "input_audio"}, "messages[0].content[1]"),
        ({"text": "no type"}, "messages[0].content[1]"),
        ({"type": "text", "text": 5}, "messages[0].content[1].text"),
    ],
)
def test_other_parts_are_refused_naming_the_field(part, field):
    with pytest.raises(MessageError) as e:
        normalize_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}])
    assert e.value.field == field


def test_roles():
    with pytest.raises(MessageError) as e:
        normalize_messages([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])
    assert e.value.field == "messages[1].role" and "robot" in str(e.value)
    with pytest.raises(MessageError) as e:
        normalize_messages([{"role": "user", "content": None}])
    assert e.value.field == "messages[0].content"
    assert normalize_messages([{"role": "assistant", "content": None}])[0]["content"] == ""
    plain = "{% for m in messages %}{{ m.role }}{% endfor %}"
    knows = "{% if m.role == 'developer' %}{% endif %}"
    assert normalize_messages([{"role": "developer", "content": "x"}], plain)[0]["role"] == "system"
    assert normalize_messages([{"role": "developer", "content": "x"}], knows)[0]["role"] == "developer"
    assert template_knows_role('role == "developer"', "developer") and not template_knows_role(
        "developers", "developer"
    )


@pytest.mark.shared
def test_every_shared_template_renders_parts_as_it_renders_strings():
    assert len(TEMPLATES) >= 60
    rendered = 0
    for path in TEMPLATES:
        template = ChatTemplate(path.read_text(), bos_token="<s>", eos_token="</s>")
        try:
            expected = template.render(CONVERSATION, add_generation_prompt=True)
        except ChatTemplateError:
            continue  # a template that wants something else of a conversation (tools, alternation)
        source = template.source
        assert template.render(normalize_messages(_as_parts(CONVERSATION), source)) == expected, path.name
        assert "'type'" not in template.render(normalize_messages(_as_parts(CONVERSATION), source)), path.name
        rendered += 1
    assert rendered >= len(TEMPLATES) - 6


def test_names_are_kept_for_templates_that_use_them():
    (m,) = normalize_messages([{"role": "user", "content": "hi", "name": "ann"}])
    assert m == {"role": "user", "content": "hi", "name": "ann"}


def test_a_message_that_is_not_an_object():
    with pytest.raises(MessageError) as e:
        normalize_messages(["hi"])
    assert e.value.field == "messages[0]"
    with pytest.raises(MessageError):
        normalize_messages([])
