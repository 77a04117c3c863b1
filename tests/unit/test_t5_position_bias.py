"""T5's relative-position buckets (compiler/arch/t5encoder.py bucket) against the formula of T5's paper
and Hugging Face's `_relative_position_bucket` in float64 (which llama.cpp's float arithmetic matches away
from the buckets' edges), the table's reach, and the reference attention's position bias against a direct
float64 softmax(scale q.k + table[clamp(key - query)]). The kernels are held to the reference by
tests/kernels (t5encoder-dense on each GPU attention path) and tests/e2e/test_llama_archs.py (cpu,
against llama.cpp)."""

import math

import numpy as np
import pytest

from rfc.compiler.arch.t5encoder import MAX_BUCKETS, MIN_BUCKETS, bucket, bucket_reach


def paper_bucket(d: int, n_buckets: int, max_distance: int = 128) -> int:
    """Hugging Face's T5 _relative_position_bucket(relative_position = memory - context, bidirectional)."""
    n_buckets //= 2
    out = n_buckets if d > 0 else 0
    n = abs(d)
    max_exact = n_buckets // 2
    if n < max_exact:
        return out + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (n_buckets - max_exact))
    return out + min(large, n_buckets - 1)


@pytest.mark.parametrize("n_buckets", [32, 64, 6, 8])
def test_buckets_are_t5s(n_buckets):
    got = [bucket(d, n_buckets) for d in range(-300, 301)]
    want = [paper_bucket(d, n_buckets) for d in range(-300, 301)]
    assert got == want
    # T5's 32: distances below 8 exact, keys after the query in buckets 16..31
    assert (bucket(0, 32), bucket(7, 32), bucket(-7, 32), bucket(20, 32), bucket(-20, 32)) == (0, 23, 7, 26, 10)


def test_the_reach_is_where_both_sides_end():
    """For every bucket count the op takes: from the reach on both sides stay in their last bucket, and
    one less would not (the table could not be smaller)."""
    for n_buckets in range(MIN_BUCKETS, MAX_BUCKETS + 1):
        reach = bucket_reach(n_buckets)
        half = n_buckets >> 1
        ends = ((1, 2 * half - 1), (-1, half - 1))
        for side, last in ends:
            assert all(bucket(side * d, n_buckets) == last for d in range(reach, 4 * 128)), n_buckets
        assert reach == 1 or any(bucket(side * (reach - 1), n_buckets) != last for side, last in ends), n_buckets
        assert reach <= 129


def test_t5s_reach():
    assert bucket_reach(32) == 91  # 8 + 8 log(91 / 8) / log(16) = 15.02: the last bucket from 91 on
    assert bucket_reach(6) == 12


@pytest.mark.parametrize("n", [5, 9])
def test_reference_attention_adds_the_table(n):
    from types import SimpleNamespace

    from rfc.artifacts.kv_cache_type import KvCacheTypes
    from rfc.runtime.devices.reference import ReferenceDevice

    rng = np.random.default_rng(11)
    nh, hd, bs, reach = 3, 8, 16, 2
    q = rng.standard_normal((n, nh * hd)).astype(np.float32)
    k = rng.standard_normal((n, nh, hd)).astype(np.float32)
    v = rng.standard_normal((n, nh, hd)).astype(np.float32)
    table = rng.standard_normal((2 * reach + 1) * nh).astype(np.float32) * 3
    dev = SimpleNamespace(k_cache="k", v_cache="v", cache_types=KvCacheTypes(), _k_rot=0, _v_rot=0)
    dev._load = lambda cache, ctype, layer, slots, nkv, d: {"k": k, "v": v}[cache][slots]
    batch = SimpleNamespace(block_size=bs, context_lens=[n], seq_start=[0, n], block_tables=[np.array([0])],
                            positions=np.arange(n))  # fmt: skip
    attrs = {"layer": 0, "n_heads": nh, "n_kv_heads": nh, "head_dim": hd, "scale": 0.5, "softcap": None,
             "window": None, "causal": False, "pos_bias": reach}  # fmt: skip
    out = np.zeros((n, nh * hd), np.float32)
    ReferenceDevice.op_attention(dev, [out], [q], [table], attrs, batch)
    qs = q.reshape(n, nh, hd).astype(np.float64)
    want = np.zeros((n, nh, hd))
    for t in range(n):  # every key of the sequence, before and after the query
        for h in range(nh):
            d = np.clip(np.arange(n) - t, -reach, reach) + reach
            s = 0.5 * (k[:, h] @ qs[t, h]) + table.reshape(2 * reach + 1, nh)[d, h]
            p = np.exp(s - s.max())
            want[t, h] = (p / p.sum()) @ v[:, h]
    np.testing.assert_allclose(out.reshape(n, nh, hd), want, rtol=1e-5, atol=1e-5)


