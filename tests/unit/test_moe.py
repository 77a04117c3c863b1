"""Routed experts beyond Mixtral's (compiler/arch/moe.py, qwen3moe): the recipe reads the expert
hyperparameters as llama.cpp does, moe_route's attributes are validated, and the reference
router computes every gating / selection-bias / group / norm / scale variant the plan allows
(checked here against small cases worked by hand)."""

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from rfc.artifacts.plan import OPS, OpKind, Plan, validate_plan
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from rfc.runtime.devices.reference import ReferenceDevice
from tests.conftest import FIXTURES
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared


def _spec(tmp_path=None, **edits) -> ModelSpec:
    if not edits:
        return _fixture_spec()
    return build_spec(read_gguf(rewrite_gguf(FIXTURES / "tiny-qwen3moe-Q8_0.gguf", tmp_path / "edited.gguf", **edits)))


@cache
def _fixture_spec() -> ModelSpec:
    return build_spec(read_gguf(FIXTURES / "tiny-qwen3moe-Q8_0.gguf"))


def _ops(spec: ModelSpec, kind: str) -> list:
    return [op for op in spec.plan.ops if op.kind == kind]


def test_qwen3moe_routes_softmax_renormalized_without_a_shared_expert():
    spec = _spec()
    validate_plan(spec.plan)
    routes = _ops(spec, "moe_route")
    assert len(routes) == 2 and {tuple(sorted(r.attrs.items())) for r in routes} == {(("n_used", 4),)}  # defaults
    assert all(not r.weights for r in routes)  # no selection bias
    shapes = {w.name: w.shape for w in spec.weights}
    # expert_feed_forward_length (256), not feed_forward_length / expert_used_count (192)
    assert shapes["blk.0.ffn_gate_exps.weight"] == (8, 256, 256) and shapes["blk.1.ffn_down_exps.weight"] == (
        8,
        256,
        256,
    )
    assert not any("shexp" in name for name in shapes)
    assert spec.hparams.extra == {"expert_count": 8, "expert_used_count": 4, "expert_feed_forward_length": 256}
    assert len(_ops(spec, "rmsnorm")) == 2 * 4 + 1  # attn, q, k, ffn norms per layer, the output norm
    assert {op.attrs.get("heads") for op in _ops(spec, "rmsnorm")} == {None, 4, 2}  # per-head Q/K norms
    assert {op.attrs["style"] for op in _ops(spec, "rope")} == {"neox"}


def test_qwen3moe_expert_width_defaults_as_llama_cpp(tmp_path):
    """Without expert_feed_forward_length the width is feed_forward_length / expert_used_count
    (192 here), which the file's [8, 256, 256] experts do not match."""
    with pytest.raises(CompileError, match="ffn_gate_exps.weight"):
        _spec(tmp_path, drop_keys=("qwen3moe.expert_feed_forward_length",))
    with pytest.raises(CompileError, match="expert_feed_forward_length"):  # nothing to default from
        _spec(tmp_path, drop_keys=("qwen3moe.expert_feed_forward_length", "qwen3moe.feed_forward_length"))


def test_expert_groups_reach_the_router(tmp_path):
    spec = _spec(tmp_path, metadata={"qwen3moe.expert_group_count": 4, "qwen3moe.expert_group_used_count": 2})
    assert {tuple(sorted(r.attrs.items())) for r in _ops(spec, "moe_route")} == {
        (("groups", 4), ("groups_used", 2), ("n_used", 4))
    }
    assert spec.hparams.extra["expert_group_count"] == 4
    validate_plan(spec.plan)


@pytest.mark.parametrize("metadata,message", [
    ({"qwen3moe.expert_count": 0}, "expert_used_count = 4 is outside"),
    ({"qwen3moe.expert_used_count": 9}, "expert_used_count"),
    ({"qwen3moe.expert_count": 1 << 31}, "expert_count"),
    ({"qwen3moe.expert_feed_forward_length": 0}, "expert_feed_forward_length"),
    ({"qwen3moe.expert_feed_forward_length": (1 << 32) - 1}, "expert_feed_forward_length"),
    ({"qwen3moe.expert_group_count": 3}, "expert_count 8 is not a multiple of expert_group_count 3"),
    ({"qwen3moe.expert_group_count": 8}, "expert_group_count"),  # llama.cpp: groups < count
    ({"qwen3moe.expert_group_count": 4}, "expert_group_used_count"),  # required with groups
    ({"qwen3moe.expert_group_count": 4, "qwen3moe.expert_group_used_count": 4}, "expert_group_used_count"),
    ({"qwen3moe.expert_group_count": 4, "qwen3moe.expert_group_used_count": 1}, "exceeds the 1 groups of 2 experts"),
    ({"qwen3moe.rope.dimension_count": 32}, "rotates whole heads"),
])  # fmt: skip
def test_malformed_expert_metadata_is_refused_by_name(metadata, message, tmp_path):
    with pytest.raises(CompileError, match=message):
        _spec(tmp_path, metadata=metadata)


