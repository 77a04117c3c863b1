"""Tool-call parsers against the real templates in tests/data/chat-templates: for every
template that renders tools, an assistant turn with a call is rendered through the template,
and the parser detected from that template must read the same call back out of it."""

import json
from pathlib import Path

import pytest

from rfc.runtime.text import tool_calls
from rfc.runtime.text.chat import ChatTemplate
from tests.conftest import CHAT_TEMPLATES

pytestmark = pytest.mark.shared

TEMPLATES = sorted(CHAT_TEMPLATES.glob("*.jinja"))
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
ARGS = {"city": "Paris", "days": 2}
USER = [{"role": "user", "content": "Weather in Paris?"}]

# Templates that render tools but whose call format has no parser yet (detect() says None, so
# the output of these models stays content), or that render no call at all.
UNPARSED = {
    "CohereForAI-c4ai-command-r-plus-tool_use",  # `Action: ```json` with tool_name/parameters
    "Kimi-K3",
    "MiniMax-M3",
    "muse-glimmer",
    "tencent-Hy3",  # formats not parsed yet
    "LFM2-8B-A1B",
    "LFM2.5-Instruct",
    "ibm-granite-granite-3.3-2B-Instruct",  # render no tool_calls
}
# Templates that take the arguments as a JSON string rather than an object.
STRING_ARGUMENTS = {"meetkai-functionary-medium-v3.2"}
EXTRA = {"fireworks-ai-llama-3-firefunction-v2": {"functions": json.dumps(TOOLS), "datetime": "Jul 01 2024"}}

TOOL_TEMPLATES = [p for p in TEMPLATES if "tools" in p.read_text(encoding="utf-8")]


def rendered_call(path: Path) -> str:
    """The assistant turn holding one get_weather call, as the template writes it."""
    t = ChatTemplate(path.read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>")
    args = json.dumps(ARGS) if path.stem in STRING_ARGUMENTS else ARGS
    call = {"id": "123456789", "type": "function", "function": {"name": "get_weather", "arguments": args}}
    extra = EXTRA.get(path.stem, {})
    before = t.render(USER, add_generation_prompt=True, tools=TOOLS, **extra)
    after = t.render(
        USER + [{"role": "assistant", "content": "", "tool_calls": [call]}],
        add_generation_prompt=False,
        tools=TOOLS,
        **extra,
    )
    i = 0
    while i < min(len(before), len(after)) and before[i] == after[i]:
        i += 1
    # The generation prompt may end inside a tag the turn also starts with (`<think>` vs `<tool_call>`):
    # start at the last tag or line boundary before the divergence.
    if i < len(before):
        i = max(after.rfind(">", 0, i), after.rfind("\n", 0, i)) + 1
    return tool_calls.detect(t.source).opened_by(before) + after[i:] if path.stem not in UNPARSED else after[i:]


@pytest.mark.parametrize("path", TOOL_TEMPLATES, ids=lambda p: p.stem)
def test_template_family_parses_its_own_calls(path):
    fmt = tool_calls.detect(path.read_text(encoding="utf-8"))
    if path.stem in UNPARSED:
        assert fmt is None, f"{path.stem} is listed as unparsed but detected as {fmt.name}"
        return
    assert fmt is not None, f"no tool-call parser detected for {path.stem}"
    text = rendered_call(path)
    parsed = fmt.parse(text, TOOLS)
    assert [c.name for c in parsed.calls] == ["get_weather"], (fmt.name, text)
    assert json.loads(parsed.calls[0].arguments) == ARGS
    assert "get_weather" not in parsed.content


def test_families_seen_in_templates():
    """Each family's detection is exercised by at least one real template."""
    seen = {f.name for p in TOOL_TEMPLATES if (f := tool_calls.detect(p.read_text(encoding="utf-8")))}
    assert {
        "hermes",
        "llama3",
        "mistral",
        "qwen3_coder",
        "deepseek",
        "functionary",
        "harmony",
        "glm",
        "invoke",
        "kimi",
        "gemma4",
    } <= seen


@pytest.mark.parametrize(
    "name,text",
    [
        (
            "hermes",
            'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',
        ),
        ("llama3", '<|python_tag|>{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {}}'),
        ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]'),
        (
            "deepseek",
            '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{"a": 1}<｜tool▁call▁end｜>'
            "<｜tool▁call▁begin｜>g<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        ),
        (
            "harmony",
            '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": 1}<|call|>'
            "<|start|>assistant<|channel|>commentary to=functions.g <|constrain|>json<|message|>{}<|call|>",
        ),
    ],
)
def test_parallel_calls(name, text):
    parsed = tool_calls.BY_NAME[name].parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("f", {"a": 1}), ("g", {})]
    assert len({c.id for c in parsed.calls}) == 2


@pytest.mark.parametrize(
    "name,text",
    [
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1'),  # cut off
        ("hermes", "<tool_call>not json</tool_call>"),
        ("hermes", '<tool_call>{"arguments": {}}</tool_call>'),  # no name
        ("hermes", '<tool_call>{"name": "f", "arguments": [1]}</tool_call>'),  # arguments not an object
        ("llama3", '{"name": "f", "parameters": '),
        ("mistral", "[TOOL_CALLS]f[ARGS]{oops"),
        ("qwen3_coder", "<tool_call>\n<function=>\n</function>"),
        ("pythonic", "<|tool_call_start|>[__import__('os').system('x')]<|tool_call_end|>"),  # parsed, never run
        ("gemma4", "<|tool_call>call:f{a:<tool_call|>"),
    ],
)
def test_malformed_output_stays_content(name, text):
    parsed = tool_calls.BY_NAME[name].parse(text)
    assert parsed.calls == () and parsed.content == text


