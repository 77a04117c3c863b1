"""The gelu op (the ungated FFNs of phi2, starcoder2, gptneox, falcon): the reference device
against ggml_gelu's formula in float64 (the cpu and GPU kernels are held to the reference:
tests/kernels)."""

import numpy as np

from rfc.runtime.devices.reference import ReferenceDevice


def gelu64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * x * (1.0 + 0.044715 * x * x)))


def test_reference_gelu_is_ggml_gelus_formula():
    x = np.concatenate([np.linspace(-12, 12, 4000), np.random.default_rng(0).standard_normal(4000) * 3])
    x = x.astype(np.float32).reshape(4, -1)
    out = np.empty_like(x)
    ReferenceDevice.op_gelu(None, [out], [x], [], {}, None)
    want = gelu64(x)
    assert np.abs(out - want).max() <= 2e-6 * max(1.0, np.abs(want).max())
    assert out[x < -9].max() <= 0 and np.allclose(out[x > 9], x[x > 9])  # the tails: 0 and x
