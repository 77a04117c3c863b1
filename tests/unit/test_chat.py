"""Chat-template rendering: the 70 real templates in tests/data/chat-templates, the sandbox, and the budget."""

import json
from pathlib import Path

import pytest

from rfc.runtime.text.chat import ChatTemplate, ChatTemplateError, RenderLimits, fallback_template
from tests.conftest import CHAT_TEMPLATES

TEMPLATES = sorted(CHAT_TEMPLATES.glob("*.jinja"))

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Germany?"},
]
WITHOUT_SYSTEM = CONVERSATION[1:]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}

# Templates that refuse a system message by design: (the template's own message, the
# conversation they accept instead).
REFUSE_SYSTEM = {
    "google-gemma-2-2b-it": ("System role not supported", WITHOUT_SYSTEM),
}

# Templates that need inputs beyond the messages; without them they fail, with a clear error.
# The *-tool_use templates are the tool-calling variants of their models' templates and loop
# over `tools`; firefunction-v2 expects the `functions` JSON and `datetime` strings that
# Fireworks' API (and llama.cpp's firefunction handler) passes.
NEEDS_INPUTS = {
    "CohereForAI-c4ai-command-r-plus-tool_use": {"tools": [WEATHER_TOOL]},
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": {"tools": [WEATHER_TOOL]},
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": {"tools": [WEATHER_TOOL]},
    "fireworks-ai-llama-3-firefunction-v2": {
        "functions": json.dumps([WEATHER_TOOL]),
        "datetime": "Jul 01 2024",
    },
}

# Every other template renders all four messages' text verbatim; no weaker assertions needed.


def load(path: Path) -> ChatTemplate:
    return ChatTemplate(path.read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>")


def assert_contains_every_message(prompt: str, messages: list[dict]) -> None:
    assert isinstance(prompt, str) and prompt
    for message in messages:
        assert message["content"] in prompt, f"{message['role']} message missing"


# --- the real templates -------------------------------------------------------------------


@pytest.mark.shared
def test_corpus_is_complete():
    assert len(TEMPLATES) == 70


@pytest.mark.shared
@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_real_template_renders_conversation(path: Path):
    template = load(path)
    if path.stem in REFUSE_SYSTEM:
        message, accepted = REFUSE_SYSTEM[path.stem]
        with pytest.raises(ChatTemplateError) as raised:
            template.render(CONVERSATION)
        assert str(raised.value) == message
        assert_contains_every_message(template.render(accepted), accepted)
        return
    if path.stem in NEEDS_INPUTS:
        with pytest.raises(ChatTemplateError):
            template.render(CONVERSATION)
        prompt = template.render(CONVERSATION, **NEEDS_INPUTS[path.stem])
    else:
        prompt = template.render(CONVERSATION)
    assert_contains_every_message(prompt, CONVERSATION)


def tool_conversation(arguments) -> list[dict]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "Sunny, 25 C"},
        {"role": "user", "content": "Thanks!"},
    ]


# The extras beyond HF's set that real templates reach only on their tool-calling paths.
@pytest.mark.shared
@pytest.mark.parametrize(
    "name",
    [
        "Kimi-K2-Instruct",  # list.append / list.pop on a queue of tool-call ids
        "Kimi-K2-Thinking",  # same
        "deepseek-ai-DeepSeek-V3.2",  # | from_json on string arguments
        "deepseek-ai-DeepSeek-V4",  # same
        "llama-cpp-deepseek-r1",  # tools | map(...) | tojson: a generator serialized as a list
    ],
)
def test_tool_calling_paths_render(name: str):
    template = load(CHAT_TEMPLATES / f"{name}.jinja")
    prompt = template.render(tool_conversation('{"city": "Paris"}'), tools=[WEATHER_TOOL])
    for text in ("get_weather", "Paris", "Sunny, 25 C", "Thanks!"):
        assert text in prompt


@pytest.mark.shared
def test_template_switches_pass_through():
    template = load(CHAT_TEMPLATES / "Qwen-Qwen3-0.6B.jinja")
    assert "<think>\n\n</think>" not in template.render(WITHOUT_SYSTEM)
    assert template.render(WITHOUT_SYSTEM, enable_thinking=False).endswith("<think>\n\n</think>\n\n")


# --- variables, filters, errors -----------------------------------------------------------

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def test_llama2_template_substitutes_bos_and_eos():
    template = ChatTemplate(LLAMA2, bos_token="<BOS>", eos_token="<EOS>")
    assert template.render(CONVERSATION) == (
        "<BOS>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n"
        "What is the capital of France? [/INST] The capital of France is Paris. <EOS>"
        "<BOS>[INST] And of Germany? [/INST]"
    )


def test_raise_exception_carries_the_templates_message():
    template = ChatTemplate(LLAMA2, bos_token="<s>", eos_token="</s>")
    with pytest.raises(ChatTemplateError) as raised:
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert str(raised.value) == "Conversation roles must alternate user/assistant/user/assistant/..."


