"""ALiBi's slopes (artifacts/ops/core.py alibi_slopes) against ggml's soft_max_ext formula worked in
numpy float32, and the reference attention's bias against a direct float64 computation of
softmax(scale q.k + slope_h (k_pos - q_pos)). The kernels are held to the reference by
tests/kernels (jais-steep on each GPU attention path) and tests/e2e/test_llama_archs.py (cpu)."""

import numpy as np
import pytest

from rfc.artifacts.ops.core import alibi_bases, alibi_slopes


def ggml_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """ggml-cpu's soft_max_f32: n_head_log2 = 1 << floor(log2(n_head)), m0 = powf(2, -max_bias /
    n_head_log2), m1 = powf(2, -(max_bias / 2) / n_head_log2), slope h = powf(m0, h + 1) below
    n_head_log2, else powf(m1, 2 (h - n_head_log2) + 1); all float32."""
    f = np.float32
    nlog2 = 1 << int(np.floor(np.log2(n_head)))
    m0 = np.power(f(2.0), f(-f(max_bias) / f(nlog2)))
    m1 = np.power(f(2.0), f(-(f(max_bias) / f(2.0)) / f(nlog2)))
    return np.array([np.power(m0, f(h + 1)) if h < nlog2 else np.power(m1, f(2 * (h - nlog2) + 1))
                     for h in range(n_head)], dtype=np.float32)  # fmt: skip


@pytest.mark.parametrize("n_head", [1, 2, 3, 4, 6, 12, 32, 40, 71, 112])
@pytest.mark.parametrize("max_bias", [8.0, 1.0, 0.5, 64.0])
def test_slopes_are_ggmls(n_head, max_bias):
    got = np.array(alibi_slopes(n_head, max_bias), dtype=np.float32)
    want = ggml_slopes(n_head, max_bias)
    # powf and numpy's float32 power may differ in the last place; a formula slip differs by far more
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=0)
    nlog2, m0, m1 = alibi_bases(n_head, max_bias)
    assert nlog2 <= n_head < 2 * nlog2 and 0 < m1 < 1 and 0 < m0 < 1
    assert min(got) >= 2.0**-64  # normal float32 literals (the op bounds max_bias to 64)


def test_bloom_slopes_are_the_papers():
    """ALiBi's paper for 8 heads and a maximum bias of 8: 1/2, 1/4, ..., 1/256."""
    assert alibi_slopes(8, 8.0) == [2.0**-i for i in range(1, 9)]


def test_reference_attention_adds_the_bias():
    from types import SimpleNamespace

    from rfc.artifacts.kv_cache_type import KvCacheTypes
    from rfc.runtime.devices.reference import ReferenceDevice

    rng = np.random.default_rng(7)
    n, nh, hd, bs = 5, 3, 8, 16
    q = rng.standard_normal((n, nh * hd)).astype(np.float32)
    k = rng.standard_normal((n, nh, hd)).astype(np.float32)
    v = rng.standard_normal((n, nh, hd)).astype(np.float32)
    dev = SimpleNamespace(k_cache=None, v_cache=None, cache_types=KvCacheTypes(), _k_rot=0, _v_rot=0)
    dev._load = lambda cache, ctype, layer, slots, nkv, d: {"k": k, "v": v}[cache][slots]
    dev.k_cache, dev.v_cache = "k", "v"
    batch = SimpleNamespace(block_size=bs, context_lens=[n], seq_start=[0, n], block_tables=[np.array([0])],
                            positions=np.arange(n))  # fmt: skip
    attrs = {"layer": 0, "n_heads": nh, "n_kv_heads": nh, "head_dim": hd, "scale": 0.35, "softcap": None,
             "window": None, "alibi": 2.0}  # fmt: skip
    out = np.zeros((n, nh * hd), np.float32)
    ReferenceDevice.op_attention(dev, [out], [q], [], attrs, batch)
    slopes = np.array(alibi_slopes(nh, 2.0), np.float64)
    qs = q.reshape(n, nh, hd).astype(np.float64)
    want = np.zeros((n, nh, hd))
    for t in range(n):
        for h in range(nh):
            s = 0.35 * (k[: t + 1, h] @ qs[t, h]) + slopes[h] * (np.arange(t + 1) - t)
            p = np.exp(s - s.max())
            want[t, h] = (p / p.sum()) @ v[: t + 1, h]
    np.testing.assert_allclose(out.reshape(n, nh, hd), want, rtol=1e-5, atol=1e-5)