def test_plain_answer_is_content():
    assert tool_calls.BY_NAME["hermes"].parse("The weather is fine.") == tool_calls.Parsed("The weather is fine.")
    assert tool_calls.BY_NAME["llama3"].parse("I think {x} is fine").calls == ()


def test_xml_arguments_follow_the_schema():
    text = (
        "<tool_call>\n<function=f>\n<parameter=zip>\n01234\n</parameter>\n<parameter=n>\n7\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {"properties": {"zip": {"type": "string"}, "n": {"type": "integer"}}},
            },
        }
    ]
    (call,) = tool_calls.BY_NAME["qwen3_coder"].parse(text, tools).calls
    assert json.loads(call.arguments) == {"zip": "01234", "n": 7}


def test_may_start_holds_back_partial_markers():
    hermes = tool_calls.BY_NAME["hermes"]
    assert hermes.may_start("Let me check <tool") and not hermes.may_start("Let me check.")
    llama = tool_calls.BY_NAME["llama3"]
    assert llama.may_start("  {") and not llama.may_start("Hello {")


SCHEMA_TOOLS = [
    {
        "type": "function",
        "function": {"name": "f", "parameters": {"properties": {"a": {"type": "string"}, "n": {"type": "integer"}}}},
    }
]


@pytest.mark.parametrize(
    "name,text,content,calls",
    [
        (
            "qwen3_coder",
            "<tool_call>\n<function=f>\n<parameter=a>\nx\n</parameter>\n<parameter=n>\n2\n</parameter>\n",
            "",
            [("f", {"a": "x", "n": 2})],
        ),  # cut off before </function>: the call runs to the end
        (
            "qwen3_coder",
            "<function=f><parameter=n>2</parameter></function><function=g>",
            "",
            [("f", {"n": 2}), ("g", {})],
        ),
        (
            "glm",
            "<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>x</arg_value>\n<arg_key>n</arg_key><arg_value>2</arg_value>",
            "",
            [("f", {"a": "x", "n": 2})],
        ),
        (
            "invoke",
            '<｜DSML｜function_calls>\n<｜DSML｜invoke name="f">\n'
            '<｜DSML｜parameter name="n" string="true">2</｜DSML｜parameter>\n'
            '<｜DSML｜parameter name="a" string="false">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
            "</｜DSML｜function_calls>",
            "",
            [("f", {"n": "2", "a": "3"})],
        ),
        (
            "invoke",
            '<minimax:tool_call>\n<invoke name="f">\n<parameter name="n">2</parameter>\n'
            '<parameter name="a">2</parameter>\n</invoke>\n</minimax:tool_call>',
            "",
            [("f", {"n": 2, "a": "2"})],
        ),
        (
            "kimi",
            '<|tool_calls_section_begin|><|tool_call_begin|> functions.f:0 <|tool_call_argument_begin|>{"n": 1}'
            "<|tool_call_end|><|tool_call_begin|>g<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
            "",
            [("f", {"n": 1}), ("g", {})],
        ),
        (
            "kimi",
            "<|tool_call_begin|>functions.f:x<|tool_call_argument_begin|>{}<|tool_call_end|>",
            "<|tool_call_begin|>functions.f:x<|tool_call_argument_begin|>{}<|tool_call_end|>",
            [],
        ),
        (
            "deepseek",
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n"
            '```json\n{"n": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
            "",
            [("f", {"n": 1})],
        ),
        ("deepseek", '<｜tool▁call▁begin｜>f<｜tool▁sep｜>{"n": 1}\n', "", [("f", {"n": 1})]),
        ("gemma4", '<|tool_call>call:f{a:<|"|>x, n:y<|"|>, n : 2}<tool_call|>', "", [("f", {"a": "x, n:y", "n": 2})]),
        (
            "harmony",
            "<|channel|>commentary to=functions.f\n<|message|>{}<|call|>",
            "<|channel|>commentary to=functions.f\n<|message|>{}<|call|>",
            [],
        ),  # the header ends at the line
        (
            "harmony",
            '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"n": 1}',
            "<|channel|>commentary",
            [("f", {"n": 1})],
        ),
        (
            "solar",
            "<|tool_calls|><|tool_call:begin|>123<|tool_call:name|> f "
            '<|tool_call:args|>{"n": 1}<|tool_call:end|><|calls|>',
            "",
            [("f", {"n": 1})],
        ),
        ("functionary", '<function=f>{"n": 1}</function> and <function=g>{}', "and <function=g>{}", [("f", {"n": 1})]),
        ("functionary", '>>>all\nLet me see.\n>>>f\n{"n": 1}', "Let me see.", [("f", {"n": 1})]),
        (
            "hermes_minimax",
            '<tool_calls>\n{"name": "f", "arguments": {}}\n{"name": "g", "arguments": {"n": 1}}\n</tool_calls>',
            "",
            [("f", {}), ("g", {"n": 1})],
        ),
        (
            "llama3",
            '  {"name": "f", "parameters": {}} ; {"name": "g", "parameters": {}} trailing',
            "trailing",
            [("f", {}), ("g", {})],
        ),
    ],
)
def test_call_forms(name, text, content, calls):
    """What each family's scanner reads, in the corners of its format (the backtracking
    regexes they replaced read the same)."""
    parsed = tool_calls.BY_NAME[name].parse(text, SCHEMA_TOOLS)
    assert (parsed.content, [(c.name, json.loads(c.arguments)) for c in parsed.calls]) == (content, calls)
