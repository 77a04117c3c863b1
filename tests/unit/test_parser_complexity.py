"""Model output is parsed in linear time (a model can be talked into output that makes backtracking parsers cubic).

The output is the model's, and a prompt-injected model can be made to repeat a call marker:
backtracking regexes made that quadratic or cubic (32 KB took 0.5 s to parse as MiniMax's
`<invoke>`, over 20 s as Solar's), with the GIL held, so the whole server froze. Every format
of the tool-call table (a new one is covered by being in the table), the `<think>` splitter,
the streamed assistant-output path and the forced-call reader get adversarial output of 10 KB
and 100 KB: unclosed tags, long runs of each delimiter, the delimiters repeated with garbage
between, calls with one piece left out, nested opens. Ten times the text may cost at most
25 times the time (linear, with room for a busy machine's cache misses; quadratic is 100 times),
and the 100 KB case well under a second.
"""

import gc
import time
from collections.abc import Callable

import pytest

from rfc.runtime.text.assistant_output import OutputParser, OutputSpec, forced_calls
from rfc.runtime.text.reasoning import ReasoningSplitter, split_whole
from rfc.runtime.text.tool_calls import BY_NAME, FORMATS, ToolFormat

SMALL, LARGE = 10_000, 100_000
# Linear parsers measure 10-11x on an idle machine (10 KB stays in the caches, 100 KB less so) and up to 19x
# beside another worker's compiler on two cores (harmony, measured); a quadratic one 100x and more.
RATIO = 25
# Absolute room for timer noise, where the parsers this replaced took seconds on such output.
SLACK_S = 0.02
# The 100 KB case in absolute terms: the slowest linear path, the <think> split streamed through hermes's
# parser, takes ~210 ms alone on a 2-core EPYC and went past 250 ms beside the other worker's compiles.
LIMIT_S = 0.6
TOKEN = 4  # characters per streamed piece, about a token's worth

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"type": "string"}}}}}]