def test_missing_expert_counts_are_refused(tmp_path):
    with pytest.raises(CompileError, match="qwen3moe needs qwen3moe.expert_count and qwen3moe.expert_used_count > 0"):
        _spec(tmp_path, drop_keys=("qwen3moe.expert_count", "qwen3moe.expert_used_count"))


# -- moe_route: validation and the reference ----------------------------------------------------


def _route_plan(**attrs) -> Plan:
    """The qwen3moe fixture's plan (8 experts, 4 used) with these router attributes."""
    plan = _spec().plan
    return replace(
        plan, ops=tuple(replace(op, attrs={**op.attrs, **attrs}) if op.kind == "moe_route" else op for op in plan.ops)
    )


@pytest.mark.parametrize("attrs,message", [
    ({"gating": "softplus"}, "gating"),
    ({"norm": 1}, "norm"),
    ({"scale": 0.0}, "scale"),
    ({"scale": float("nan")}, "scale"),
    ({"groups": 3}, "8 experts are not 3 groups"),
    ({"groups": 8}, "8 experts are not 8 groups of 2 or more"),
    ({"groups": 4, "groups_used": 5}, "groups_used"),
    ({"groups": 4, "groups_used": 1}, "1 of 4 groups hold fewer than n_used = 4"),
])  # fmt: skip
def test_route_attributes_are_validated(attrs, message):
    with pytest.raises(Exception, match=message):
        validate_plan(_route_plan(**attrs))


def _route(logits, n_used: int, bias=None, **attrs) -> tuple[np.ndarray, np.ndarray]:
    """The reference router on one op with these attributes (validated first)."""
    logits = np.asarray(logits, np.float32)
    if logits.shape[1] == 8 and n_used == 4:
        validate_plan(_route_plan(**attrs))
    ids, w = np.zeros((len(logits), n_used), np.int32), np.zeros((len(logits), n_used), np.float32)
    weights = [np.asarray(bias, np.float32)] if bias is not None else []
    full = {**dict(OPS[OpKind.MOE_ROUTE].optional), "n_used": n_used, **attrs}
    ReferenceDevice.op_moe_route(None, [ids, w], [logits], weights, full, None)
    return ids, w


def test_softmax_router_renormalizes_the_chosen():
    logits = [[0.0, 1.0, 2.0, 3.0]]
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    ids, w = _route(logits, 2)
    assert ids.tolist() == [[3, 2]]
    np.testing.assert_allclose(w[0], [p[3] / (p[3] + p[2]), p[2] / (p[3] + p[2])], rtol=1e-6)
    ids, w = _route(logits, 2, norm=False, scale=2.5)  # DeepSeek's routed_scaling_factor without norm_topk_prob
    np.testing.assert_allclose(w[0], [2.5 * p[3], 2.5 * p[2]], rtol=1e-6)


def test_sigmoid_router_with_a_selection_bias_that_chooses_but_does_not_weigh():
    logits = [[0.0, 1.0, 2.0, 3.0]]
    s = 1.0 / (1.0 + np.exp(-np.array(logits[0])))
    ids, w = _route(logits, 2, bias=[0.0, 5.0, 0.0, 0.0], gating="sigmoid")
    assert ids.tolist() == [[1, 3]]  # expert 1 by its bias
    np.testing.assert_allclose(w[0], [s[1] / (s[1] + s[3]), s[3] / (s[1] + s[3])], rtol=1e-6)


def test_softmax_weight_router_softmaxes_the_chosen_logits():
    logits = [[0.5, -1.0, 2.0, 1.0]]
    ids, w = _route(logits, 2, gating="softmax_weight", norm=False)
    assert ids.tolist() == [[2, 3]]
    np.testing.assert_allclose(w[0], np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum(), rtol=1e-6)


