"""granitemoe (compiler/arch/granite.py build_moe): granite's multipliers around a Mixtral-style
mixture of experts and Granite MoE Shared's shared expert, as llama.cpp's granite graph builds
them for the granitemoe loader; what that loader would refuse, refused with one line."""

from functools import cache

import numpy as np
import pytest

from rfc.artifacts.plan import validate_plan
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from tests.conftest import FIXTURES
from tests.gguf_edit import assert_spec_refused, rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-granitemoe-Q8_0.gguf"


@cache
def _fixture_spec() -> ModelSpec:
    return build_spec(read_gguf(SRC))


def test_granitemoe_scales_the_sum_of_routed_and_shared_experts():
    spec = _fixture_spec()
    validate_plan(spec.plan)
    ops = spec.plan.ops
    routes = [op for op in ops if op.kind == "moe_route"]
    assert [r.attrs for r in routes] == [{"n_used": 2}] * 2  # softmax, renormalized, no scale: the defaults
    # per layer: routed experts into moe_out, the shared expert into h, their sum, then the residual multiplier
    combine = [i for i, op in enumerate(ops) if op.kind == "moe_combine"]
    for i in combine:
        assert ops[i].outputs == ("moe_out",)
        add = next(j for j in range(i, len(ops)) if ops[j].kind == "add" and ops[j].inputs == ("h", "moe_out"))
        assert ops[add - 1].kind == "matmul" and ops[add - 1].weights[0].endswith("ffn_down_shexp.weight")
        assert (
            ops[add + 1].kind == "scale"
            and ops[add + 1].attrs["factor"] == np.float32(0.6)
            and ops[add + 2].kind == "add"
        )
    assert len(combine) == 2 and ops[0].attrs["scale"] == 2.5 and ops[-1].kind == "scale"
    assert {op.attrs["scale"] for op in ops if op.kind == "attention"} == {0.125}
    assert len([op for op in ops if op.kind == "rope"]) == 2
    assert spec.hparams.extra["expert_shared_feed_forward_length"] == 384


def test_granitemoe_keeps_rope_whatever_finetuned_says(tmp_path):
    """Only granite's loader reads rope.scaling.finetuned as the switch for RoPE."""
    spec = build_spec(
        read_gguf(rewrite_gguf(SRC, tmp_path / "e.gguf", metadata={"granitemoe.rope.scaling.finetuned": False}))
    )
    assert len([op for op in spec.plan.ops if op.kind == "rope"]) == 2


def test_granitemoe_without_a_shared_expert(tmp_path):
    shexp = tuple(f"blk.{i}.ffn_{x}_shexp.weight" for i in range(2) for x in ("gate", "up", "down"))
    path = rewrite_gguf(
        SRC, tmp_path / "e.gguf", drop_keys=("granitemoe.expert_shared_feed_forward_length",), drop_tensors=shexp
    )
    spec = build_spec(read_gguf(path))
    assert all(op.outputs == ("h",) for op in spec.plan.ops if op.kind == "moe_combine")
    assert not any("shexp" in w.name for w in spec.weights)


@pytest.mark.parametrize("edits,message", [
    # without experts llama.cpp's granitemoe loader reads granite's dense FFN, which this file lacks
    ({"drop_keys": ("granitemoe.expert_count", "granitemoe.expert_used_count")},
     "missing tensor blk.0.ffn_gate.weight"),
    ({"metadata": {"granitemoe.expert_used_count": 5}}, "granitemoe.expert_used_count = 5 is outside [0, 4]"),
    ({"metadata": {"granitemoe.expert_shared_feed_forward_length": 1 << 31}}, "expert_shared_feed_forward_length"),
    ({"metadata": {"granitemoe.expert_shared_feed_forward_length": 512}}, "blk.0.ffn_gate_shexp.weight"),
    ({"drop_keys": ("granitemoe.logit_scale",)}, "missing metadata granitemoe.logit_scale"),
    ({"metadata": {"granitemoe.rope.dimension_count": 16}}, "rope.dimension_count 16 != head size 32"),
])  # fmt: skip
def test_granitemoe_refuses_with_one_line(edits, message, tmp_path):
    assert_spec_refused(SRC, tmp_path, edits, message)


def test_granitemoe_without_experts_is_dense_granite(tmp_path):
    """llama.cpp's granitemoe loader takes expert_count 0 as granite's dense FFN (test-llama-archs
    writes such a file): tiny-granite written as granitemoe gets granite's plan."""
    from dataclasses import replace

    from tests import testdata

    g = testdata._generator()
    family, fmt = g.FIXTURES["tiny-granite-Q8_0"]
    g.FIXTURES["tiny-granitemoe-dense-Q8_0"] = (replace(family, arch="granitemoe"), fmt)
    g.write_fixture("tiny-granitemoe-dense-Q8_0", tmp_path / "dense.gguf")
    spec, granite = (
        build_spec(read_gguf(tmp_path / "dense.gguf")),
        build_spec(read_gguf(FIXTURES / "tiny-granite-Q8_0.gguf")),
    )
    assert spec.plan.ops == granite.plan.ops and spec.weights == granite.weights
