"""KV-cache types (--cache-type-k/-v): the q8_0 / q4_0 rows the reference device writes are
ggml's blocks (gguf-py's quantizers, which follow ggml-quants.c, are the oracle), the KV budget
counts their real bytes, and the flags refuse an unknown type in one line."""

import numpy as np
import pytest
from click.testing import CliRunner
from gguf.constants import GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from rfc.artifacts.kv_cache_type import CacheType, CacheTypeError, KvCacheTypes, parse_cache_type
from rfc.artifacts.plan import KVSpec
from rfc.cli.bench_cmd import bench_cmd
from rfc.cli.run_cmd import run_cmd
from rfc.cli.serve_cmd import serve_cmd
from rfc.runtime.engine.kv_budget import KvSizing, budget_blocks, token_bytes
from rfc.runtime.model.kv_quant import dequantize_rows, hadamard, quantize_rows, rotate

Q8, Q4 = CacheType.Q8_0, CacheType.Q4_0
_GGML = {Q8: GGMLQuantizationType.Q8_0, Q4: GGMLQuantizationType.Q4_0}


def _rows(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 30, (64, 1))).astype(np.float32)
    x[3, :32] = 0.0  # an all-zero block: scale 0, quants 0 (8 for q4_0)
    x[5, 32:64] = -2.5  # equal magnitudes: the first wins
    return x


@pytest.mark.parametrize("t", [Q8, Q4])
def test_rows_are_ggml_blocks(t):
    x = _rows(1)
    ours = quantize_rows(x, t)
    assert ours.shape == (64, t.row_bytes(256)) == (64, 8 * t.block_bytes)
    theirs = gguf_quantize(x, _GGML[t]).reshape(ours.shape)
    if t is Q8:  # ggml's vector path (what llama.cpp's KV cache uses) rounds half to even, its reference away from zero
        blocks = x.reshape(64, 8, 32)
        d = np.abs(blocks).max(-1, keepdims=True) / np.float32(127)
        with np.errstate(divide="ignore", invalid="ignore"):
            tie = np.abs(np.modf(blocks * np.where(d != 0, np.float32(1) / d, 0).astype(np.float32))[0]) == 0.5
        keep = np.concatenate([np.ones((64, 8, 2), bool), ~tie], axis=-1).reshape(ours.shape)
        assert np.array_equal(ours[keep], theirs[keep])
    else:
        assert np.array_equal(ours, theirs)


# q8_0: half a step of amax / 127; q4_0: its grid is -8d..7d with -8d the block's largest value,
# so the far end (-amax, clamped to 7d) is off by a whole step of amax / 8
@pytest.mark.parametrize("t,worst", [(Q8, 0.5 / 127), (Q4, 1 / 8)])
def test_dequantized_rows_are_within_a_step(t, worst):
    x = _rows(2)
    back = dequantize_rows(quantize_rows(x, t), t, 256)
    amax = np.abs(x.reshape(64, 8, 32)).max(-1, keepdims=True)
    err = np.abs(back - x).reshape(64, 8, 32)
    assert np.all(err <= amax * (worst + 2.0**-11) * (1 + 1e-5))  # + the f16 scale's rounding
    assert back.dtype == np.float32 and np.array_equal(back[3, :32], np.zeros(32, np.float32))


def test_bytes_per_token_and_pages_in_a_budget():
    kv = KVSpec(n_layers=30, n_kv_heads=3, head_dim=64)  # SmolLM2-135M
    f16, q8 = KvCacheTypes(), KvCacheTypes(Q8, Q8)
    assert token_bytes("cpu", kv, f16) == 30 * 2 * 192 * 2 == f16.token_bytes(kv)
    assert token_bytes("cpu", kv, q8) == 30 * 2 * 6 * 34 == q8.token_bytes(kv)
    assert token_bytes("cpu", kv, KvCacheTypes(Q8, Q4)) == 30 * 6 * (34 + 18)
    sizing = dict(device="cpu", kv=kv, block_size=16, context_length=8192)
    pages = {
        t: budget_blocks(KvSizing(**sizing, kv_memory=1 << 30, cache_types=t), host_total=64 << 30)[0]
        for t in (f16, q8)
    }
    # a budget below the 4-context cap: q8_0 holds 64/34 = 1.88x the pages of f16
    small = {
        t: budget_blocks(KvSizing(**sizing, kv_memory=300 << 20, cache_types=t), host_total=64 << 30)[0]
        for t in (f16, q8)
    }
    assert pages[f16] == pages[q8] == 4 * 8192 // 16  # both at the cap
    assert small[q8] / small[f16] == pytest.approx(64 / 34, rel=1e-2)


def test_parse_and_check():
    assert parse_cache_type("Q8_0") is Q8 and parse_cache_type("f16") is CacheType.F16
    with pytest.raises(CacheTypeError, match=r"--cache-type-k q5_1: expected one of f16, q8_0, q4_0"):
        parse_cache_type("q5_1", "--cache-type-k")
    with pytest.raises(CacheTypeError, match="head_dim to be a multiple of 32; this model's is 48"):
        KvCacheTypes(Q8, CacheType.F16).check(KVSpec(2, 2, 48))
    KvCacheTypes().check(KVSpec(2, 2, 48))  # f16 stores any head_dim


@pytest.mark.parametrize("cmd", [serve_cmd, run_cmd, bench_cmd])
@pytest.mark.parametrize("flag", ["--cache-type-k", "--cache-type-v", "-ctk"])
def test_cli_refuses_an_unknown_cache_type_in_one_line(tmp_path, cmd, flag):
    result = CliRunner().invoke(cmd, [str(tmp_path), flag, "q3_k"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    shown = "--cache-type-v" if flag == "--cache-type-v" else "--cache-type-k"
    assert len(lines) == 1 and lines[0] == f"rfc: error: {shown} q3_k: expected one of f16, q8_0, q4_0", result.output


def test_rotations_are_llama_cpps():
    """llama-kv-cache.cpp attn_rot_k / attn_rot_v: K in the largest power of two >= 64 dividing
    head_dim, V in 64s, nothing for an F16 side or a head_dim that is no multiple of 64."""
    q8 = KvCacheTypes(Q8, Q8)
    assert [q8.rotations(hd) for hd in (32, 64, 96, 128, 192, 256)] == [
        (0, 0),
        (64, 64),
        (0, 0),
        (128, 64),
        (64, 64),
        (256, 64),
    ]
    assert KvCacheTypes(Q8, CacheType.F16).rotations(128) == (128, 0) and KvCacheTypes().rotations(128) == (0, 0)
    x = _rows(3)
    h = hadamard(64)
    assert np.allclose(h @ h, np.eye(64), atol=1e-12) and np.array_equal(h, h.T)
    assert np.allclose(rotate(rotate(x, 64), 64), x, rtol=1e-5, atol=1e-5 * np.abs(x).max())
    assert rotate(x, 0) is x
