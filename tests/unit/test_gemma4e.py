"""Gemma 4 E2B/E4B in gemma4's recipe: per-layer embeddings (compiler/arch/ple.py) and KV sharing
(the last attention.shared_kv_layers layers read an earlier layer's cache), as llama.cpp's
src/models/gemma4.cpp and the `reuse` lambda of llama-model.cpp build them; malformed files of
these kinds refused by name before anything is allocated. Plans are inspected directly."""

from dataclasses import replace

import numpy as np
import pytest

from rfc.artifacts.errors import BundleError
from rfc.artifacts.plan import KVSpec, Op, validate_plan
from rfc.compiler.errors import CompileError
from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf, spec_of

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-gemma4e-Q8_0.gguf"
K = "gemma4."


def _spec(tmp_path=None, **edits):
    return spec_of(SRC, tmp_path, **edits)


def test_shared_layers_read_the_cache_llama_cpp_reuses():
    """6 layers, the last 2 shared: layer 4 (sliding) reads layer 2's cache, layer 5 (global)
    layer 3's; only layers 0-3 write KV, and the KV cache has their 4 layers' rows alone."""
    spec = _spec()
    ops = spec.plan.ops
    assert [op.attrs["layer"] for op in ops if op.kind == "kv_write"] == [0, 1, 2, 3]
    attn = [op.attrs for op in ops if op.kind == "attention"]
    assert [a["layer"] for a in attn] == [0, 1, 2, 3, 2, 3]
    assert [a.get("window") for a in attn] == [16, 16, 16, None, 16, None]
    assert spec.plan.kv == KVSpec(4, 2, 64)  # 4 layers store KV; the row the global layers' 2 x 64
    # shared layers project Q alone: no K/V matmul, no K/V norm for layers 4 and 5
    assert not [
        w for op in ops if op.kind == "matmul" for w in op.weights if w.startswith(("blk.4.attn_k", "blk.5.attn_k"))
    ]
    # layer 5's own proportional RoPE
    assert [op.weights for op in ops if op.kind == "rope"][-1] == ("rope_freqs.weight",)
    assert spec.hparams.extra["shared_kv_layers"] == 2 and spec.hparams.extra["kv_layer_per_layer"] == [
        0,
        1,
        2,
        3,
        2,
        3,
    ]


def test_per_layer_embeddings_compose_existing_ops():
    """Each layer's input: the table's columns [256 i, 256 i + 256) times sqrtf(256), plus the
    normed projection rows of the same layer times 1/sqrtf(n_embd), times 1/sqrtf(2)."""
    spec = _spec()
    ops = spec.plan.ops
    embeds = [op for op in ops if op.kind == "embed"]
    assert [op.weights[0] for op in embeds] == ["token_embd.weight"] + ["per_layer_token_embd.weight"] * 6
    assert [op.attrs.get("column", 0) for op in embeds[1:]] == [256 * i for i in range(6)]
    assert {op.attrs["scale"] for op in embeds[1:]} == {16.0}
    proj = [op.weights[0] for op in ops if op.kind == "matmul" and op.outputs[0] == "ple_proj"]
    assert proj == [f"per_layer_model_proj.weight:{i}" for i in range(6)]
    rows = {w.name: w.parts[0] for w in spec.weights if w.name.startswith("per_layer_model_proj")}
    assert [(rows[n].start, rows[n].stop) for n in proj] == [(256 * i, 256 * i + 256) for i in range(6)]
    scales = [op.attrs["factor"] for op in ops if op.kind == "scale"]
    assert scales[0] == 1.0 and np.float32(scales[1]) == np.float32(1) / np.sqrt(np.float32(256))
    assert np.float32(scales[2]) == np.float32(1) / np.sqrt(np.float32(2))
    gated = [op for op in ops if op.kind == "swiglu" and op.inputs == ("ple_gate", "ple_in")]
    assert len(gated) == 6 and {op.attrs["activation"] for op in gated} == {"gelu_tanh"}


def test_a_reader_of_another_window_is_refused_by_the_validator():
    """The plan contract: a layer that reads another layer's cache masks as that layer does."""
    plan = _spec().plan
    i = max(n for n, op in enumerate(plan.ops) if op.kind == "attention")  # layer 5 reads layer 3's (global) cache
    bad = Op("attention", plan.ops[i].inputs, plan.ops[i].outputs, (), {**plan.ops[i].attrs, "window": 16})
    with pytest.raises(BundleError, match="another window or head geometry"):
        validate_plan(replace(plan, ops=plan.ops[:i] + (bad,) + plan.ops[i + 1 :]))


PATTERN = K + "attention.sliding_window_pattern"
REFUSED = {
    "1 layer left storing KV": ({"metadata": {K + "attention.shared_kv_layers": 5}}, "leaves 1 of 6 layers storing KV"),
    "every layer shared": ({"metadata": {K + "attention.shared_kv_layers": 6}}, "leaves 0 of 6 layers storing KV"),
    "shared layers 2^31": ({"metadata": {K + "attention.shared_kv_layers": 1 << 31}}, "shared_kv_layers"),
    "a source of another kind": ({"metadata": {PATTERN: [True, True, False, True, True, False]}},
                                 "layer 4 .sliding, 2 x 32. would read the KV cache of layer 2 .global"),
    "per-layer width 2^31": ({"metadata": {K + "embedding_length_per_layer_input": 1 << 31}},
                             "embedding_length_per_layer_input"),
    "per-layer width apart from the table": ({"metadata": {K + "embedding_length_per_layer_input": 128}},
                                             "shape mismatch for per_layer_token_embd.weight"),
    "per_layer_token_embd of the wrong shape": ({"drop_tensors": ("per_layer_token_embd.weight",),
                                                 "add_tensors": {"per_layer_token_embd.weight": np.ones((512, 1024))}},
                                                "shape mismatch for per_layer_token_embd.weight"),
    "no per_layer_model_proj": ({"drop_tensors": ("per_layer_model_proj.weight",)},
                                "missing tensor per_layer_model_proj"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_files_are_refused_by_name(case, tmp_path):
    edits, words = REFUSED[case]
    with pytest.raises(CompileError, match=words):
        _spec(tmp_path, **edits)


@pytest.mark.parametrize("case", ["every layer shared", "per_layer_token_embd of the wrong shape"])
def test_refusal_is_one_line_exit_2(case, tmp_path):
    edits, words = REFUSED[case]
    assert_compile_refused(rewrite_gguf(SRC, tmp_path / "bad.gguf", **edits), tmp_path, words)


def test_inspect_counts_only_the_layers_that_store_kv(tmp_path):
    """`rfc inspect`'s bytes per token (and the KV budget, from the same KVSpec): 4 layers of 6."""
    from rfc.artifacts.bundle import read_plan
    from rfc.cli.bundle_cmd import _kv_bytes
    from rfc.compiler.pipeline import CompileOptions, compile_model

    compile_model(CompileOptions(model=SRC, out_dir=tmp_path / "b", targets=(), cache_dir=None))
    # 4 layers, K and V rows of 2 x 64 f16 values
    assert _kv_bytes(read_plan(tmp_path / "b")) == {"f16": 4 * 2 * 128 * 2}
