"""Malformed qwen35moe and qwen3next files: expert counts and widths out of range or
inconsistent, a shared expert or its gate of the wrong shape or missing, DeltaNet head counts
that do not divide, qwen3next's fused beta/alpha and projections of the wrong shape or absent.
`rfc compile` refuses each with one line naming what is wrong, exit 2, before anything is
allocated or written (metadata through compiler/arch/metadata.py's bounded readers, every
tensor's shape checked when the plan is built, before any weight is read). The DeltaNet and
attention cases qwen35 shares with both are in test_qwen35_inputs.py."""

import pytest

from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared


def _shorter(tensor: str, keep: int):
    """tensor_fn: the tensor cut to its first `keep` rows (a 1-D one: values)."""
    return lambda name, data, qtype: (data[:keep].copy(), qtype) if name == tensor else (data, qtype)


CASES = {
    "qwen35moe": {
        "expert count 0": ({"metadata": {"qwen35moe.expert_count": 0}}, "qwen35moe.expert_used_count"),
        "expert count 2^31": ({"metadata": {"qwen35moe.expert_count": 1 << 31}}, "qwen35moe.expert_count"),
        "more experts used than there are": ({"metadata": {"qwen35moe.expert_used_count": 9}},
                                             "qwen35moe.expert_used_count"),
        "expert count of 6 for 8 experts": ({"metadata": {"qwen35moe.expert_count": 6}}, "blk.0.ffn_gate_inp.weight"),
        "expert width 2^32-1": ({"metadata": {"qwen35moe.expert_feed_forward_length": (1 << 32) - 1}},
                                "qwen35moe.expert_feed_forward_length"),
        "shared expert width 2^32-1": ({"metadata": {"qwen35moe.expert_shared_feed_forward_length": (1 << 32) - 1}},
                                       "qwen35moe.expert_shared_feed_forward_length"),
        "shared expert width 384 for 512": ({"metadata": {"qwen35moe.expert_shared_feed_forward_length": 384}},
                                            "blk.0.ffn_gate_shexp.weight"),
        "no shared expert width nor FFN width": ({"drop_keys": ("qwen35moe.expert_shared_feed_forward_length",
                                                                "qwen35moe.feed_forward_length")},
                                                 "qwen35moe.expert_shared_feed_forward_length"),
        "shared expert gate missing": ({"drop_tensors": ("blk.1.ffn_gate_inp_shexp.weight",)},
                                       "blk.1.ffn_gate_inp_shexp.weight"),
        "shared expert gate of 128 for 256": ({"tensor_fn": _shorter("blk.2.ffn_gate_inp_shexp.weight", 128)},
                                              "blk.2.ffn_gate_inp_shexp.weight"),
        "value heads not a multiple of key heads": ({"metadata": {"qwen35moe.ssm.group_count": 3}}, "not a multiple"),
    },
    "qwen3next": {
        "expert count 2^31": ({"metadata": {"qwen3next.expert_count": 1 << 31}}, "qwen3next.expert_count"),
        "beta/alpha of 6 rows for 8": ({"tensor_fn": _shorter("blk.0.ssm_ba.weight", 6)}, "blk.0.ssm_ba.weight"),
        "fused qkvz of 700 rows for 768": ({"tensor_fn": _shorter("blk.2.ssm_in.weight", 700)}, "blk.2.ssm_in.weight"),
        "no projection at all": ({"drop_tensors": ("blk.2.ssm_in.weight",)}, "blk.2.attn_qkv.weight"),
        "state size 2^20": ({"metadata": {"qwen3next.ssm.state_size": 1 << 20}}, "qwen3next.ssm.state_size"),
        "shared expert gate missing": ({"drop_tensors": ("blk.3.ffn_gate_inp_shexp.weight",)},
                                       "blk.3.ffn_gate_inp_shexp.weight"),
    },
}  # fmt: skip


@pytest.mark.parametrize("arch,case", [(a, c) for a in sorted(CASES) for c in sorted(CASES[a])])
def test_malformed_hybrid_moe_is_one_line_exit_2(arch, case, tmp_path):
    edits, message = CASES[arch][case]
    model = rewrite_gguf(FIXTURES / f"tiny-{arch}-Q8_0.gguf", tmp_path / "bad.gguf", **edits)
    assert_compile_refused(model, tmp_path, message)
