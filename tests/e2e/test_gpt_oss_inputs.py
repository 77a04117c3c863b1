"""Malformed gpt-oss files: sink tensors and per-expert biases of the wrong shape,
missing sinks, expert counts and widths out of range, a sliding window of 0 are refused by
`rfc compile` with one line naming what is wrong, exit 2, before anything is allocated or
written (the shapes are checked against the metadata when the plan is built, before any
weight is read)."""

import pytest

from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-gpt-oss-F16.gguf"


def _shorter(tensor: str, keep: int):
    """tensor_fn: the tensor cut to its first `keep` rows (sinks: values)."""
    return lambda name, data, qtype: (data[:keep].copy(), qtype) if name == tensor else (data, qtype)


CASES = {
    "sinks of 3 heads of 4": ({"tensor_fn": _shorter("blk.1.attn_sinks.weight", 3)}, "blk.1.attn_sinks.weight"),
    "sinks missing": ({"drop_tensors": ("blk.2.attn_sinks.weight",)}, "blk.2.attn_sinks.weight"),
    "expert biases of 3 experts of 4": ({"tensor_fn": _shorter("blk.3.ffn_down_exps.bias", 3)},
                                        "blk.3.ffn_down_exps.bias"),
    "router bias missing": ({"drop_tensors": ("blk.0.ffn_gate_inp.bias",)}, "blk.0.ffn_gate_inp.bias"),
    "used > count": ({"metadata": {"gpt-oss.expert_used_count": 5}}, "expert_used_count = 5 is outside [0, 4]"),
    "count 2^31": ({"metadata": {"gpt-oss.expert_count": 1 << 31}}, "gpt-oss.expert_count"),
    "no experts": ({"metadata": {"gpt-oss.expert_count": 0, "gpt-oss.expert_used_count": 0}}, "gpt-oss.expert_count"),
    "expert width 2^32-1": ({"metadata": {"gpt-oss.expert_feed_forward_length": (1 << 32) - 1}},
                            "gpt-oss.expert_feed_forward_length"),
    "sliding window 0": ({"metadata": {"gpt-oss.attention.sliding_window": 0}}, "gpt-oss.attention.sliding_window"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_gpt_oss_is_one_line_exit_2(case, tmp_path):
    edits, message = CASES[case]
    model = rewrite_gguf(SRC, tmp_path / "bad.gguf", **edits)
    assert_compile_refused(model, tmp_path, message)
