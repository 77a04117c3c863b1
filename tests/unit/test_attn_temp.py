"""mistral3's attention temperature tuning (llama 4 style; compiler/arch/mistral3.py): the rope
op's temp_scale / temp_floor, what validate_plan refuses, the reference's per-position factor
worked by hand, and a malformed file refused by `rfc compile` with one line, exit 2."""

import math
from dataclasses import replace

import numpy as np
import pytest

from rfc.artifacts.plan import validate_plan
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-mistral3temp-Q8_0.gguf"


def _ropes(spec):
    return [op for op in spec.plan.ops if op.kind == "rope"]


def test_mistral3_temperature_tuning_is_a_rope_attribute():
    spec = build_spec(read_gguf(SRC))
    assert {(op.attrs["temp_scale"], op.attrs["temp_floor"]) for op in _ropes(spec)} == {(np.float32(0.3), 16)}
    plain = build_spec(read_gguf(FIXTURES / "tiny-mistral3-Q8_0.gguf"))  # no temperature_scale: no attribute
    assert all("temp_scale" not in op.attrs for op in _ropes(plain))


@pytest.mark.parametrize("change,message", [
    ({"temp_floor": 0}, "temp_floor"),
    ({"temp_scale": float("inf")}, "temp_scale"),
    ({"n_rot": 16}, "needs n_rot == head_dim"),
])  # fmt: skip
def test_validate_plan_refuses_a_bad_temperature(change, message):
    spec = build_spec(read_gguf(SRC))
    ops = tuple(replace(op, attrs={**op.attrs, **change}) if op.kind == "rope" else op for op in spec.plan.ops)
    with pytest.raises(Exception, match=message):
        validate_plan(replace(spec.plan, ops=ops))


def test_reference_scales_q_by_position():
    """q times 1 + s ln(floor(pos / floor) + 1) after the rotation, k untouched."""
    from types import SimpleNamespace

    from rfc.runtime.devices.reference import ReferenceDevice

    op = next(iter(_ropes(build_spec(read_gguf(SRC)))))
    attrs = {**op.attrs, "attn_factor": 1.0, "ext_factor": 0.0, "beta_fast": 32.0, "beta_slow": 1.0}
    pos = np.array([0, 15, 16, 33, 47, 48], dtype=np.int32)
    q = np.ones((len(pos), 8 * 32), np.float32)
    k = np.ones((len(pos), 2 * 32), np.float32)
    q0, k0 = q.copy(), k.copy()
    no_temp = {**attrs, "temp_scale": 0.0}
    ReferenceDevice.op_rope(None, (q0, k0), (q0, k0), (), no_temp, SimpleNamespace(positions=pos))
    ReferenceDevice.op_rope(None, (q, k), (q, k), (), attrs, SimpleNamespace(positions=pos))
    want = [1 + float(np.float32(0.3)) * math.log(n + 1) for n in (0, 0, 1, 2, 2, 3)]
    np.testing.assert_allclose(q / q0, np.repeat(np.array(want)[:, None], q.shape[1], axis=1), rtol=1e-6)
    np.testing.assert_array_equal(k, k0)


def test_a_hostile_temperature_is_one_line_exit_2(tmp_path):
    model = rewrite_gguf(SRC, tmp_path / "bad.gguf", metadata={"mistral3.attention.temperature_scale": float("nan")})
    assert_compile_refused(model, tmp_path, "mistral3.attention.temperature_scale")
