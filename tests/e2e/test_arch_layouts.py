"""Tensor layouts llama.cpp's loaders accept besides the ones the fixtures have, on the reference
device: each file holds the same weights as a fixture (its bytes moved, never re-quantized),
so its logits are the fixture's, which match llama.cpp's goldens.

- fused experts: `ffn_gate_up_exps` [E, 2 n_ff, n_embd] (each expert's gate rows, then its up
  rows) instead of `ffn_gate_exps` and `ffn_up_exps`, in the families whose loader calls
  create_tensor_gate_up_exps (deepseek2, qwen35moe, qwen3next); refused with both at once;
- deepseek2 with one head: ggml writes its [1, kv_lora, nope] `attn_k_b` and [1, v, kv_lora]
  `attn_v_b` as 2-D tensors (llama.cpp's saver does).
"""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from tests.conftest import FIXTURES
from tests.e2e.test_reference_oracle import REFERENCE_ONLY, teacher_forced_logits
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared

TOKENS = list(range(1, 25))


def _retensor(src: Path, dst: Path, fn) -> Path:
    """src copied to dst with its tensors [(name, data, qtype)] replaced by fn(tensors)."""
    reader = GGUFReader(src)
    writer = GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        writer.add_key_value(
            key, field.contents(), vtype, sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None
        )
    for name, data, qtype in fn([(t.name, np.array(t.data), t.tensor_type) for t in reader.tensors]):
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _fuse_gate_up(tensors, *, keep_split: bool = False):
    """Every layer's ffn_gate_exps and ffn_up_exps as one ffn_gate_up_exps, per expert gate rows first."""
    by_name = {n: (d, q) for n, d, q in tensors}
    out = []
    for name, data, qtype in tensors:
        if name.endswith("ffn_up_exps.weight") and not keep_split:
            continue
        if name.endswith("ffn_gate_exps.weight"):
            up, _ = by_name[name.replace("ffn_gate_exps", "ffn_up_exps")]
            out.append((name.replace("ffn_gate_exps", "ffn_gate_up_exps"), np.concatenate([data, up], axis=1), qtype))
            if not keep_split:
                continue
        out.append((name, data, qtype))
    return out


@pytest.mark.parametrize("name", ["tiny-qwen3next-Q8_0", "tiny-qwen35moe-Q8_0", "tiny-deepseek2-Q8_0"])
def test_fused_gate_up_experts_give_the_same_logits(name, bundle_cache, tmp_path):
    fused = _retensor(FIXTURES / f"{name}.gguf", tmp_path / f"{name}-fused.gguf", _fuse_gate_up)
    spec = build_spec(read_gguf(fused))
    assert any(w.name.endswith("ffn_gate_up_exps.weight:up") for w in spec.weights)
    want = teacher_forced_logits(bundle_cache(FIXTURES / f"{name}.gguf", REFERENCE_ONLY), "ref", TOKENS)
    got = teacher_forced_logits(bundle_cache(fused, REFERENCE_ONLY), "ref", TOKENS)
    np.testing.assert_array_equal(got, want)


def test_fused_and_split_experts_at_once_are_refused(tmp_path):
    both = _retensor(FIXTURES / "tiny-qwen3next-Q8_0.gguf", tmp_path / "both.gguf",
                     lambda ts: _fuse_gate_up(ts, keep_split=True))  # fmt: skip
    with pytest.raises(CompileError, match=r"layer 0 has both blk.0.ffn_gate_up_exps.weight and ffn_gate_exps"):
        build_spec(read_gguf(both))


def test_fused_experts_only_where_llama_cpp_takes_them(tmp_path):
    """qwen3moe's loader reads no ffn_gate_up_exps: such a file is missing its experts."""
    fused = _retensor(FIXTURES / "tiny-qwen3moe-Q8_0.gguf", tmp_path / "fused.gguf", _fuse_gate_up)
    with pytest.raises(CompileError, match=r"missing tensor blk.0.ffn_gate_exps.weight"):
        build_spec(read_gguf(fused))


def _one_head(squeeze: bool):
    """tiny-deepseek2-F16 cut down to its first head (q_b's first head rows, attn_output's first
    head columns), attn_k_b / attn_v_b stored [1, N, K] or, as ggml writes them, [N, K]."""

    def fn(name, data, qtype):
        if name.endswith("attn_q_b.weight"):
            return data[: data.shape[0] // 4].copy(), qtype
        if name.endswith(("attn_k_b.weight", "attn_v_b.weight")):
            return (data[0].copy() if squeeze else data[:1].copy()), qtype
        if name.endswith("attn_output.weight"):
            return data[:, : data.shape[1] // 4].copy(), qtype
        return data, qtype

    return fn


def test_deepseek2_one_head_reads_2d_attn_k_b_and_attn_v_b(bundle_cache, tmp_path):
    src = FIXTURES / "tiny-deepseek2-F16.gguf"
    md = {"deepseek2.attention.head_count": 1}
    three = rewrite_gguf(src, tmp_path / "three.gguf", metadata=md, tensor_fn=_one_head(False))
    two = rewrite_gguf(src, tmp_path / "two.gguf", metadata=md, tensor_fn=_one_head(True))
    assert read_gguf(two).tensors["blk.0.attn_k_b.weight"].shape == (64, 32)
    spec2, spec3 = build_spec(read_gguf(two)), build_spec(read_gguf(three))
    assert [(w.name, w.shape) for w in spec2.weights] == [(w.name, w.shape) for w in spec3.weights]
    want = teacher_forced_logits(bundle_cache(three, REFERENCE_ONLY), "ref", TOKENS)
    got = teacher_forced_logits(bundle_cache(two, REFERENCE_ONLY), "ref", TOKENS)
    np.testing.assert_array_equal(got, want)
