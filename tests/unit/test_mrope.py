"""M-RoPE's sections for text tokens (compiler/arch/mrope.py): which rotary pairs a text token turns,
as ggml_mrope_cache_init assigns them, and the files llama.cpp itself cannot run."""

import pytest

from rfc.compiler.arch import mrope
from rfc.compiler.arch.common import UNTURNED_FACTOR
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from rfc.compiler.weights import Fill
from tests.conftest import FIXTURES
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared


def _unturned(sections, n_pairs, interleaved):
    return [p for p in range(n_pairs) if not mrope.text_sector(sections, p, interleaved=interleaved)]


def test_which_pairs_a_text_token_leaves_unturned():
    # Qwen2-VL / Qwen2.5-VL: [16, 24, 24] over 64 pairs, in order: all text
    assert _unturned((16, 24, 24, 0), 64, False) == []
    # Qwen3-VL: interleaved [24, 20, 20] over 64 pairs; h and w stop at sector 60, t goes on at 63
    assert _unturned((24, 20, 20, 0), 64, True) == [61, 62]
    # llama.cpp's saver: 32 each over 64 pairs, both ways: all text
    assert _unturned((32, 32, 32, 32), 64, False) == _unturned((32, 32, 32, 32), 64, True) == []
    # the sectors repeat every sum(sections) pairs: the 4th count takes the last 4 of each 16
    assert _unturned((4, 4, 4, 4), 32, False) == [12, 13, 14, 15, 28, 29, 30, 31]
    # interleaved t/h/w, each stopping at 3x its count: [2, 2, 2, 10] over 8 pairs leaves 6 and 7
    assert _unturned((2, 2, 2, 10), 8, True) == [6, 7]


def _glm4(tmp_path, sections, name="m.gguf"):
    src = FIXTURES / "tiny-glm4-Q8_0.gguf"  # head 64, n_rot 32: 16 pairs
    edited = rewrite_gguf(src, tmp_path / name, metadata={"glm4.rope.dimension_sections": sections})
    return build_spec(read_gguf(edited))


def _rope_ops(spec):
    return [op for op in spec.plan.ops if op.kind == "rope"]


def test_glm4_takes_m_rope_only_when_t_and_h_are_set(tmp_path):
    """llama.cpp's use_mrope(): sections[0] > 0 and sections[1] > 0; otherwise glm4's rope stays NORM
    (adjacent pairs), whatever the other counts."""
    assert {op.attrs["style"] for op in _rope_ops(_glm4(tmp_path, [0, 5, 5, 0]))} == {"adjacent"}
    assert {op.attrs["style"] for op in _rope_ops(_glm4(tmp_path, [5, 0, 5, 0], "b.gguf"))} == {"adjacent"}
    m = _glm4(tmp_path, [4, 4, 4, 0], "c.gguf")
    assert {op.attrs["style"] for op in _rope_ops(m)} == {"neox"} and all(not op.weights for op in _rope_ops(m))


def test_unturned_pairs_are_planned_as_stopped_frequencies(tmp_path):
    spec = _glm4(tmp_path, [4, 4, 4, 4])  # pairs 12-15 of the 16 turn by the 4th position: 0 for text
    (name,) = {op.weights for op in _rope_ops(spec)}.pop()
    (w,) = [w for w in spec.weights if w.name == name]
    assert w.shape == (16,) and w.parts == (Fill(1.0, 12), Fill(UNTURNED_FACTOR, 4))


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ([4, 4, 4], r"glm4.rope.dimension_sections is not 4 counts .*llama.cpp reads exactly 4"),
        ([4, 4, 4, 4, 4], r"dimension_sections has 5 entries, more than 4"),
        ([True, True, False, False], r"is not 4 counts"),
        ([4, 4, -1, 0], r"is not 4 counts"),
        ([40, 30, 0, 0], r"\[40, 30, 0, 0\] add up to more than the head size 64"),
    ],
)
def test_sections_llama_cpp_cannot_read_or_run_are_refused(sections, message, tmp_path):
    with pytest.raises(CompileError, match=message):
        _glm4(tmp_path, sections)


def test_a_scalar_stands_for_four_equal_counts(tmp_path):
    spec = _glm4(tmp_path, 4)  # get_key_or_arr: 4 copies, [4, 4, 4, 4]
    (name,) = {op.weights for op in _rope_ops(spec)}.pop()
    assert name.startswith("rope_unturned.")


def test_m_rope_without_a_text_count_is_refused(tmp_path):
    src = FIXTURES / "tiny-qwen35-Q8_0.gguf"
    bad = rewrite_gguf(src, tmp_path / "z.gguf", metadata={"qwen35.rope.dimension_sections": [0, 0, 0, 4]})
    with pytest.raises(CompileError, match=r"has no temporal, height or width count"):
        build_spec(read_gguf(bad))
