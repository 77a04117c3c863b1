"""Command R+ (command-r with 64 layers or more): llama.cpp loads per-head Q/K LayerNorms there,
which rfc composes from block-diagonal float32 matmuls and a per-head RMS norm
(compiler/arch/layernorm.py). No 64-layer fixture is committed (its golden would cost a tiny
fixture's budget four times over): a small-dimension one made here is checked against the float64
oracle, and its plan against llama.cpp's structure. The same file, made this way at F32, matches
llama.cpp 0.3.36's logits to 0.015 max / 0.0016 mean (std 6); with an RMS norm in place of the
per-head LayerNorm the logits move by 1.0 on average (measured when this was written).
"""

from pathlib import Path

import pytest

from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from tests import testdata
from tests.bounds import oracle_bounds
from tests.e2e.test_reference_oracle import REFERENCE_ONLY, teacher_forced_logits
from tests.gguf_edit import rewrite_gguf
from tests.oracle import Oracle

pytestmark = pytest.mark.shared


def _command_r_plus(path: Path, layers: int = 64) -> Path:
    """command-r of `layers` layers of width 64: 4 heads x 2 KV heads of 16, Q/K norms [heads, 16]."""
    g = testdata._generator()

    def layer(i: int) -> list:
        p = f"blk.{i}."
        t = [x for x in g._layer(i, 64, 128, 64, 32, qk_gain=1.5) if "ffn_norm" not in x.name]
        return t + [g.Tensor(p + "attn_q_norm.weight", (4, 16), mean=1.0, std=0.3),
                    g.Tensor(p + "attn_k_norm.weight", (2, 16), mean=1.0, std=0.3)]  # fmt: skip

    family = g.Family("command-r-plus", "command-r", "tiny-command-r-plus",
                      (("context_length", g.U32, 512), ("embedding_length", g.U32, 64), ("block_count", g.U32, layers),
                       ("feed_forward_length", g.U32, 128), ("attention.head_count", g.U32, 4),
                       ("attention.head_count_kv", g.U32, 2), ("attention.layer_norm_epsilon", g.F32V, 1e-5),
                       ("rope.freq_base", g.F32V, 75000.0), ("logit_scale", g.F32V, 0.25)),
                      g._embd_mean(g._model(64, [layer(i) for i in range(layers)], tied=True, out_norm=3.0), 0.5),
                      ("F32",))  # fmt: skip
    g.FIXTURES["tiny-command-r-plus-F32"] = (family, "F32")
    g.write_fixture("tiny-command-r-plus-F32", path)
    return path


def test_command_r_plus_layernorms_q_and_k_per_head(tmp_path, bundle_cache):
    path = _command_r_plus(tmp_path / "command-r-plus.gguf")
    spec = build_spec(read_gguf(path))
    ops = spec.plan.ops
    first_rope = next(i for i, op in enumerate(ops) if op.kind == "rope")
    norms = [op for op in ops[:first_rope] if op.kind == "rmsnorm" and op.inputs in (("q",), ("k",))]
    assert [(op.inputs, op.attrs["heads"]) for op in norms] == [(("q",), 4), (("k",), 2)]
    shapes = {w.name: w.shape for w in spec.weights if w.name.startswith("rfc.layernorm.heads.")}
    assert shapes == {"rfc.layernorm.heads.mean.4x16": (8, 64), "rfc.layernorm.heads.spread.4x16": (64, 8),
                      "rfc.layernorm.heads.mean.2x16": (8, 32), "rfc.layernorm.heads.spread.2x16": (32, 8)}  # fmt: skip
    tokens = list(testdata._generator().TOKENS)
    ref = teacher_forced_logits(bundle_cache(path, REFERENCE_ONLY), "ref", tokens)
    ok, summary = oracle_bounds("tiny-command-r-plus-F32", ref, Oracle(path).logits(tokens))
    assert ok, summary


def test_command_r_below_64_layers_refuses_q_k_norms(tmp_path):
    """llama.cpp loads no Q/K norms below 64 layers, and refuses a file that has them."""
    path = _command_r_plus(tmp_path / "plus.gguf", layers=2)
    with pytest.raises(CompileError, match=r"blk.0.attn_q_norm.weight in a command-r of 2 layers"):
        build_spec(read_gguf(path))


def test_command_r_plus_needs_its_norms(tmp_path):
    path = _command_r_plus(tmp_path / "plus.gguf")
    without = rewrite_gguf(path, tmp_path / "without.gguf", drop_tensors=("blk.5.attn_k_norm.weight",))
    with pytest.raises(CompileError, match=r"missing tensor blk.5.attn_k_norm.weight"):
        build_spec(read_gguf(without))


def test_command_r_plus_projections_take_their_scale_and_bias(tmp_path):
    """Its attention is its own (LayerNorms per head before RoPE): Q, K and V still take the
    weight scale and bias the file has, before the norms, as llama.cpp's build_lora_mm and bias do."""
    import numpy as np

    path = _command_r_plus(tmp_path / "plus.gguf")
    extra = {"blk.0.attn_q.scale": np.array([-0.5], np.float32), "blk.0.attn_k.bias": np.ones(32, np.float32)}
    ops = build_spec(read_gguf(rewrite_gguf(path, tmp_path / "extra.gguf", add_tensors=extra))).plan.ops
    q = next(i for i, op in enumerate(ops) if op.weights == ("blk.0.attn_q.weight",))
    assert (ops[q + 1].kind, ops[q + 1].attrs.get("factor")) == ("scale", -0.5)
    k = next(i for i, op in enumerate(ops) if op.weights == ("blk.0.attn_k.weight",))
    assert (ops[k + 1].kind, ops[k + 1].weights) == ("add_bias", ("blk.0.attn_k.bias",))
    assert k + 1 < next(i for i, op in enumerate(ops) if op.kind == "rmsnorm" and op.inputs == ("q",))