def test_grouped_top_k_keeps_the_groups_whose_two_best_sum_highest():
    """Groups {0,1}, {2,3}, {4,5}: scores 2 + 0, 1.5 + 1.5 (best), 1.9 + 0: the single best
    expert (0) is in a group that loses; with 2 groups kept, group 0 beats group 2 by 0.1."""
    logits = [[2.0, 0.0, 1.5, 1.5, 1.9, 0.0]]
    ids, _ = _route(logits, 2, gating="sigmoid", groups=3, groups_used=1)
    assert ids.tolist() == [[2, 3]]
    ids, _ = _route(logits, 3, gating="sigmoid", groups=3, groups_used=2)
    assert ids.tolist() == [[0, 2, 3]]
    ids, _ = _route(logits, 3, gating="sigmoid")  # ungrouped: the three largest
    assert ids.tolist() == [[0, 4, 2]]


def test_equal_scores_choose_the_lower_index_and_group():
    ids, _ = _route([[1.0] * 8], 4, gating="sigmoid", groups=4, groups_used=2)
    assert ids.tolist() == [[0, 1, 2, 3]]


def test_reference_moe_scale_scales_each_slot_by_its_expert():
    y = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 6)
    ids = np.array([[2, 0], [1, 2]], np.int32)
    out = np.zeros_like(y)
    ReferenceDevice.op_moe_scale(None, [out], [y, ids], [np.array([0.5, 2.0, -1.0], np.float32)], {}, None)
    np.testing.assert_array_equal(out, [[0, -1, -2, 1.5, 2, 2.5], [12, 14, 16, -9, -10, -11]])


def _scaled_spec(tmp_path) -> ModelSpec:
    layer = 0
    n = read_gguf(FIXTURES / "tiny-qwen3moe-Q8_0.gguf").tensors[f"blk.{layer}.ffn_gate_exps.weight"].shape[0]
    return _spec(tmp_path, add_tensors={f"blk.{layer}.ffn_gate_exps.scale": np.linspace(0.5, 2, n, dtype=np.float32)})


def _layout(spec: ModelSpec, **shapes):
    from rfc.artifacts.layout import TensorEntry, WeightLayout

    return WeightLayout(
        64, tuple(TensorEntry(w.name, w.role, w.format, shapes.get(w.name, w.shape), 0, 0, "") for w in spec.weights)
    )


def test_moe_scale_is_validated(tmp_path):
    """An expert scale is [n_expert] and its ids a router's; the buffer n_used segments."""
    from rfc.artifacts.validate import check_plan_weights

    spec = _scaled_spec(tmp_path)
    validate_plan(spec.plan)
    k = next(i for i, op in enumerate(spec.plan.ops) if op.kind == "moe_scale")
    scale = spec.plan.ops[k].weights[0]
    check_plan_weights(spec.plan, _layout(spec))
    n = next(w.shape[0] for w in spec.weights if w.name == scale)
    with pytest.raises(Exception, match=r"expert scale \(\d+,\) is not \["):
        check_plan_weights(spec.plan, _layout(spec, **{scale: (n + 1,)}))
    ops = list(spec.plan.ops)
    ops.insert(0, ops.pop(k))  # before any router
    with pytest.raises(Exception, match="op 0 .*is not written by a moe_route op before it"):
        validate_plan(replace(spec.plan, ops=tuple(ops)))


def test_reference_slot_scale_scales_each_slot_by_its_weight():
    y = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 6)
    w = np.array([[0.5, 2.0], [-1.0, 0.0]], np.float32)
    out = np.zeros_like(y)
    ReferenceDevice.op_slot_scale(None, [out], [y, w], [], {}, None)
    np.testing.assert_array_equal(out, [[0, 0.5, 1, 6, 8, 10], [-6, -7, -8, 0, 0, 0]])


def test_slot_scale_is_validated(tmp_path):
    """slot_scale's weights are float [T, n_used] and its buffer n_used segments alike."""
    from rfc.artifacts.plan import Buffer, Op

    spec = _scaled_spec(tmp_path)
    buffers = {b.name: b for b in spec.plan.buffers}
    ok = Op("slot_scale", ("exp_gate", "expert_weights"), ("exp_gate",))
    validate_plan(replace(spec.plan, ops=(*spec.plan.ops, ok)))
    odd = Buffer("odd", ("T", buffers["exp_gate"].shape[1] + 1))
    for op, extra, message in (
        (Op("slot_scale", ("exp_gate", "expert_ids"), ("exp_gate",)), (), "is not a float"),
        (Op("slot_scale", ("odd", "expert_weights"), ("odd",)), (odd,), "segments"),
        (Op("slot_scale", ("exp_gate", "expert_weights"), ("exp_up",), ("w",)), (), "weight"),
    ):
        with pytest.raises(Exception, match=message):
            validate_plan(replace(spec.plan, buffers=(*spec.plan.buffers, *extra), ops=(*spec.plan.ops, op)))