def _plan(**attrs):
    from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan

    nh, hd = 2, 8
    base = {"layer": 0, "n_heads": nh, "n_kv_heads": nh, "head_dim": hd, "scale": 1.0, "causal": False,
            "pos_bias": 3}  # fmt: skip
    ends = (Buffer("tokens", ("T",), "i32"), Buffer("logits", ("R", 8)), Buffer("hidden", ("R", nh * hd)))
    ops = (
        Op("kv_write", ("k", "v"), (), (), {"layer": 0}),
        Op("attention", ("q",), ("att",), ("table",), {**base, **attrs}),
    )
    bufs = tuple(Buffer(n, ("T", nh * hd)) for n in ("q", "k", "v", "att"))
    return Plan((*ends, *bufs), ops, KVSpec(1, nh, hd), "tokens", "logits", "hidden", 8, nh * hd, 64)


def test_the_op_takes_a_table_as_documented():
    from rfc.artifacts.plan import validate_plan

    validate_plan(_plan())


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"causal": True}, r"pos_bias is an encoder's"),
        ({"alibi": 8.0}, r"pos_bias and alibi"),
        ({"pos_bias": 0}, r"pos_bias = 0"),
        ({"pos_bias": 5000}, r"pos_bias = 5000"),
    ],
)
def test_the_op_refuses_what_its_kernels_do_not_compute(attrs, message):
    from rfc.artifacts.errors import BundleError
    from rfc.artifacts.plan import validate_plan

    with pytest.raises(BundleError, match=message):
        validate_plan(_plan(**attrs))


def _file(tmp_path, tensors):
    """A GGUF holding `tensors` (name -> array, or (raw uint16 array, its GGML type)) and nothing else."""
    from gguf import GGUFWriter

    path = tmp_path / "values.gguf"
    w = GGUFWriter(str(path), "t5encoder")
    for name, value in tensors.items():
        if isinstance(value, tuple):
            w.add_tensor(name, value[0], raw_dtype=value[1])
        else:
            w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_small_values_reads_f32_f16_and_bf16_exactly(tmp_path):
    from gguf import GGMLQuantizationType

    from rfc.compiler.arch.builder import ModelBuilder
    from rfc.compiler.gguf_reader import read_gguf

    want = np.array([[0.5, -1.25, 3.0], [7.75, -0.0625, 100.0]], np.float32)  # exact in all three
    bf16 = (want.view(np.uint32) >> 16).astype(np.uint16)
    path = _file(tmp_path, {"a": want, "b": want.astype(np.float16), "c": (bf16, GGMLQuantizationType.BF16)})
    b = ModelBuilder(read_gguf(path))
    for name in "abc":
        got = b.small_values(name, (2, 3))
        assert got.dtype == np.float32 and np.array_equal(got, want), name
    assert b.unaccounted() == []  # each one read counts as consumed


@pytest.mark.parametrize(
    ("value", "shape", "message"),
    [
        (np.array([1.0, np.inf], np.float32), (2,), r"a = inf is not a finite number"),
        (np.array([2e6, 1.0], np.float32), (2,), r"a = 2000000.0 is not a finite number"),
        (np.array([1.0, 2.0], np.float32), (3,), r"shape mismatch for a"),
    ],
)
def test_small_values_refuses_what_no_plan_may_hold(tmp_path, value, shape, message):
    from rfc.compiler.arch.builder import ModelBuilder
    from rfc.compiler.errors import CompileError
    from rfc.compiler.gguf_reader import read_gguf

    b = ModelBuilder(read_gguf(_file(tmp_path, {"a": value})))
    with pytest.raises(CompileError, match=message):
        b.small_values("a", shape)