# One call per format as its model writes it, cut into the pieces the parser looks for; the
# adversarial outputs are built from these pieces, the format's start markers and template
# markers, and GENERIC. A format added to the table must add its call here.
SAMPLES: dict[str, tuple[tuple[str, ...], ...]] = {
    "harmony": (
        (
            "<|start|>assistant",
            "<|channel|>commentary",
            " to=functions.f",
            " ",
            "<|constrain|>json",
            "<|message|>",
            '{"a": "x"}',
            "<|call|>",
        ),
    ),
    "kimi": (
        (
            "<|tool_calls_section_begin|>",
            "<|tool_call_begin|>",
            " functions.f",
            ":0",
            " ",
            "<|tool_call_argument_begin|>",
            '{"a": "x"}',
            "<|tool_call_end|>",
            "<|tool_calls_section_end|>",
        ),
    ),
    "deepseek": (
        (
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁call▁begin｜>",
            "function",
            "<｜tool▁sep｜>",
            "f\n",
            "```json",
            "\n",
            '{"a": "x"}',
            "\n",
            "```",
            "<｜tool▁call▁end｜>",
            "<｜tool▁calls▁end｜>",
        ),
        ("<｜tool▁call▁begin｜>", "f", "<｜tool▁sep｜>", '{"a": "x"}', "<｜tool▁call▁end｜>"),
    ),
    "invoke": (
        (
            "<minimax:tool_call>",
            "\n",
            '<invoke name="f">',
            '<parameter name="a">',
            "x",
            "</parameter>",
            "</invoke>",
            "</minimax:tool_call>",
        ),
        (
            "<｜DSML｜function_calls>",
            '<｜DSML｜invoke name="f">',
            '<｜DSML｜parameter name="a" string="true">',
            "x",
            "</｜DSML｜parameter>",
            "</｜DSML｜invoke>",
            "</｜DSML｜function_calls>",
        ),
        ('<function name="f">', '<param name="a">', "x", "</param>", "</function>"),
    ),
    "qwen3_coder": (
        (
            "<tool_call>",
            "\n",
            "<function=f>",
            "\n",
            "<parameter=a>",
            "\nx\n",
            "</parameter>",
            "\n",
            "</function>",
            "\n",
            "</tool_call>",
        ),
    ),
    "glm": (
        (
            "<tool_call>",
            "f",
            "\n",
            "<arg_key>",
            "a",
            "</arg_key>",
            "\n",
            "<arg_value>",
            "x",
            "</arg_value>",
            "</tool_call>",
        ),
    ),
    "solar": (
        (
            "<|tool_calls|>",
            "<|tool_call:begin|>",
            "0",
            "<|tool_call:name|>",
            "f",
            "<|tool_call:args|>",
            '{"a": "x"}',
            "<|tool_call:end|>",
            "<|calls|>",
        ),
    ),
    "gemma4": (("<|tool_call>", "call:f", "{", "a", ":", '<|"|>', "x", '<|"|>', "}", "<tool_call|>"),),
    "pythonic": (("<|tool_call_start|>", "[", "f(", "a=", "'x'", ")", "]", "<|tool_call_end|>"),),
    "mistral": (
        ("[TOOL_CALLS]", "f", "[CALL_ID]", "a1b2c3d4e", "[ARGS]", '{"a": "x"}'),
        ("[TOOL_CALLS]", "[", '{"name": "f", ', '"arguments": {"a": "x"}}', "]"),
    ),
    "functionary": (("<function=f>", '{"a": "x"}', "</function>"), (">>>f\n", '{"a": "x"}', ">>>all\n", "done")),
    "hermes_apriel": (("<tool_calls>", "[", '{"name": "f", ', '"arguments": {"a": "x"}}', "]", "</tool_calls>"),),
    "hermes_minimax": (("<tool_calls>", "\n", '{"name": "f", "arguments": {"a": "x"}}', "\n", "</tool_calls>"),),
    "hermes_nemotron": (("<TOOLCALL>", "[", '{"name": "f", ', '"arguments": {"a": "x"}}', "]", "</TOOLCALL>"),),
    "command_r": (
        ("<|START_ACTION|>", "[", '{"tool_name": "f", ', '"parameters": {"a": "x"}}', "]", "<|END_ACTION|>"),
    ),
    "apertus": (("<|tools_prefix|>", "[", '{"f": {"a": "x"}}', "]", "<|tools_suffix|>"),),
    "gigachat": (("<|function_call|>", '{"name": "f", ', '"arguments": {"a": "x"}}', "<|message_sep|>"),),
    "gigachat3": (("function call<|role_sep|>", '{"name": "f", ', '"arguments": {"a": "x"}}', "<|message_sep|>"),),
    "firefunction": (("functools", "[", '{"name": "f", ', '"arguments": {"a": "x"}}', "]", "<|eot_id|>"),),
    "hermes": (("<tool_call>", "\n", '{"name": "f", ', '"arguments": {"a": "x"}}', "\n", "</tool_call>"),),
    "llama3": (("<|python_tag|>", '{"name": "f", ', '"parameters": {"a": "x"}}', "; "),),
}
# What any parser may trip on: brackets, quotes, tag characters, separators, whitespace,
# unclosed JSON.
GENERIC = ("{", "[", "(", '"', "'", "\\", "<", ">", "/", "|", ":", ",", "=", " ", "\n", "x", "0", '{"a": ', '"x', "```")


