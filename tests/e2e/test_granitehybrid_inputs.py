"""Malformed granitehybrid files: Mamba2 head, group and state counts out of range or
inconsistent, conv kernels, gates and norms of the wrong shape, a layer pattern the tensors
contradict, a model of Mamba2 layers only. `rfc compile` refuses each with one line naming
what is wrong, exit 2, before anything is allocated or written (compiler/arch/mamba2.py reads
the sizes through metadata.py's bounded readers; every tensor's shape is checked against them
when the plan is built, before any weight is read)."""

import pytest

from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-granitehybrid-Q8_0.gguf"


def _shorter(tensor: str, keep: int):
    """tensor_fn: the tensor cut to its first `keep` rows (a 1-D one: values)."""
    return lambda name, data, qtype: (data[:keep].copy(), qtype) if name == tensor else (data, qtype)


def _narrower(tensor: str, keep: int):
    """tensor_fn: the tensor's rows cut to their first `keep` columns."""
    return lambda name, data, qtype: (data[..., :keep].copy(), qtype) if name == tensor else (data, qtype)


CASES = {
    "heads 2^31": ({"metadata": {"granitehybrid.ssm.time_step_rank": 1 << 31}}, "granitehybrid.ssm.time_step_rank"),
    "heads not dividing the inner size": ({"metadata": {"granitehybrid.ssm.time_step_rank": 7}}, "not a multiple"),
    "groups 0": ({"metadata": {"granitehybrid.ssm.group_count": 0}}, "granitehybrid.ssm.group_count"),
    "heads not a multiple of groups": ({"metadata": {"granitehybrid.ssm.group_count": 16}}, "not a multiple"),
    "state size 2^20": ({"metadata": {"granitehybrid.ssm.state_size": 1 << 20}}, "granitehybrid.ssm.state_size"),
    "inner size != 2 x embedding": ({"metadata": {"granitehybrid.ssm.inner_size": 256}},
                                    "granitehybrid.ssm.inner_size 256"),
    "conv kernel 2^32-1": ({"metadata": {"granitehybrid.ssm.conv_kernel": (1 << 32) - 1}},
                           "granitehybrid.ssm.conv_kernel"),
    "conv kernel of 3 taps": ({"metadata": {"granitehybrid.ssm.conv_kernel": 3}}, "blk.0.ssm_conv1d.weight"),
    "ssm_a of 6 heads of 8": ({"tensor_fn": _shorter("blk.2.ssm_a", 6)}, "blk.2.ssm_a"),
    "ssm_norm of half the width": ({"tensor_fn": _narrower("blk.3.ssm_norm.weight", 256)}, "blk.3.ssm_norm.weight"),
    "layer pattern against the tensors": ({"metadata": {"granitehybrid.attention.head_count_kv": [2, 2, 0, 0]}},
                                          "layer 0 is an attention layer"),
    "every layer Mamba2": ({"metadata": {"granitehybrid.attention.head_count_kv": [0, 0, 0, 0]}},
                           "marks no attention layer"),
    "a head count per layer too few": ({"metadata": {"granitehybrid.attention.head_count_kv": [0, 2, 0]}},
                                       "has 3 entries for 4 layers"),
}  # fmt: skip


# nemotron_h: its layer kinds from two per-layer arrays, the grouped norm's sizes
NEMOTRON_CASES = {
    "nemotron layer pattern against the tensors": ({"metadata": {"nemotron_h.feed_forward_length": [0, 0, 0, 0]}},
                                                   "layer 2 is a mamba2 layer"),
    "nemotron groups not dividing the inner size in 8s": ({"metadata": {"nemotron_h.ssm.group_count": 128}},
                                                          "nemotron_h.ssm.inner_size 512 is not 128 groups"),
    "nemotron ssm_norm of one group of two": ({"tensor_fn": _shorter("blk.3.ssm_norm.weight", 1)},
                                              "blk.3.ssm_norm.weight"),
    "nemotron without a norm epsilon": ({"drop_keys": ("nemotron_h.attention.layer_norm_epsilon",)},
                                        "nemotron_h.attention.layer_norm_epsilon"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES) + sorted(NEMOTRON_CASES))
def test_malformed_granitehybrid_is_one_line_exit_2(case, tmp_path):
    src = SRC if case in CASES else FIXTURES / "tiny-nemotron_h-Q8_0.gguf"
    edits, message = CASES.get(case) or NEMOTRON_CASES[case]
    model = rewrite_gguf(src, tmp_path / "bad.gguf", **edits)
    assert_compile_refused(model, tmp_path, message)
