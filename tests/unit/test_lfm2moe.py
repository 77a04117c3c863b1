"""lfm2moe (compiler/arch/lfm2moe.py): the plan llama.cpp's lfm2moe graph implies for the
tiny-lfm2moe fixture (lfm2's operators, a leading dense layer, sigmoid-routed experts with a
selection bias), and the files its loader would refuse or this recipe does not support,
refused with one line naming the key or tensor (one of them through `rfc compile`: exit 2,
nothing written)."""

from functools import cache

import pytest

from rfc.artifacts.plan import validate_plan
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import assert_spec_refused, rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-lfm2moe-Q8_0.gguf"


@cache
def _fixture_spec() -> ModelSpec:
    return build_spec(read_gguf(SRC))


def test_lfm2moe_plan_keeps_lfm2s_operators_and_routes_by_sigmoid_with_a_bias():
    spec = _fixture_spec()
    validate_plan(spec.plan)
    assert [op.attrs["state"] for op in spec.plan.ops if op.kind == "short_conv"] == [0, 1]  # layers 0 and 2
    assert spec.plan.kv.n_layers == 2  # the attention layers only
    routes = [op for op in spec.plan.ops if op.kind == "moe_route"]
    assert [r.weights for r in routes] == [(f"blk.{i}.exp_probs_b.bias",) for i in (1, 2, 3)]  # layer 0 dense
    assert all(r.attrs == {"n_used": 4, "gating": "sigmoid"} for r in routes)  # renormalized (the default), no scale
    names = {w.name for w in spec.weights}
    assert {"blk.0.ffn_gate.weight", "blk.3.ffn_down_exps.weight"} <= names and "blk.1.ffn_gate.weight" not in names
    assert spec.hparams.extra["leading_dense_block_count"] == 1 and spec.hparams.extra["expert_gating"] == "sigmoid"


@pytest.mark.parametrize("edits,message", [
    ({"metadata": {"lfm2moe.expert_count": 1 << 31}}, "lfm2moe.expert_count = 2147483648 is outside [0, 1024]"),
    ({"metadata": {"lfm2moe.expert_used_count": 9}}, "lfm2moe.expert_used_count = 9 is outside [0, 8]"),
    ({"drop_keys": ("lfm2moe.expert_count", "lfm2moe.expert_used_count")}, "lfm2moe needs lfm2moe.expert_count"),
    ({"metadata": {"lfm2moe.expert_group_count": 3}}, "expert_count 8 is not a multiple of expert_group_count 3"),
    ({"metadata": {"lfm2moe.leading_dense_block_count": 5}}, "lfm2moe.leading_dense_block_count = 5 is outside [0, 4]"),
    ({"drop_keys": ("lfm2moe.expert_gating_func",)}, "missing metadata lfm2moe.expert_gating_func"),
    ({"metadata": {"lfm2moe.expert_gating_func": 0}}, "expert_gating_func = 0 names no gating function"),
    ({"metadata": {"lfm2moe.expert_gating_func": 4}}, "expert_gating_func = 4 is not supported"),
    ({"drop_keys": ("lfm2moe.expert_feed_forward_length",)}, "missing metadata lfm2moe.expert_feed_forward_length"),
    ({"drop_tensors": ("blk.2.exp_probs_b.bias",)}, "missing tensor blk.2.exp_probs_b.bias"),
    ({"metadata": {"lfm2moe.expert_feed_forward_length": 128}}, "shape mismatch for blk.1.ffn_gate_exps.weight"),
])  # fmt: skip
def test_lfm2moe_refuses_with_one_line(edits, message, tmp_path):
    assert_spec_refused(SRC, tmp_path, edits, message)


def test_lfm2moe_hostile_expert_count_exits_2_before_allocating(tmp_path):
    bad = rewrite_gguf(SRC, tmp_path / "bad.gguf", metadata={"lfm2moe.expert_count": 1 << 31})
    assert_compile_refused(bad, tmp_path, "expert_count = 2147483648 is outside")
