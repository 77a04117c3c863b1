"""tests/bounds.py itself: the oracle reads the GGUF, so the rounding it is asked to apply must be
keyed by GGUF format names even when the bundle stores a packed layout (a Q4_1x8 key silently
rounded nothing and halved the per-format bound of every packed model)."""

from rfc.artifacts.targets import parse_target
from tests.bounds import rounding_kinds


def test_packed_layouts_round_as_their_gguf_format():
    kinds = rounding_kinds(parse_target("cpu"), {"Q4_1x8", "Q4_0x8", "Q8_0", "F32"})
    assert kinds == {"Q4_1": "q8_32", "Q4_0": "q8_32", "Q8_0": "q8_32"}


def test_float_activation_targets_round_nothing():
    assert rounding_kinds(parse_target("cpu-generic"), {"Q4_1x8", "Q8_0"}) == {}
    assert rounding_kinds(None, {"Q4_1"}) == {}
