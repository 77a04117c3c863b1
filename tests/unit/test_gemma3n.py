"""gemma3n's recipe (compiler/arch/gemma3n.py) over tiny-gemma3n: the plan llama.cpp's
src/models/gemma3n.cpp describes (4 AltUp streams side by side, Laurel, the first 10 layers'
sparse FFN gates, KV shared from layer 20, Gemma 4's per-layer embeddings), and malformed files
of its kinds refused by name, one line, before anything is allocated. Plans are inspected
directly; the numbers are tests/e2e's (bounds against llama.cpp and the float64 oracle)."""

import re

import numpy as np
import pytest

from rfc.artifacts.plan import KVSpec
from rfc.compiler.errors import CompileError
from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf, spec_of

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-gemma3n-Q8_0.gguf"
K = "gemma3n."


def _spec(tmp_path=None, **edits):
    return spec_of(SRC, tmp_path, **edits)


def test_the_plan_follows_llama_cpp():
    spec = _spec()
    ops = spec.plan.ops
    kinds = [op.kind for op in ops]
    assert [kinds.count(k) for k in ("altup_stack", "altup_predict", "altup_correct", "altup_add", "altup_merge")] == [
        1,
        22,
        22,
        22,
        1,
    ]
    assert kinds.count("gaussian_topk") == 10  # n_layer_sparsity
    attn = [op.attrs for op in ops if op.kind == "attention"]
    assert [a["layer"] for a in attn] == [*range(20), 18, 19]  # layer 20 (sliding) reads 18, 21 (global) 19
    assert [op.attrs["layer"] for op in ops if op.kind == "kv_write"] == list(range(20))
    assert [a.get("window") for a in attn] == [None if i % 5 == 4 or i == 21 else 16 for i in range(22)]
    assert spec.plan.kv == KVSpec(20, 2, 64) and {a["scale"] for a in attn} == {1.0}
    # the router: rmsnorm, x 1/n_embd, a matmul to 4 modalities, tanh (a softcap of 1)
    i = kinds.index("altup_predict")
    assert kinds[i - 5 : i] == ["rmsnorm", "scale", "matmul", "softcap", "matmul"] and ops[i - 2].attrs["cap"] == 1.0
    assert np.float32(ops[i - 4].attrs["factor"]) == np.float32(1) / np.float32(256)
    # the streams' ends: altup_proj over 3 copies of the embedding, altup_unembd_proj over streams 1..3
    heads = [op for op in ops if op.kind == "head_matmul"]
    assert [(op.weights[0], op.inputs[0]) for op in heads] == [
        ("altup_proj.weight", "rep3"),
        ("altup_unembd_proj.weight", "tail"),
    ]
    adds = [op for op in ops if op.kind == "altup_add"]
    assert [op.attrs["first"] for op in adds] == [0] * 21 + [1] and adds[-1].outputs[1] == "tail"
    assert ops[-1].kind == "softcap" and ops[-1].attrs["cap"] == 30.0  # llama.cpp's default, never read for gemma3n
    assert spec.hparams.extra["laurel_rank"] == 64 and spec.hparams.extra["altup_num_inputs"] == 4


REFUSED = {
    "n_altup 1": ({"metadata": {K + "altup.num_inputs": 1}}, "altup.num_inputs"),
    "n_altup 2^31": ({"metadata": {K + "altup.num_inputs": 1 << 31}}, "altup.num_inputs"),
    "active stream past the last": ({"metadata": {K + "altup.active_idx": 4}}, "altup.active_idx"),
    "active stream not 0": ({"metadata": {K + "altup.active_idx": 2}}, "runs stream 0 as the active one"),
    "laurel_rank 0": ({"metadata": {K + "laurel_rank": 0}}, "laurel_rank"),
    "laurel_rank past n_embd": ({"metadata": {K + "laurel_rank": 257}}, "laurel_rank"),
    "laurel_rank apart from its tensors": ({"metadata": {K + "laurel_rank": 32}},
                                           "shape mismatch for blk.0.laurel_l.weight"),
    "n_altup apart from its tensors": ({"metadata": {K + "altup.num_inputs": 3}},
                                       "shape mismatch for altup_proj.weight"),
    "predict coefficients of the wrong shape": ({"drop_tensors": ("blk.3.altup_predict_coef.weight",),
                                                 "add_tensors": {"blk.3.altup_predict_coef.weight": np.ones((4, 16))}},
                                                "shape mismatch for blk.3.altup_predict_coef.weight"),
    "correct coefficients of the wrong shape": ({"drop_tensors": ("blk.0.altup_correct_coef.weight",),
                                                 "add_tensors": {"blk.0.altup_correct_coef.weight": np.ones((4, 5))}},
                                                "shape mismatch for blk.0.altup_correct_coef.weight"),
    "a vision tower": ({"add_tensors": {"v.patch_embd.weight": np.ones((8, 8))}},
                       "holds vision/audio tensors (v.patch_embd.weight"),
    "an audio tower": ({"add_tensors": {"a.conv1d.0.weight": np.ones((8, 8))}},
                       "holds vision/audio tensors (a.conv1d.0.weight"),
    "no per-layer embeddings": ({"metadata": {K + "embedding_length_per_layer_input": 0}},
                                "needs per-layer embeddings"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_files_are_refused_by_name(case, tmp_path):
    edits, words = REFUSED[case]
    with pytest.raises(CompileError, match=re.escape(words) if "(" in words else words) as e:
        _spec(tmp_path, **edits)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "case", ["active stream past the last", "predict coefficients of the wrong shape", "a vision tower"]
)
def test_refusal_is_one_line_exit_2(case, tmp_path):
    edits, words = REFUSED[case]
    assert_compile_refused(rewrite_gguf(SRC, tmp_path / "bad.gguf", **edits), tmp_path, words)
