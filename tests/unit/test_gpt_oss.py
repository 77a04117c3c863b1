"""gpt-oss (compiler/arch/gpt_oss.py): the plan llama.cpp's openai-moe graph computes, the
attributes and weight shapes validation holds its new parts to (sinks, swiglu_oai, moe_add_bias),
and the reference's new math on cases worked by hand."""

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.plan import OPS, OpKind, validate_plan
from rfc.artifacts.validate import check_plan_weights
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import ModelSpec, build_spec
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.devices.reference import ReferenceDevice
from rfc.runtime.engine.kv_cache import BlockManager
from tests.conftest import FIXTURES

pytestmark = pytest.mark.shared
SRC = FIXTURES / "tiny-gpt-oss-F16.gguf"


@cache
def _spec() -> ModelSpec:
    return build_spec(read_gguf(SRC))


def _layout(spec: ModelSpec, reshape: dict | None = None) -> WeightLayout:
    """The plan's weights as layout entries of the GGUF's shapes (`reshape`: some other)."""
    tensors = read_gguf(SRC).tensors
    shapes = {**{n: t.shape for n, t in tensors.items()}, **(reshape or {})}
    return WeightLayout(256, tuple(TensorEntry(n, n, tensors[n].format, shapes[n], 0, 0, "") for n in tensors))


def test_plan_has_sinks_windows_biased_experts_and_swiglu_oai():
    spec = _spec()
    plan = spec.plan
    validate_plan(plan)
    check_plan_weights(plan, _layout(spec))
    attention = [op for op in plan.ops if op.kind == "attention"]
    assert [op.weights for op in attention] == [(f"blk.{i}.attn_sinks.weight",) for i in range(4)]
    assert [op.attr("window") for op in attention] == [24, None, 24, None]  # even layers slide (pattern 2)
    assert all(op.attrs["scale"] == pytest.approx(1 / 8) for op in attention)  # 1/sqrtf(n_rot)
    (swiglu,) = {(op.attr("activation"), op.attr("alpha"), op.attr("limit")) for op in plan.ops if op.kind == "swiglu"}
    assert swiglu == ("swiglu_oai", 1.702, 7.0)
    biases = [op.weights[0] for op in plan.ops if op.kind == "moe_add_bias"]
    assert biases == [f"blk.{i}.ffn_{x}_exps.bias" for i in range(4) for x in ("gate", "up", "down")]
    routes = [op for op in plan.ops if op.kind == "moe_route"]
    assert all(op.attrs == {"n_used": 2, "gating": "softmax_weight", "norm": False} for op in routes)  # llama.cpp's
    assert spec.hparams.extra["sliding_window_layers"] == [0, 2]


@pytest.mark.parametrize("name,shape,message", [
    ("blk.1.attn_sinks.weight", (3,), r"attention sinks \(3,\) are not \[4\]"),
    ("blk.1.attn_sinks.weight", (4, 1), r"attention sinks \(4, 1\) are not \[4\]"),
    ("blk.2.ffn_up_exps.bias", (3, 128), r"bias \(3, 128\) is not \[4, 128\]"),
    ("blk.2.ffn_down_exps.bias", (4, 128), r"bias \(4, 128\) is not \[4, 256\]"),
])  # fmt: skip
def test_bundle_weights_of_the_wrong_shape_are_refused(name, shape, message):
    spec = _spec()
    with pytest.raises(Exception, match=message):
        check_plan_weights(spec.plan, _layout(spec, {name: shape}))


def _swiglu_plan(**attrs):
    plan = _spec().plan
    return replace(
        plan, ops=tuple(replace(op, attrs={**op.attrs, **attrs}) if op.kind == "swiglu" else op for op in plan.ops)
    )


@pytest.mark.parametrize("attrs,message", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"limit": -7.0}, "limit"),
    ({"limit": float("inf")}, "limit"), ({"activation": "swiglu_oai2"}, "activation"),
])  # fmt: skip
def test_swiglu_oai_attributes_are_validated(attrs, message):
    with pytest.raises(Exception, match=message):
        validate_plan(_swiglu_plan(**attrs))


def test_moe_add_bias_needs_a_router_before_it():
    plan = _spec().plan
    first_route = next(i for i, op in enumerate(plan.ops) if op.kind == "moe_route")
    ops = tuple(op for i, op in enumerate(plan.ops) if i != first_route)
    with pytest.raises(Exception, match="is not written by a moe_route op before it"):
        validate_plan(replace(plan, ops=ops))


def test_reference_swiglu_oai_clamps_gate_and_up():
    g = np.array([[-3.0, 0.5, 7.0, 9.0, 100.0]], np.float32)
    u = np.array([[-9.0, 0.5, -7.5, 2.0, 8.0]], np.float32)
    out = np.zeros_like(g)
    attrs = {**dict(OPS[OpKind.SWIGLU].optional), "activation": "swiglu_oai"}
    ReferenceDevice.op_swiglu(None, [out], [g, u], [], attrs, None)
    x, up = np.minimum(g.astype(np.float64), 7.0), np.clip(u.astype(np.float64), -7.0, 7.0)
    want = x / (1 + np.exp(-1.702 * x)) * (up + 1)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert out[0, 3] == out[0, 4] * 3 / 8  # both gates clamped to 7: only the (clamped) up differs


def test_reference_moe_add_bias_adds_each_slots_expert_row():
    y = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 6)
    ids = np.array([[2, 0], [1, 2]], np.int32)
    bias = np.array([[0, 0, 1], [10, 20, 30], [100, 200, 300]], np.float32)
    out = np.zeros_like(y)
    ReferenceDevice.op_moe_add_bias(None, [out], [y, ids], [bias], {}, None)
    np.testing.assert_array_equal(out, [[100, 201, 302, 3, 4, 6], [16, 27, 38, 109, 210, 311]])


def test_reference_sink_takes_its_share_of_the_softmax():
    """One head, two positions: at position 1 the weights are e^s_j / (e^s_0 + e^s_1 + e^sink)."""
    ref = ReferenceDevice.__new__(ReferenceDevice)  # the two ops need only the caches and how they are stored
    ref.cache_types = KvCacheTypes()  # f16, unrotated
    ref._k_rot, ref._v_rot = ref.cache_types.rotations(2)
    ref.k_cache = np.zeros((1, 8, 2), np.float16)  # [layer, slot, row]
    ref.v_cache = np.zeros((1, 8, 2), np.float16)  # [layer, slot, row]
    blocks = BlockManager(2, 4)
    blocks.allocate(0, 2)
    batch = build_batch([ScheduledChunk(0, 0, (1, 2))], blocks)
    k = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    v = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    ref.op_kv_write([], [k, v], [], {"layer": 0}, batch)
    q = np.array([[2.0, 0.0], [0.5, 1.5]], np.float32)
    out = np.zeros_like(q)
    sink = np.array([0.7], np.float32)
    attrs = {"layer": 0, "n_heads": 1, "n_kv_heads": 1, "head_dim": 2, "scale": 1.0, "window": None, "softcap": None}
    ref.op_attention([out], [q], [sink], attrs, batch)
    e = np.exp([0.5, 1.5, 0.7])
    np.testing.assert_allclose(out[1], (e[0] * v[0] + e[1] * v[1]) / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(out[0], np.exp(2.0) * v[0] / (np.exp(2.0) + np.exp(0.7)), rtol=1e-6)