def build(prefix: str, unit: str) -> Callable[[int], str]:
    """An output of about `size` characters: `prefix`, then `unit` over and over."""
    return lambda size: prefix + unit * max(1, (size - len(prefix)) // len(unit))


def best_time(run: Callable[[str], object], text: str, tries: int) -> float:
    """The least CPU time of this process over `tries` runs: on a shared machine, wall time
    counts the other processes too, and more of them the longer a run takes."""
    best = float("inf")
    for _ in range(tries):
        start = time.process_time()
        run(text)
        best = min(best, time.process_time() - start)
    return best


def slow_cases(cases: dict[str, Callable[[int], str]], run: Callable[[str], object]) -> list[str]:
    """The cases whose large output costs more than RATIO times the small one (+ slack), or more
    than LIMIT_S: the best of 3 runs each (the large one is run again only when its first run
    is over the bound, to keep the test short), with the garbage collector off (its pauses are
    noise)."""
    slow = []
    gc.collect()
    gc.disable()
    try:
        for label, make in cases.items():
            small, large = make(SMALL), make(LARGE)
            t_small = best_time(run, small, 3)
            bound = min(RATIO * t_small + SLACK_S, LIMIT_S)
            t_large = best_time(run, large, 1)
            if t_large > bound:
                t_large = min(t_large, best_time(run, large, 2))
            if t_large > bound:
                slow.append(
                    f"{label}: {len(small)} chars {t_small * 1e3:.2f} ms, {len(large)} chars {t_large * 1e3:.2f} ms"
                )
    finally:
        gc.enable()
    return slow


def delimiters(fmt: ToolFormat) -> list[str]:
    pieces = [p for sample in SAMPLES.get(fmt.name, ()) for p in sample]
    return list(dict.fromkeys([*fmt.starts, *fmt.template_markers, *pieces, *GENERIC]))


def parse_cases(fmt: ToolFormat) -> dict[str, Callable[[int], str]]:
    """Adversarial outputs for one format, each from its first call marker on."""

    def opened(unit: str) -> str:  # the marker the output needs to be read as a call, if `unit` has none
        return "" if fmt.call_start(unit) is not None else fmt.starts[0]

    cases = {}
    for d in delimiters(fmt):
        cases[f"run of {d!r}"] = build(opened(d), d)
        cases[f"{d!r} with garbage"] = build(opened(d + " x"), d + " x ")
    for n, sample in enumerate(SAMPLES.get(fmt.name, ())):
        call = "".join(sample)
        cases[f"call {n} repeated"] = build("", call)
        for i, piece in enumerate(sample):
            cut = "".join(sample[:i] + sample[i + 1 :])
            cases[f"call {n} without {piece!r}"] = build(opened(cut), cut)
            head = "".join(sample[: i + 1])
            cases[f"call {n} up to {piece!r}"] = build(opened(head), head)
    return cases


def stream(spec: OutputSpec) -> Callable[[str], object]:
    def run(text: str) -> None:
        parser = OutputParser(spec)
        for i in range(0, len(text), TOKEN):
            parser.push(text[i : i + TOKEN])
        parser.finish()
        parser.message

    return run


def test_every_format_has_a_sample_call():
    assert set(SAMPLES) == {f.name for f in FORMATS}, "add the format's call to SAMPLES (and drop removed ones)"
    for name, samples in SAMPLES.items():
        for sample in samples:
            parsed = BY_NAME[name].parse("".join(sample), TOOLS)
            assert [c.name for c in parsed.calls] == ["f"], (name, sample)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_tool_call_parsing_is_linear(fmt):
    slow = slow_cases(parse_cases(fmt), lambda text: fmt.parse(text, TOOLS))
    assert not slow, f"{fmt.name} parses in more than linear time:\n" + "\n".join(slow)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_streamed_output_is_linear(fmt):
    """Content with partial markers all along (held back and released), a call that runs to
    the end (held back, parsed at the end), whitespace before a call (held while undecided)."""
    sample = "".join(SAMPLES.get(fmt.name, ((fmt.starts[0], "{"),))[0])
    cases = {
        "partial markers": build("", "".join(f"x {m[:-1]}" for m in fmt.starts)),
        "calls": build("", sample),
        "unclosed call": build(sample[: len(sample) // 2], "x{<"),
        "blank before a call": lambda size: " " * size + sample,
    }
    slow = slow_cases(cases, stream(OutputSpec(tool_format=fmt, tools=tuple(TOOLS))))
    assert not slow, f"{fmt.name} streams in more than linear time:\n" + "\n".join(slow)


def test_reasoning_split_is_linear():
    cases = {
        "blank before the block": lambda size: " " * size + "<think>x</think>y",
        "partial closing tags": build("<think>", "</thin x"),
        "partial opening tags": build("", " <thin"),
        "run of <": build("<think>", "<"),
        "newlines opening the block": lambda size: "<think>" + "\n" * size + "x",
        "newlines after the block": lambda size: "<think>x</think>" + "\n" * size + "y",
        "repeated blocks": build("", "<think>x</think>"),
    }

    def streamed(starts_inside: bool) -> Callable[[str], object]:
        def run(text: str) -> None:
            splitter = ReasoningSplitter(starts_inside)
            for i in range(0, len(text), TOKEN):
                splitter.push(text[i : i + TOKEN])
            splitter.flush()

        return run

    slow = slow_cases(cases, streamed(False)) + slow_cases(cases, streamed(True))
    slow += slow_cases(cases, lambda text: split_whole(text, False))
    slow += slow_cases(cases, stream(OutputSpec(thinks=True, tool_format=BY_NAME["hermes"])))
    assert not slow, "the <think> split is more than linear:\n" + "\n".join(slow)


def test_forced_calls_are_linear():
    cases = {
        "cut short": build("[", '{"name": "f", "arguments": {"a": "x"}}, '),
        "nested": build("[", "["),
        "nested objects": build('[{"name": "f", "arguments": ', '{"a": '),
        "garbage": build("[", "x]"),
    }
    slow = slow_cases(cases, forced_calls) + slow_cases(cases, stream(OutputSpec(forced_calls=True)))
    assert not slow, "forced calls are read in more than linear time:\n" + "\n".join(slow)
