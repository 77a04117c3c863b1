"""gpt-oss's harmony format on the server side (runtime/text/reasoning.py HarmonySplitter): the
analysis channel is reasoning_content, the final channel content, commentary (tool calls) goes
to the harmony tool parser untouched; streamed in any pieces it equals the whole reading."""

import time

import pytest

from rfc.runtime.text.assistant_output import OutputSpec
from rfc.runtime.text.reasoning import HarmonySplitter, prompt_opens_thinking, template_is_harmony, template_thinks
from rfc.runtime.text.tool_calls import BY_NAME
from tests.conftest import CHAT_TEMPLATES
from tests.unit.test_assistant_output import assert_stream_equals_whole

HARMONY = OutputSpec(thinks=True, harmony=True)
TOOLS = OutputSpec(thinks=True, harmony=True, tool_format=BY_NAME["harmony"])
INSIDE = OutputSpec(thinks=True, harmony=True, starts_inside=True)

CASES = [
    (HARMONY, "<|channel|>analysis<|message|>User asks 2+2. Simple.<|end|><|start|>assistant<|channel|>final<|message|>"
              "2 + 2 = 4.<|return|>", "User asks 2+2. Simple.", "2 + 2 = 4.", []),
    (HARMONY, "<|channel|>final<|message|>No thinking <b>here</b> | at all.", "", "No thinking <b>here</b> | at all.",
     []),
    (HARMONY, "Plain text, not harmony: <|channel|> stays.", "", "Plain text, not harmony: <|channel|> stays.", []),
    (HARMONY, "<|channel|>analysis<|message|>cut off in the middle <|en", "cut off in the middle <|en", "", []),
    (INSIDE, "Already thinking.<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>",
     "Already thinking.", "Done.", []),
    (TOOLS, "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
            "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>", "Need the weather.",
     "", [("get_weather", {"city": "Paris"})]),
    (TOOLS, "<|channel|>analysis<|message|>Two calls.<|end|><|start|>assistant to=functions.f<|channel|>commentary json"
            "<|message|>{\"a\": 1}<|call|>", "Two calls.", "", [("f", {"a": 1})]),
]  # fmt: skip


@pytest.mark.parametrize("size", [1, 2, 3, 7, 10_000])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_stream_equals_whole(case, size):
    assert_stream_equals_whole(*CASES[case], size)


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


def _tokenizer(harmony: bool):
    """A word-level tokenizer with harmony's control tokens (special) or without them."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, decoders

    words = ["analysis", "final", "assistant", "Hi", "there", "2+2", "is", "4"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="Hi"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    specials = ["<|start|>", "<|channel|>", "<|message|>", "<|return|>", "<s>"] if harmony else ["<s>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if harmony:
        tok.add_tokens([AddedToken("<|end|>", special=False, normalized=False)])  # llama.cpp retypes it (build.py)
    return tok


def test_the_detokenizer_keeps_harmonys_markers_and_skips_other_special_tokens():
    from rfc.runtime.text.detokenize import IncrementalDetokenizer

    tok = _tokenizer(harmony=True)
    ids = {t: tok.token_to_id(t) for t in ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<s>")}
    out = [
        "<|channel|>",
        "analysis",
        "<|message|>",
        "2+2",
        "<|end|>",
        "<|start|>",
        "assistant",
        "<|channel|>",
        "final",
        "<|message|>",
        "4",
        "<s>",
        "<|return|>",
    ]
    detok = IncrementalDetokenizer(
        tok, [ids["<s>"], ids["<|start|>"], tok.token_to_id("assistant")], keep_leading_space=True
    )
    text = "".join(detok.push(ids[t] if t in ids else tok.token_to_id(t)) for t in out) + detok.flush()
    assert "<s>" not in text and "<|return|>" not in text  # other special tokens stay out, as before
    split = HarmonySplitter(starts_inside=False)
    a, b = split.push(text.replace(" ", "")), split.flush()  # the word decoder puts spaces between words
    assert (a.reasoning + b.reasoning, a.content + b.content) == ("2+2", "4"), text
    plain = _tokenizer(harmony=False)  # a vocabulary without harmony: special tokens skipped as before
    detok = IncrementalDetokenizer(plain, [], keep_leading_space=True)
    assert (
        "".join(detok.push(i) for i in (plain.token_to_id("Hi"), plain.token_to_id("<s>"), plain.token_to_id("4")))
        + detok.flush()
        == " Hi 4"
    )  # the word decoder's space before a word after the anchor
