"""nemotron_h_moe (compiler/arch/nemotron_h_moe.py): the plan llama.cpp's nemotron_h graph implies
for the tiny-nemotron_h_moe fixture (nemotron_h's mixers, its FFN layers sigmoid-routed
squared-ReLU experts with a selection bias and a shared expert), and the files its loader would
refuse or this recipe does not support, refused with one line naming the key or tensor (one of
them through `rfc compile`: exit 2, nothing written)."""

from functools import cache

import numpy as np
import pytest

from rfc.artifacts.plan import validate_plan
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import assert_spec_refused, rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-nemotron_h_moe-Q8_0.gguf"
A = "nemotron_h_moe."


@cache
def _fixture_spec() -> ModelSpec:
    return build_spec(read_gguf(SRC))


def test_plan_routes_by_sigmoid_with_a_bias_to_squared_relu_experts_and_a_shared_one():
    spec = _fixture_spec()
    validate_plan(spec.plan)
    ops = spec.plan.ops
    routes = [op for op in ops if op.kind == "moe_route"]
    assert [r.weights for r in routes] == [(f"blk.{i}.exp_probs_b.bias",) for i in (1, 4)]
    assert all(r.attrs == {"n_used": 4, "gating": "sigmoid", "scale": 2.5} for r in routes)  # renormalized: the default
    relu2 = [op for op in ops if op.kind == "swiglu" and op.attr("activation") == "relu"]
    assert [op.inputs for op in relu2] == [("exp_up", "exp_up"), ("shexp_up", "shexp_up")] * 2  # relu(u) u, no gate
    # Mamba2 at 0, 3; attention at 2
    assert len([op for op in ops if op.kind == "ssm_scan"]) == 2 and spec.plan.kv.n_layers == 1
    names = {w.name for w in spec.weights}
    assert "blk.1.ffn_up_shexp.weight" in names and not any("gate_exps" in n or "gate_shexp" in n for n in names)
    assert spec.hparams.extra["expert_shared_feed_forward_length"] == 512 and spec.hparams.extra["mlp_layers"] == 2


def _bias_of(n: int):
    """tensor_fn: blk.1's selection bias with n entries."""
    return lambda name, data, qtype: (
        (np.zeros(n, np.float32), qtype) if name == "blk.1.exp_probs_b.bias" else (data, qtype)
    )


@pytest.mark.parametrize("edits,message", [
    ({"metadata": {A + "expert_count": 1 << 31}}, A + "expert_count = 2147483648 is outside [0, 1024]"),
    ({"metadata": {A + "expert_used_count": 9}}, A + "expert_used_count = 9 is outside [0, 8]"),
    ({"drop_keys": (A + "expert_count", A + "expert_used_count")}, "nemotron_h_moe needs nemotron_h_moe.expert_count"),
    ({"drop_keys": (A + "expert_used_count",), "metadata": {A + "expert_used_count": [True] * 5}},
     "expert_used_count per layer (Nemotron 3 Puzzle) is not supported"),
    ({"metadata": {A + "expert_group_count": 3}}, "expert_count 8 is not a multiple of expert_group_count 3"),
    ({"tensor_fn": _bias_of(7)}, "shape mismatch for blk.1.exp_probs_b.bias: expected [8]"),
    ({"drop_tensors": ("blk.4.exp_probs_b.bias",)}, "missing tensor blk.4.exp_probs_b.bias"),
    ({"metadata": {A + "expert_feed_forward_length": 128}}, "shape mismatch for blk.1.ffn_up_exps.weight"),
    ({"drop_keys": (A + "expert_shared_feed_forward_length",)},
     "missing metadata " + A + "expert_shared_feed_forward_length"),
    ({"metadata": {A + "expert_weights_scale": -1.0}}, A + "expert_weights_scale = -1.0 is not a finite number"),
    ({"metadata": {A + "moe_latent_size": 128}}, "missing tensor blk.1.ffn_latent_down.weight"),
    ({"metadata": {A + "moe_latent_size": 1 << 31}}, A + "moe_latent_size = 2147483648 is outside"),
    ({"drop_tensors": ("blk.4.ffn_up_exps.weight",)}, "layer 4 is a mlp layer"),
])  # fmt: skip
def test_nemotron_h_moe_refuses_with_one_line(edits, message, tmp_path):
    assert_spec_refused(SRC, tmp_path, edits, message)


def test_hostile_expert_count_exits_2_before_allocating(tmp_path):
    bad = rewrite_gguf(SRC, tmp_path / "bad.gguf", metadata={A + "expert_count": 1 << 31})
    assert_compile_refused(bad, tmp_path, "expert_count = 2147483648 is outside")
