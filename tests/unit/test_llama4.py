"""llama4 (compiler/arch/llama4.py): the plan llama.cpp's llama4 graph implies for the
tiny-llama4 fixture (interleaved MoE layers routed top-1 with the weight on the expert's input,
a shared expert, NoPE every 4th layer, weightless Q/K norms after RoPE), the context a bundle
serves (below the first attention chunk), and the files its loader would refuse or this recipe
does not support, refused with one line (one of them through `rfc compile`: exit 2)."""

from functools import cache

import pytest

from rfc.artifacts.plan import validate_plan
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import assert_spec_refused, rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-llama4-Q8_0.gguf"


@cache
def _fixture_spec() -> ModelSpec:
    return build_spec(read_gguf(SRC))


def test_llama4_plan_interleaves_top1_experts_and_nope_layers():
    spec = _fixture_spec()
    validate_plan(spec.plan)
    ops = spec.plan.ops
    routes = [op for op in ops if op.kind == "moe_route"]
    assert [r.attrs for r in routes] == [{"n_used": 1, "gating": "sigmoid", "norm": False},
                                         {"n_used": 1, "gating": "softmax_weight"}] * 2  # layers 1 and 3  # fmt: skip
    combine = [op for op in ops if op.kind == "moe_combine"]
    # the weight on the input
    assert [(c.inputs, c.outputs) for c in combine] == [(("h", "expert_weights"), ("moe_in",))] * 2
    assert len([op for op in ops if op.kind == "rope"]) == 3  # layer 3 has none
    norms = [op for op in ops if op.kind == "rmsnorm" and op.inputs[0] in ("q", "k")]
    assert len(norms) == 6 and {op.weights for op in norms} == {("rfc.ones.64",)}  # after RoPE, layers 0-2
    names = {w.name for w in spec.weights}
    assert {"blk.0.ffn_gate.weight", "blk.1.ffn_down_shexp.weight", "rope_freqs.weight"} <= names
    assert "blk.1.ffn_gate.weight" not in names
    assert spec.hparams.extra["no_rope_layers"] == [3] and spec.hparams.context_length == 512


def test_llama4_weighs_each_of_several_experts_input(tmp_path):
    """expert_used_count 2: slot j's input is w_j h (build_moe_ffn's weight_before_ffn); gate and
    up are linear, so the plan multiplies slot j's gate output by w_j (slot_scale, before SiLU)
    and leaves up's w_j to the weighted sum after down (moe_combine with the same weights)."""
    spec = build_spec(read_gguf(rewrite_gguf(SRC, tmp_path / "top2.gguf", metadata={"llama4.expert_used_count": 2})))
    validate_plan(spec.plan)
    ops = spec.plan.ops
    k = next(i for i, op in enumerate(ops) if op.kind == "slot_scale")
    assert [(op.kind, op.inputs, op.outputs) for op in ops[k - 4 : k + 5]] == [
        ("moe_route", ("router",), ("sigmoid_ids", "expert_weights")),
        ("moe_route", ("router",), ("expert_ids", "expert_unit")),
        ("moe_matmul", ("h", "expert_ids"), ("exp_gate",)),
        ("moe_matmul", ("h", "expert_ids"), ("exp_up",)),
        ("slot_scale", ("exp_gate", "expert_weights"), ("exp_gate",)),
        ("swiglu", ("exp_gate", "exp_up"), ("exp_gate",)),
        ("moe_matmul", ("exp_gate", "expert_ids"), ("experts_out",)),
        ("moe_combine", ("experts_out", "expert_weights"), ("moe_in",)),
        ("add", ("x", "moe_in"), ("x",)),
    ]
    assert {op.attrs["n_used"] for op in ops if op.kind == "moe_route"} == {2}


def test_llama4_serves_contexts_below_the_first_chunk(tmp_path):
    spec = build_spec(read_gguf(rewrite_gguf(SRC, tmp_path / "long.gguf", metadata={"llama4.context_length": 1 << 20})))
    assert spec.hparams.context_length == spec.plan.context_length == 8191
    assert spec.hparams.extra["context_length_of_file"] == 1 << 20


@pytest.mark.parametrize("edits,message", [
    ({"drop_keys": ("llama4.expert_count", "llama4.expert_used_count")}, "llama4 needs llama4.expert_count > 0"),
    ({"metadata": {"llama4.expert_count": 1 << 31}}, "llama4.expert_count = 2147483648 is outside [0, 1024]"),
    ({"drop_keys": ("llama4.interleave_moe_layer_step",)}, "missing metadata llama4.interleave_moe_layer_step"),
    ({"metadata": {"llama4.interleave_moe_layer_step": 1 << 31}},
     "llama4.interleave_moe_layer_step = 2147483648 is outside"),
    ({"metadata": {"llama4.attention.sliding_window": 0}}, "llama4.attention.sliding_window = 0"),
    ({"metadata": {"llama4.rope.dimension_count": 32}}, "llama4.rope.dimension_count 32 != head size 64"),
    ({"metadata": {"llama4.expert_group_count": 2}}, "llama4.expert_group_count is not supported"),
    ({"metadata": {"llama4.expert_feed_forward_length": 128}}, "shape mismatch for blk.1.ffn_gate_exps.weight"),
    ({"drop_tensors": ("blk.3.ffn_up_shexp.weight",)}, "missing tensor blk.3.ffn_up_shexp.weight"),
])  # fmt: skip
def test_llama4_refuses_with_one_line(edits, message, tmp_path):
    assert_spec_refused(SRC, tmp_path, edits, message)


def test_llama4_hostile_layer_step_exits_2_before_allocating(tmp_path):
    bad = rewrite_gguf(SRC, tmp_path / "bad.gguf", metadata={"llama4.interleave_moe_layer_step": 1 << 31})
    assert_compile_refused(bad, tmp_path, "interleave_moe_layer_step = 2147483648 is outside")
