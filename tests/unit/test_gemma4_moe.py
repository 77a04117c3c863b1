"""Gemma 4 26B-A4B's experts (compiler/arch/gemma4_moe.py) plan what llama.cpp's gemma4.cpp
computes in its MoE layers, and malformed expert tensors and counts are refused by name before
anything is allocated. Plans are inspected directly; two refusals go through `rfc compile` for
the one-line exit 2."""

import numpy as np
import pytest

from rfc.compiler.errors import CompileError
from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf, spec_of

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-gemma4moe-Q8_0.gguf"
K = "gemma4."


def _spec(tmp_path=None, **edits):
    return spec_of(SRC, tmp_path, **edits)


def test_plan_follows_llama_cpp():
    spec = _spec()
    ops = spec.plan.ops
    routes = [op for op in ops if op.kind == "moe_route"]
    # softmax, top 2, renormalized; ffn_down_exps.scale folded into the weights (expert_scale)
    assert [(op.attrs, op.weights) for op in routes] == [
        ({"n_used": 2, "expert_scale": True}, (f"blk.{i}.ffn_down_exps.scale",)) for i in range(2)
    ]
    # the router reads rms_norm(x) * ffn_gate_inp.scale / sqrt(256), not the experts' input
    norms = [op for op in ops if op.kind == "rmsnorm" and op.outputs == ("router_in",)]
    assert [(op.inputs, op.weights) for op in norms] == [(("x",), (f"blk.{i}.ffn_gate_inp.scale",)) for i in range(2)]
    assert [op.attrs["factor"] for op in ops if op.kind == "scale" and op.inputs == ("router_in",)] == [1 / 16] * 2
    gate_up = [op.weights[0] for op in ops if op.kind == "moe_matmul" and op.inputs[0] == "moe_in"]
    assert gate_up == [
        "blk.0.ffn_gate_exps.weight",
        "blk.0.ffn_up_exps.weight",  # layer 1: the fused tensor's halves
        "blk.1.ffn_gate_up_exps.weight:gate",
        "blk.1.ffn_gate_up_exps.weight:up",
    ]
    halves = {w.name: w for w in spec.weights if w.name.startswith("blk.1.ffn_gate_up_exps")}
    assert {n: w.shape for n, w in halves.items()} == {
        f"blk.1.ffn_gate_up_exps.weight:{h}": (8, 256, 256) for h in ("gate", "up")
    }
    assert [p.start for p in halves["blk.1.ffn_gate_up_exps.weight:up"].parts] == [e * 512 + 256 for e in range(8)]
    assert [op.attrs.get("activation") for op in ops if op.kind == "swiglu"] == ["gelu_tanh"] * 4  # MLP, experts x 2
    # the two branches: post_ffw_norm_1 on the MLP's h, post_ffw_norm_2 on the experts' sum, added, then post_ffw_norm
    i = next(j for j, op in enumerate(ops) if op.kind == "moe_combine")
    assert [(op.kind, op.inputs, op.weights) for op in ops[i + 1 : i + 4]] == [
        ("rmsnorm", ("moe_out",), ("blk.0.post_ffw_norm_2.weight",)),
        ("add", ("h", "moe_out"), ()),
        ("rmsnorm", ("h",), ("blk.0.post_ffw_norm.weight",)),
    ]
    assert spec.hparams.extra["expert_count"] == 8 and spec.hparams.extra["expert_layers"] == [0, 1]


REFUSED = {
    "expert count 2^31": ({"metadata": {K + "expert_count": 1 << 31}}, "expert_count"),
    "used above count": ({"metadata": {K + "expert_used_count": 9}}, "expert_used_count"),
    "a router without experts": ({"metadata": {K + "expert_count": 0, K + "expert_used_count": 0}}, "expert_count"),
    "gate_inp.scale of 128": ({"drop_tensors": ("blk.0.ffn_gate_inp.scale",),
                               "add_tensors": {"blk.0.ffn_gate_inp.scale": np.ones(128)}}, "ffn_gate_inp.scale"),
    "down_exps.scale of 4": ({"drop_tensors": ("blk.1.ffn_down_exps.scale",),
                              "add_tensors": {"blk.1.ffn_down_exps.scale": np.ones(4)}}, "ffn_down_exps.scale"),
    "fused and split": ({"add_tensors": {"blk.1.ffn_gate_exps.weight": np.ones((8, 256, 256))}}, "has both"),
    "neither fused nor split": ({"drop_tensors": ("blk.1.ffn_gate_up_exps.weight",)}, "has neither"),
    "a gate_exps scale": ({"add_tensors": {"blk.0.ffn_gate_exps.scale": np.ones(8)}}, "gate/up scale"),
    "no expert width": ({"drop_keys": (K + "expert_feed_forward_length",)}, "expert_feed_forward_length"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_experts_are_refused_by_name(case, tmp_path):
    edits, words = REFUSED[case]
    with pytest.raises(CompileError, match=words):
        _spec(tmp_path, **edits)


@pytest.mark.parametrize("case", ["used above count", "down_exps.scale of 4"])
def test_refusal_is_one_line_exit_2(case, tmp_path):
    edits, words = REFUSED[case]
    assert_compile_refused(rewrite_gguf(SRC, tmp_path / "bad.gguf", **edits), tmp_path, words)
