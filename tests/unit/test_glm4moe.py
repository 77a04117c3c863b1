"""glm4moe (compiler/arch/glm4moe.py): the plan llama.cpp's glm4-moe graph implies for the
tiny-glm4moe fixture, and the files its loader would refuse or this recipe does not support,
refused with one line naming the key or tensor."""

from functools import cache

import pytest

from rfc.artifacts.plan import validate_plan
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from tests.conftest import FIXTURES
from tests.gguf_edit import assert_spec_refused, spec_of

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-glm4moe-Q8_0.gguf"


@cache
def _fixture_spec() -> ModelSpec:
    return build_spec(read_gguf(SRC))


def test_glm4moe_plan_skips_the_mtp_block_and_routes_by_sigmoid_with_a_bias():
    spec = _fixture_spec()
    validate_plan(spec.plan)
    assert spec.hparams.n_layers == 3 and spec.plan.kv.n_layers == 3  # block_count 4, nextn_predict_layers 1
    assert not any(w.name.startswith("blk.3.") for w in spec.weights)  # the MTP block is not read
    routes = [op for op in spec.plan.ops if op.kind == "moe_route"]
    assert [r.weights for r in routes] == [("blk.1.exp_probs_b.bias",), ("blk.2.exp_probs_b.bias",)]  # layer 0 dense
    assert all(r.attrs == {"n_used": 4, "gating": "sigmoid", "scale": 2.5} for r in routes)  # norm on: the default
    names = {w.name for w in spec.weights}
    assert {
        "blk.0.ffn_gate.weight",
        "blk.1.ffn_gate_shexp.weight",
        "blk.2.ffn_down_shexp.weight",
        "blk.0.attn_q.bias",
    } <= names
    assert {op.attrs["n_rot"] for op in spec.plan.ops if op.kind == "rope"} == {32}  # of head_dim 64
    assert spec.hparams.extra["nextn_predict_layers"] == 1 and spec.hparams.extra["expert_shared_count"] == 1


@pytest.mark.parametrize("edits,message", [
    ({"metadata": {"glm4moe.nextn_predict_layers": 4}}, "glm4moe.nextn_predict_layers = 4 is outside [0, 3]"),
    ({"metadata": {"glm4moe.leading_dense_block_count": 5}}, "glm4moe.leading_dense_block_count = 5 is outside"),
    ({"metadata": {"glm4moe.expert_shared_count": 1 << 31}}, "glm4moe.expert_shared_count"),
    ({"drop_keys": ("glm4moe.expert_shared_count",)}, "missing metadata glm4moe.expert_shared_count"),
    ({"metadata": {"glm4moe.expert_gating_func": 4}}, "expert_gating_func = 4 is not supported"),
    ({"drop_tensors": ("blk.2.exp_probs_b.bias",)}, "missing tensor blk.2.exp_probs_b.bias"),
    ({"metadata": {"glm4moe.expert_used_count": 9}}, "expert_used_count = 9 is outside [0, 8]"),
])  # fmt: skip
def test_glm4moe_refuses_with_one_line(edits, message, tmp_path):
    assert_spec_refused(SRC, tmp_path, edits, message)


def test_glm4moe_with_m_rope_sections_turns_text_as_neox(tmp_path):
    """GLM-4.5V's text stack (M-RoPE sections, as test-llama-archs writes glm4moe): for text every
    section holds the token's position, so the plan is the one without sections."""
    plain = spec_of(SRC)
    mrope = spec_of(SRC, tmp_path, metadata={"glm4moe.rope.dimension_sections": [4, 4, 4, 0]})
    assert mrope.plan.ops == plain.plan.ops
