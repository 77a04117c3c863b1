import random

import pytest

from rfc.runtime.text.stopping import StopChecker


def stream(stop, chunks):
    """Push every chunk; return (all emitted text, stopped, chunks pushed before stopping)."""
    checker = StopChecker(stop)
    out = []
    for n, chunk in enumerate(chunks, 1):
        text, stopped = checker.push(chunk)
        out.append(text)
        if stopped:
            return "".join(out), True, n
    out.append(checker.flush())
    return "".join(out), False, len(chunks)


def test_no_stop_strings_passes_everything_through_at_once():
    checker = StopChecker([])
    assert checker.push("hello") == ("hello", False)
    assert checker.push(" world") == (" world", False)
    assert checker.flush() == ""
    assert not checker.stopped


def test_stop_inside_one_push_cuts_before_it():
    checker = StopChecker(["\n\n"])
    assert checker.push("one\n\ntwo") == ("one", True)
    assert checker.matched == "\n\n"


def test_stop_spanning_pushes_is_held_back_then_dropped():
    checker = StopChecker(["STOP"])
    assert checker.push("abc ST") == ("abc ", False)
    assert checker.push("O") == ("", False)
    assert checker.push("P and more") == ("", True)
    assert checker.push("ignored") == ("", True)
    assert checker.flush() == ""


def test_false_start_is_released():
    checker = StopChecker(["STOP"])
    assert checker.push("ST") == ("", False)
    assert checker.push("OX") == ("STOX", False)
    assert checker.push("STO") == ("", False)
    assert checker.flush() == "STO"


def test_overlapping_prefix():
    assert stream(["abcd"], ["abcabcd"]) == ("abc", True, 1)
    assert stream(["abcd"], list("abcabcd")) == ("abc", True, 7)
    assert stream(["abcd"], list("abcabcabx")) == ("abcabcabx", False, 9)
    assert stream(["aab"], list("aaab")) == ("a", True, 4)


def test_several_stop_strings_earliest_wins():
    assert stream(["world", "lo"], ["hello world"]) == ("hel", True, 1)
    assert stream(["bc", "abcd"], ["abc"]) == ("a", True, 1)
    # "abcd" holds "abc" back; "cx" then matches inside the held text.
    assert stream(["abcd", "cx"], ["abc", "x"]) == ("ab", True, 2)
    checker = StopChecker(["</s>", "User:"])
    checker.push("Hi. Us")
    assert checker.push("er: next") == ("", True)
    assert checker.matched == "User:"


def test_emoji_and_cjk_stop_strings():
    assert stream(["😀😀"], ["a😀", "b😀", "😀c"]) == ("a😀b", True, 3)
    assert stream(["世界"], ["你好世", "界！"]) == ("你好", True, 2)
    assert stream(["世界"], ["你好世", "人"]) == ("你好世人", False, 2)


def test_empty_stop_strings_are_ignored():
    assert stream(["", "x"], ["ab", "cx"]) == ("abc", True, 2)
    assert stream([""], ["ab"]) == ("ab", False, 1)


def test_only_possible_stop_prefixes_are_held():
    checker = StopChecker(["STOP"])
    assert checker.push("xxS") == ("xx", False)
    assert checker.push("y") == ("Sy", False)


@pytest.mark.parametrize("seed", range(20))
def test_random_streams_match_a_one_shot_search(seed):
    rng = random.Random(seed)
    alphabet = "ab世😀"
    stops = ["".join(rng.choices(alphabet, k=rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    text = "".join(rng.choices(alphabet, k=60))
    starts = [(text.find(s), s) for s in stops if s in text]
    expected = text[: min(starts)[0]] if starts else text
    cuts = sorted(rng.sample(range(1, len(text)), 15))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    out, stopped, _ = stream(stops, chunks)
    assert (out, stopped) == (expected, bool(starts))


def _held_by_search(text: str, stops: list[str]) -> int:
    """The longest tail of `text` that is a proper prefix of a stop string, by trying each."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


@pytest.mark.parametrize("seed", range(5))
def test_the_held_back_tail_is_the_longest_stop_prefix(seed):
    """Self-overlapping stop strings ("abab", "aab") are where a shortcut goes wrong."""
    from rfc.runtime.text.stopping import _longest_stop_prefix_tail

    rng = random.Random(seed)
    for _ in range(2000):
        stops = ["".join(rng.choices("ab", k=rng.randint(1, 7))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choices("abc", k=rng.randint(0, 12)))
        assert _longest_stop_prefix_tail(text, stops) == _held_by_search(text, stops), (text, stops)


def test_stop_strings_longer_than_the_bound_are_refused():
    from rfc.runtime.text.stopping import MAX_STOP_CHARS, stop_problem

    assert stop_problem(["x" * MAX_STOP_CHARS, "y"]) is None
    assert str(MAX_STOP_CHARS) in stop_problem(["y", "x" * (MAX_STOP_CHARS + 1)])


def test_include_keeps_the_matched_stop_string():
    checker = StopChecker(["STOP"], include=True)
    assert checker.push("abc ST") == ("abc ", False)
    assert checker.push("OP and more") == ("STOP", True)
    assert checker.matched == "STOP"