def test_fallback_template_renders_chatml():
    template = ChatTemplate(fallback_template(), bos_token="<s>", eos_token="</s>")
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "image"},
                {"type": "text", "text": "!"},
            ],
        },
    ]
    assert template.render(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.render(messages, add_generation_prompt=False).endswith("Hi!<|im_end|>\n")


def test_tojson_keeps_unicode_and_markup_and_takes_json_dumps_options():
    template = ChatTemplate(
        "{{ tools | tojson }}|{{ tools | tojson(indent=2, sort_keys=true) }}"
        "|{{ tools | tojson(separators=(',', ':')) }}",
        bos_token="",
        eos_token="",
    )
    tools = [{"z": "<b>&'été'", "a": 1}]
    compact, indented, tight = template.render([], tools=tools).split("|")
    assert compact == json.dumps(tools, ensure_ascii=False)
    assert indented == json.dumps(tools, ensure_ascii=False, indent=2, sort_keys=True)
    assert tight == json.dumps(tools, ensure_ascii=False, separators=(",", ":"))


def test_strftime_now_and_default_variables():
    template = ChatTemplate(
        "{{ strftime_now('%Y') | length }} {{ tools is none }} {{ documents is none }}"
        " {{ enable_thinking is defined }}",
        bos_token="",
        eos_token="",
    )
    assert template.render([]) == "4 True True False"


def test_rendering_does_not_mutate_the_callers_messages():
    template = ChatTemplate("{% do messages.pop() %}{{ messages | length }}", "", "")
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert template.render(messages) == "1"
    assert len(messages) == 2


def test_loop_controls_and_generation_tag():
    source = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    )
    assert ChatTemplate(source, "", "").render([{"content": "a"}, {"content": "b"}]) == "a"


def test_syntax_error_names_the_line():
    with pytest.raises(ChatTemplateError, match=r"^chat template syntax error at line 3: "):
        ChatTemplate("ok\nok\n{% if %}", "", "")


def test_runtime_error_is_one_line_with_the_template_line():
    template = ChatTemplate("line one\n{{ messages[0].content + 1 }}", "", "")
    with pytest.raises(ChatTemplateError, match=r"^chat template failed at line 2: TypeError: ") as raised:
        template.render([{"role": "user", "content": "text"}])
    assert "\n" not in str(raised.value)


# --- sandbox ------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''['__class__'] }}",
    "{{ '' | attr('__class__') }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ messages | map(attribute='__class__') | list }}",
    "{% if ''.__class__ %}hidden{% endif %}",
    "{{ cycler.__init__.__globals__.os.system('touch ' ~ sentinel) }}",
    "{{ joiner.__init__.__globals__['os'].popen('touch ' ~ sentinel).read() }}",
    "{{ namespace.__init__.__globals__.os.system('touch ' ~ sentinel) }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch ' ~ sentinel) }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch ' ~ sentinel) }}",
    "{{ messages.pop.__self__ }}",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_sandbox_escape_raises_and_does_not_execute(payload: str, tmp_path: Path):
    sentinel = tmp_path / "escaped"
    template = ChatTemplate(payload, bos_token="", eos_token="")
    with pytest.raises(ChatTemplateError, match="template tried to access an unsafe attribute"):
        template.render([{"role": "user", "content": "hi"}], sentinel=str(sentinel))
    assert not sentinel.exists()


def test_mutating_other_objects_is_refused():
    template = ChatTemplate("{% do messages[0].update({'role': 'system'}) %}", "", "")
    with pytest.raises(ChatTemplateError, match="unsafe attribute 'update' of 'dict'"):
        template.render([{"role": "user", "content": "hi"}])


def test_no_loader_no_lipsum():
    for source in ("{% include 'etc/passwd' %}", "{{ lipsum(1000) }}"):
        with pytest.raises(ChatTemplateError):
            ChatTemplate(source, "", "").render([])


# --- budget -------------------------------------------------------------------------------

SMALL = RenderLimits(max_output_chars=10_000, max_steps=10_000, timeout_s=5.0)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps"),
        ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}", "steps"),
        ("{% for m in messages %}{% do messages.append(m) %}{% endfor %}", "steps"),
        ("{% for i in range(5000) %}xxxxxxxx{% endfor %}", "output exceeds"),
        ("{{ 'x' * 10**12 }}", "value larger"),
        ("{{ [0] * 10**12 }}", "value larger"),
        ("{{ 10 ** 100000 }}", "integer larger"),
        ("{% set s = namespace(v='x') %}{% for i in range(60) %}{% set s.v = s.v ~ s.v %}{% endfor %}", "value larger"),
        ("{{ messages | tojson(indent=10**9) }}", "indent"),
        ("{{ 'x'.center(10**12) }}", "value larger"),
        ("{{ 'x' | center(10**12) }}", "value larger"),
        ("{{ ('a\\n' * 1000) | indent(10**9) }}", "value larger"),
        ("{{ ('x' * 1000) | replace('x', 'y' * 1000) }}", "value larger"),
        ("{{ '%0999999999999d' % 1 }}", "value larger"),
        ("{{ '{:>999999999999}'.format(1) }}", "value larger"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    ],
)
def test_hostile_template_is_stopped(source: str, reason: str):
    template = ChatTemplate(source, bos_token="", eos_token="", limits=SMALL)
    with pytest.raises(ChatTemplateError, match=reason):
        template.render([{"role": "user", "content": "hi"}])


def test_wall_clock_limit():
    template = ChatTemplate(
        "{% for i in range(100000) %}{{ (range(100000) | list | length) * 0 }}{% endfor %}",
        bos_token="",
        eos_token="",
        limits=RenderLimits(timeout_s=0.2),
    )
    with pytest.raises(ChatTemplateError, match="took longer than 0.2 s"):
        template.render([])
