"""Malformed qwen35 files: Gated DeltaNet head counts, conv kernels and state sizes
out of range or inconsistent, conv weights and gates of the wrong shape, M-RoPE sections that
leave pairs to the vision position, a model of recurrent layers only. `rfc compile` refuses
each with one line naming what is wrong, exit 2, before anything is allocated or written (the
metadata is read through compiler/arch/metadata.py's bounded readers and every tensor's shape
is checked against it when the plan is built, before any weight is read)."""

import pytest

from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-qwen35-Q8_0.gguf"


def _shorter(tensor: str, keep: int):
    """tensor_fn: the tensor cut to its first `keep` rows (a 1-D one: values)."""
    return lambda name, data, qtype: (data[:keep].copy(), qtype) if name == tensor else (data, qtype)


CASES = {
    "value heads 2^31": ({"metadata": {"qwen35.ssm.time_step_rank": 1 << 31}}, "qwen35.ssm.time_step_rank"),
    "key heads 0": ({"metadata": {"qwen35.ssm.group_count": 0}}, "qwen35.ssm.group_count"),
    "value heads not a multiple of key heads": ({"metadata": {"qwen35.ssm.group_count": 3}}, "not a multiple"),
    "state size 2^20": ({"metadata": {"qwen35.ssm.state_size": 1 << 20}}, "qwen35.ssm.state_size"),
    "inner size != heads x state": ({"metadata": {"qwen35.ssm.inner_size": 300}}, "qwen35.ssm.inner_size 300"),
    "conv kernel 1": ({"metadata": {"qwen35.ssm.conv_kernel": 1}}, "qwen35.ssm.conv_kernel"),
    "conv kernel 2^32-1": ({"metadata": {"qwen35.ssm.conv_kernel": (1 << 32) - 1}}, "qwen35.ssm.conv_kernel"),
    "conv kernel of 3 taps": ({"metadata": {"qwen35.ssm.conv_kernel": 3}}, "blk.0.ssm_conv1d.weight"),
    "conv weight missing": ({"drop_tensors": ("blk.2.ssm_conv1d.weight",)}, "blk.2.ssm_conv1d.weight"),
    "ssm_a of 3 heads of 4": ({"tensor_fn": _shorter("blk.0.ssm_a", 3)}, "blk.0.ssm_a"),
    "dt bias of 2 heads of 4": ({"tensor_fn": _shorter("blk.2.ssm_dt.bias", 2)}, "blk.2.ssm_dt.bias"),
    "no state size": ({"drop_keys": ("qwen35.ssm.state_size",)}, "qwen35.ssm.state_size"),
    "every layer recurrent": ({"metadata": {"qwen35.full_attention_interval": 5}}, "no full-attention layer"),
    "attention interval 0": ({"metadata": {"qwen35.full_attention_interval": 0}}, "qwen35.full_attention_interval"),
    "sections without a text count": ({"metadata": {"qwen35.rope.dimension_sections": [0, 0, 0, 10]}},
                                      "has no temporal, height or width count"),
    "three sections": ({"metadata": {"qwen35.rope.dimension_sections": [8, 8, 8]}}, "llama.cpp reads exactly 4"),
    "no rope sections": ({"drop_keys": ("qwen35.rope.dimension_sections",)}, "qwen35.rope.dimension_sections"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_qwen35_is_one_line_exit_2(case, tmp_path):
    edits, message = CASES[case]
    model = rewrite_gguf(SRC, tmp_path / "bad.gguf", **edits)
    assert_compile_refused(model, tmp_path, message)
