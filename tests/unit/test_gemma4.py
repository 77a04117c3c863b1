"""gemma4's recipe (compiler/arch/gemma4.py) plans what llama.cpp's src/models/gemma4.cpp
computes, and refuses by name, before anything is allocated, what it does not run yet or what is
malformed. Plans are inspected directly (no kernels, no device); two refusals go through
`rfc compile` for the one-line exit 2."""

import numpy as np
import pytest

from rfc.artifacts.kv_cache_type import CacheType, CacheTypeError, KvCacheTypes
from rfc.artifacts.plan import KVSpec
from rfc.compiler.errors import CompileError
from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf, spec_of

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-gemma4-Q8_0.gguf"
K = "gemma4."


def _spec(tmp_path=None, **edits):
    return spec_of(SRC, tmp_path, **edits)


def test_plan_follows_llama_cpp():
    spec = _spec()
    ops = spec.plan.ops
    v_norms = [op for op in ops if op.kind == "rmsnorm" and op.inputs[0].startswith("v") and not op.weights]
    assert [op.attrs["heads"] for op in v_norms] == [4, 4, 4, 1]  # per-layer KV heads (31B's 16 and 4 in miniature)
    attn = [op.attrs for op in ops if op.kind == "attention"]
    assert [a.get("window") for a in attn] == [16, 16, 16, None] and {a["scale"] for a in attn} == {1.0}
    # 31B's geometry: sliding layers 8 x 4 x 32, the global one 8 x 1 x 64 in buffers of its own
    assert [(a["n_heads"], a["n_kv_heads"], a["head_dim"]) for a in attn] == [(8, 4, 32)] * 3 + [(8, 1, 64)]
    assert spec.plan.kv == KVSpec(4, 4, 32) and spec.plan.kv.row == 128  # the widest row; layer 3 uses 64 of it
    assert spec.plan.buffer("q_8x1x64").shape == ("T", 512) and spec.plan.buffer("k_8x1x64").shape == ("T", 64)
    ropes = [op for op in ops if op.kind == "rope"]
    assert [op.weights for op in ropes] == [(), (), (), ("rope_freqs.weight",)]  # proportional RoPE on the global layer
    assert [op.attrs["freq_base"] for op in ropes] == [10000.0, 10000.0, 10000.0, 1e6]
    assert [op.attrs["n_rot"] for op in ropes] == [32, 32, 32, 64]  # rope.dimension_count_swa, rope.dimension_count
    # layer 3 has no attn_v: V is K's projection (then normed without a weight, K with its norm)
    assert [op.weights[0] for op in ops if op.kind == "matmul" and op.outputs[0].startswith("v")][
        3
    ] == "blk.3.attn_k.weight"
    scales = [op.attrs["factor"] for op in ops if op.kind == "scale"]
    assert scales == [np.float32(0.9 - 0.1 * i) for i in range(4)]  # layer_output_scale, read from the file
    assert [op.attrs["cap"] for op in ops if op.kind == "softcap"] == [30.0]  # llama.cpp's default without the key
    assert spec.hparams.tied_embeddings


def test_final_softcap_zero_turns_it_off(tmp_path):
    spec = _spec(tmp_path, metadata={K + "final_logit_softcapping": 0.0})
    assert not [op for op in spec.plan.ops if op.kind == "softcap"]


REFUSED = {
    # E2B/E4B: tests/unit/test_gemma4e.py
    "KV sharing across kinds": ({"metadata": {K + "attention.shared_kv_layers": 2}},
                                "would read the KV cache of layer 1"),
    "shared layers > block_count": ({"metadata": {K + "attention.shared_kv_layers": 1 << 31}}, "shared_kv_layers"),
    "expert count 2^31": ({"metadata": {K + "expert_count": 1 << 31}}, "expert_count"),
    "value_length_swa apart": ({"metadata": {K + "attention.value_length_swa": 64}}, "value_length_swa"),
    "no key_length_swa": ({"drop_keys": (K + "attention.key_length_swa",)}, "key_length_swa"),
    "KV heads not dividing": ({"metadata": {K + "attention.head_count_kv": [4, 4, 3, 1]}}, "not a multiple"),
    "3 KV head counts for 4 layers": ({"metadata": {K + "attention.head_count_kv": [4, 4, 4]}},
                                      "3 entries for 4 layers"),
    "KV heads 2^31": ({"metadata": {K + "attention.head_count_kv": [4, 4, 4, 1 << 31]}}, "head_count_kv"),
    "n_rot_swa above key_length_swa": ({"metadata": {K + "rope.dimension_count_swa": 64}}, "dimension_count_swa"),
    "a period, not per-layer flags": ({"drop_keys": (K + "attention.sliding_window_pattern",),
                                       "metadata": {K + "attention.sliding_window_pattern": 5}}, "per-layer array"),
    "no rope_freqs": ({"drop_tensors": ("rope_freqs.weight",)}, "rope_freqs.weight"),
    "rope_freqs of 16": ({"drop_tensors": ("rope_freqs.weight",), "add_tensors": {"rope_freqs.weight": np.ones(16)}},
                         "rope_freqs.weight"),
    "layer_output_scale of 2": ({"drop_tensors": ("blk.1.layer_output_scale.weight",),
                                 "add_tensors": {"blk.1.layer_output_scale.weight": np.ones(2)}}, "layer_output_scale"),
    "layer_output_scale NaN": ({"drop_tensors": ("blk.2.layer_output_scale.weight",),
                                "add_tensors": {"blk.2.layer_output_scale.weight": np.array([np.nan])}},
                               "not a finite number"),
    "a vision tower": ({"add_tensors": {"v.patch_embd.weight": np.ones(8)}}, "vision/audio tensors"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_it_does_not_run_is_refused_by_name(case, tmp_path):
    edits, words = REFUSED[case]
    with pytest.raises(CompileError, match=words):
        _spec(tmp_path, **edits)


@pytest.mark.parametrize("case", ["KV sharing across kinds", "layer_output_scale NaN", "KV heads 2^31"])
def test_refusal_is_one_line_exit_2(case, tmp_path):
    edits, words = REFUSED[case]
    assert_compile_refused(rewrite_gguf(SRC, tmp_path / "bad.gguf", **edits), tmp_path, words)


def test_a_quantized_kv_cache_is_refused_for_mixed_head_sizes():
    """q8_0 / q4_0 rows (and their Hadamard rotations) are sized by one head_dim: a model whose
    layers differ in it is served with an f16 cache only, refused at load naming the option."""
    plan = _spec().plan
    KvCacheTypes().check(plan.kv, plan.kv_geometries())  # f16: fine
    with pytest.raises(CacheTypeError, match=r"--cache-type-k/--cache-type-v q8_0/f16: .* \(1x64, 4x32\)"):
        KvCacheTypes(k=CacheType.Q8_0).check(plan.kv, plan.kv_geometries())


def test_inspect_lists_only_the_cache_types_it_serves(tmp_path):
    """`rfc inspect`'s bytes per token: f16 alone, the one type the loader accepts for this model."""
    from rfc.artifacts.bundle import read_plan
    from rfc.cli.bundle_cmd import _kv_bytes
    from rfc.compiler.pipeline import CompileOptions, compile_model

    compile_model(CompileOptions(model=SRC, out_dir=tmp_path / "b", targets=(), cache_dir=None))
    assert _kv_bytes(read_plan(tmp_path / "b")) == {"f16": 4 * 2 * 128 * 2}  # 4 layers, K and V rows of 128 f16 values
