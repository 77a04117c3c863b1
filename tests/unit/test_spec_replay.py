"""tools/spec_replay.py's ceilings: what speculation on a given greedy output would give with
the acceptance known in advance, and with the right earlier place to copy always chosen."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _tool():
    spec = importlib.util.spec_from_file_location("spec_replay", TOOLS / "spec_replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(TOOLS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TOOLS))
    return module


ARGS = SimpleNamespace(n_max=16, ngram_min=1, ngram_max=4)
FLAT = {1: 1.0, 32: 1.0}  # extra tokens free: the modeled time is the number of steps


def test_longest_earlier_finds_the_longest_run_anywhere_and_stops_at_the_cap():
    sr = _tool()
    history = [5, 1, 2, 9, 1, 2, 3, 4, 7]
    assert sr.longest_earlier(history, [1, 2, 3, 4, 8], 16) == 4  # the second place, not the first
    assert sr.longest_earlier(history, [1, 2, 3, 4, 8], 3) == 3
    assert sr.longest_earlier(history, [6, 1], 16) == 0
    assert sr.longest_earlier(history, [7, 5, 1], 16) == 1  # a run ends with the history


def test_the_ceilings_count_the_steps_a_copy_needs():
    sr = _tool()
    text = [10, 11, 12, 13, 14, 15, 16, 17]
    prompt = [1, 2] + text + [3]
    out = text + [99]  # the output copies the prompt's text, then writes a new token
    # any earlier place: the first token comes from the prefill; then one step drafts 11..17
    # (7 tokens, all accepted) and emits 99 from the row after them
    assert sr.any_earlier_place(prompt, out, FLAT, ARGS) == 1.0
    # known acceptance: the n-gram drafter finds the copy from the first token on, and its offer
    # is taken exactly as far as the output agrees
    assert sr.known_acceptance(prompt, out, FLAT, ARGS) == 1.0
    # with no earlier place to copy, every token is a step of its own
    fresh = [40, 41, 42, 43]
    assert sr.any_earlier_place([1, 2, 3], fresh, FLAT, ARGS) == 3.0
    assert sr.known_acceptance([1, 2, 3], fresh, FLAT, ARGS) == 3.0


def test_the_replay_stays_under_its_ceilings():
    sr = _tool()
    prompt = [7, 1, 2, 3, 4, 5, 6, 8, 1, 2, 9, 9, 3, 4, 5, 2, 6]
    out = [1, 2, 3, 4, 5, 6, 8, 1, 2, 3, 4, 9, 9, 3, 4, 5, 6, 8, 1, 2, 7, 7]
    curve = {1: 5.0, 2: 5.5, 4: 6.5, 8: 9.0, 16: 14.0}
    replay, steps, accepted, drafted = sr._replay(prompt, out, curve, ARGS)
    known = sr.known_acceptance(prompt, out, curve, ARGS)
    assert 1 <= steps <= len(out) - 1 and 0 <= accepted <= drafted
    assert known <= replay  # the planner can only lose what the known acceptance saves
    assert sr.any_earlier_place(prompt, out, curve, ARGS) <= known
