"""gpt-oss's harmony format on the server side (runtime/reasoning.py HarmonySplitter): the
analysis channel is reasoning_content, the final channel content, commentary (tool calls) goes
to the harmony tool parser untouched; streamed in any pieces it equals the whole reading."""

import json
import time

import pytest

from rfc.runtime.assistant_output import OutputParser, OutputSpec, parse_whole
from rfc.runtime.reasoning import HarmonySplitter, prompt_opens_thinking, template_is_harmony, template_thinks
from rfc.runtime.tool_calls import BY_NAME
from tests.conftest import CHAT_TEMPLATES

HARMONY = OutputSpec(thinks=True, harmony=True)
TOOLS = OutputSpec(thinks=True, harmony=True, tool_format=BY_NAME["harmony"])
INSIDE = OutputSpec(thinks=True, harmony=True, starts_inside=True)

CASES = [
    (HARMONY, "<|channel|>analysis<|message|>User asks 2+2. Simple.<|end|><|start|>assistant<|channel|>final<|message|>"
              "2 + 2 = 4.<|return|>", "User asks 2+2. Simple.", "2 + 2 = 4.", []),
    (HARMONY, "<|channel|>final<|message|>No thinking <b>here</b> | at all.", "", "No thinking <b>here</b> | at all.", []),
    (HARMONY, "Plain text, not harmony: <|channel|> stays.", "", "Plain text, not harmony: <|channel|> stays.", []),
    (HARMONY, "<|channel|>analysis<|message|>cut off in the middle <|en", "cut off in the middle <|en", "", []),
    (INSIDE, "Already thinking.<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>", "Already thinking.",
     "Done.", []),
    (TOOLS, "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
            "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>", "Need the weather.", "",
     [("get_weather", {"city": "Paris"})]),
    (TOOLS, "<|channel|>analysis<|message|>Two calls.<|end|><|start|>assistant to=functions.f<|channel|>commentary json"
            "<|message|>{\"a\": 1}<|call|>", "Two calls.", "", [("f", {"a": 1})]),
]  # fmt: skip


def streamed(spec, text, size):
    p = OutputParser(spec)
    reasoning = content = ""
    calls = []
    for i in range(0, len(text), size):
        d = p.push(text[i:i + size])
        reasoning, content, calls = reasoning + d.reasoning, content + d.content, calls + list(d.calls)
    d = p.finish()
    return reasoning + d.reasoning, content + d.content, calls + list(d.calls)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 10_000])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_stream_equals_whole(case, size):
    spec, text, reasoning, content, calls = CASES[case]
    r, c, got = streamed(spec, text, size)
    whole = parse_whole(spec, text)
    assert (r, c.strip()) == (reasoning, content) == (whole.reasoning, whole.content.strip())
    assert [(x.name, json.loads(x.arguments)) for x in got] == calls == [(x.name, json.loads(x.arguments)) for x in whole.calls]


def test_reasoning_streams_before_the_message_ends():
    s = HarmonySplitter(starts_inside=False)
    assert s.push("<|channel|>analy").reasoning == ""  # the header: held until <|message|>
    assert s.push("sis<|message|>Let me think").reasoning == "Let me think"
    assert s.push(" more<|e").reasoning == " more"  # maybe <|end|>: held
    assert s.push("nd|><|start|>assistant<|channel|>final<|message|>Hi").content == "Hi"


def test_the_real_template_is_harmony():
    source = (CHAT_TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(encoding="utf-8")
    assert template_is_harmony(source) and template_thinks(source)
    qwen3 = (CHAT_TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
    assert template_thinks(qwen3) and not template_is_harmony(qwen3)
    assert prompt_opens_thinking("<|start|>assistant<|channel|>analysis<|message|>")
    assert not prompt_opens_thinking("<|start|>assistant")


def test_a_header_that_never_ends_is_content_and_pieces_cost_their_length():
    s = HarmonySplitter(starts_inside=False)
    assert s.push("<|channel|>" + "x" * 300).content.startswith("<|channel|>")  # no <|message|> within 256
    s = HarmonySplitter(starts_inside=True)
    started = time.monotonic()
    got = sum(len(s.push("<|e" if i % 2 else "a").reasoning) for i in range(200_000))  # never an end marker
    assert time.monotonic() - started < 5 and got + len(s.flush().reasoning) == 100_000 * 4
