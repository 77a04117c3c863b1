"""The streamed reading of an output (reasoning, content, tool calls) equals the whole one,
however the text is cut into pieces."""

import json

import pytest

from rfc.runtime.text.assistant_output import OutputParser, OutputSpec, forced_calls, parse_whole
from rfc.runtime.text.tool_calls import BY_NAME

HERMES = OutputSpec(thinks=True, tool_format=BY_NAME["hermes"])
LLAMA = OutputSpec(tool_format=BY_NAME["llama3"])

CASES = [
    (
        HERMES,
        '<think>\nI should call it.\n</think>\n\nLet me look.\n<tool_call>\n{"name": "f", "arguments": {"a": '
        "1}}\n</tool_call>",
        "I should call it.\n",
        "Let me look.",
        [("f", {"a": 1})],
    ),
    (HERMES, "Just text with a < sign and <tool", "", "Just text with a < sign and <tool", []),
    (HERMES, '<tool_call>\n{"name": broken', "", '<tool_call>\n{"name": broken', []),
    (LLAMA, '{"name": "f", "parameters": {"a": [1, 2]}}', "", "", [("f", {"a": [1, 2]})]),
    (LLAMA, "Hello {world}", "", "Hello {world}", []),
    (
        OutputSpec(forced_calls=True),
        '[{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"x": "y"}}]',
        "",
        "",
        [("f", {}), ("g", {"x": "y"})],
    ),
]


def streamed(spec, text, size):
    p = OutputParser(spec)
    reasoning = content = ""
    calls = []
    for i in range(0, len(text), size):
        d = p.push(text[i : i + size])
        reasoning, content, calls = reasoning + d.reasoning, content + d.content, calls + list(d.calls)
    d = p.finish()
    return reasoning + d.reasoning, content + d.content, calls + list(d.calls)


@pytest.mark.parametrize("size", [1, 2, 5, 10_000])
@pytest.mark.parametrize("spec,text,reasoning,content,calls", CASES)
def test_stream_equals_whole(spec, text, reasoning, content, calls, size):
    assert_stream_equals_whole(spec, text, reasoning, content, calls, size)


def assert_stream_equals_whole(spec, text, reasoning, content, calls, size):
    """text pushed in pieces of `size` reads as reasoning, content and calls, as the whole text does."""
    r, c, got = streamed(spec, text, size)
    whole = parse_whole(spec, text)
    assert (r, c.strip()) == (reasoning, content) == (whole.reasoning, whole.content.strip())
    assert (
        [(x.name, json.loads(x.arguments)) for x in got]
        == calls
        == [(x.name, json.loads(x.arguments)) for x in whole.calls]
    )


def test_content_before_a_call_streams_before_it_ends():
    p = OutputParser(HERMES)
    assert p.push("Checking the weather. ").content == "Checking the weather. "
    assert p.push("<tool_").content == ""  # maybe a call: held back
    assert p.push('call>{"name": "f", "arguments": {}}').content == ""
    assert [c.name for c in p.finish().calls] == ["f"]


def test_forced_calls_cut_short_keep_completed_items_and_the_one_cut_off():
    text = '[{"name": "f", "arguments": {"a": 1}},{"name": "f", "arguments": {"a"'
    calls = forced_calls(text)
    assert [(c.name, c.arguments, c.complete) for c in calls] == [("f", '{"a": 1}', True), ("f", '{"a"', False)]
    assert [(c.name, c.arguments, c.complete) for c in forced_calls('[{"name": "f"')] == [("f", "", False)]
    # a name cut off is the one tool it can still be, or no call
    assert [c.name for c in forced_calls('[{"name":"get_w', ("get_time", "get_weather"))] == ["get_weather"]
    assert forced_calls('[{"name":"get_', ("get_time", "get_weather")) == [] and forced_calls("nonsense") == []


def test_a_forced_call_cut_off_is_never_content():
    p = OutputParser(OutputSpec(forced_calls=True, tools=({"type": "function", "function": {"name": "get_weather"}},)))
    p.push('[{"name":"get_weather","arguments":{"city":"Par')
    end = p.finish()
    assert end.content == "" and [(c.name, c.arguments, c.complete) for c in end.calls] == [
        ("get_weather", '{"city":"Par', False)
    ]
