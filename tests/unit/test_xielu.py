"""apertus's xIELU activation: the plan op on the reference device against float64 numpy of
llama.cpp's formula (ggml_xielu: the stored alphas through softplus, then op_xielu), and the
recipe's reading of the per-layer `xielu.*` keys."""

import math

import numpy as np
import pytest

from rfc.compiler.arch.apertus import read_xielu, xielu_constants
from rfc.compiler.errors import CompileError
from rfc.runtime.devices.reference import ReferenceDevice


def _softplus64(x: float) -> float:
    return x if x > 20.0 else math.log1p(math.exp(x))


def xielu64(x: np.ndarray, alpha_n: float, alpha_p: float, beta: float, eps: float) -> np.ndarray:
    """llama.cpp's xIELU of the stored constants, in float64."""
    a_p, a_n = _softplus64(alpha_p), beta + _softplus64(alpha_n)
    x = x.astype(np.float64)
    return np.where(x > 0, a_p * x * x + beta * x, (np.expm1(np.minimum(x, eps)) - x) * a_n + beta * x)


# (alpha_n, alpha_p, beta, eps) as stored: Apertus-like, an eps that clips part of the negative
# side, softplus's pass-through above 20, negative alphas
STORED = [(0.8, 0.8, 0.5, -1e-6), (-0.5, 1.5, 0.25, -0.05), (25.0, 21.0, 0.5, -1e-6), (-3.0, -2.0, 1.0, 0.0)]


@pytest.mark.parametrize("stored", STORED, ids=["apertus", "eps-clips", "softplus-passthrough", "negative-alphas"])
def test_reference_xielu_matches_llama_cpp_formula(stored):
    x = np.concatenate([np.linspace(-12, 6, 2001), [-1e-7, -1e-6, 0.0, 1e-7, -0.049, -0.051]]).astype(np.float32)
    out = np.zeros_like(x)
    attrs = xielu_constants(*stored)
    ReferenceDevice.op_xielu(None, [out], [x], [], attrs, None)
    want = xielu64(x, *stored)
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-6 * float(np.abs(want).max()))


def test_constants_are_ggml_xielu_s():
    got = xielu_constants(0.8, -0.3, 0.5, -1e-6)
    assert got["alpha_p"] == pytest.approx(math.log1p(math.exp(-0.3)), rel=1e-6)
    assert got["alpha_n"] == pytest.approx(0.5 + math.log1p(math.exp(0.8)), rel=1e-6)
    assert (got["beta"], got["eps"]) == (0.5, float(np.float32(-1e-6)))
    assert xielu_constants(30.0, 30.0, 0.0, 0.0)["alpha_p"] == 30.0  # ggml's softplus: x above 20


class _Model:
    def __init__(self, metadata):
        self.metadata, self.unread, self.keys_read = metadata, {}, set()
        self.path = type("P", (), {"name": "m.gguf"})()


def _keys(**over):
    md = {"xielu.alpha_n": [0.8, -0.5], "xielu.alpha_p": [0.8, 1.5], "xielu.beta": 0.5, "xielu.eps": [-1e-6, -0.05]}
    return {**md, **over}


def test_per_layer_arrays_and_scalars():
    layers = read_xielu(_Model(_keys()), 2)
    assert [c["eps"] for c in layers] == [float(np.float32(-1e-6)), float(np.float32(-0.05))]
    assert layers[0]["beta"] == layers[1]["beta"] == 0.5  # a scalar: every layer
    assert layers[0]["alpha_n"] != layers[1]["alpha_n"]


@pytest.mark.parametrize("over,why", [
    ({"xielu.alpha_n": None}, "missing metadata xielu.alpha_n"),
    ({"xielu.alpha_p": [0.8, 1.5, 0.0]}, "has 3 entries for 2 layers"),  # llama.cpp: wrong array length
    ({"xielu.beta": float("nan")}, "xielu.beta is not numbers"),
    ({"xielu.eps": [1e9, 0.0]}, "xielu.eps is not numbers"),
    ({"xielu.eps": "x"}, "xielu.eps is not numbers"),
])  # fmt: skip
def test_bad_keys_are_refused_by_name(over, why):
    md = {k: v for k, v in _keys(**over).items() if v is not None}
    with pytest.raises(CompileError, match=why):
        read_xielu(_Model(md), 2)


def _apertus(tmp_path, edit=None):
    """The spec of tests/data/llama-archs/apertus-dense (llama.cpp's layout), its description
    edited by `edit` first."""
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.spec import build_spec
    from tests.e2e.test_llama_archs import archs

    desc = archs.load("apertus-dense")
    if edit:
        edit(desc)
    path = tmp_path / "apertus.gguf"
    archs.write_model(desc, path, "apertus-dense")
    return build_spec(read_gguf(path))


def test_recipe_builds_llama_cpp_s_graph(tmp_path):
    from tests.e2e.test_llama_archs import archs

    spec = _apertus(tmp_path)
    ops = spec.plan.ops
    xielu = [op for op in ops if op.kind == "xielu"]
    stored = {f"xielu.{k}": v for k, v in archs.XIELU.items()}  # per layer, as the file holds them
    assert [op.attrs for op in xielu] == read_xielu(_Model(stored), 2) and xielu[0].attrs != xielu[1].attrs
    assert "swiglu" not in {op.kind for op in ops}  # no gate
    assert sum(op.kind == "rmsnorm" and "heads" in op.attrs for op in ops) == 4  # Q and K per head, both layers


def test_an_ffn_bias_is_refused_not_dropped(tmp_path):
    def add_bias(desc):
        desc["tensors"].append(["blk.0.ffn_up.bias", [384], "F32"])

    with pytest.raises(CompileError, match="ffn_up.bias"):
        _apertus(tmp_path, add_bias)
