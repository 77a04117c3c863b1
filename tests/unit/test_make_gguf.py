"""tools/make_gguf.py: the random-weight GGUF generator used by benchmarks and memory tests."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from rfc.runtime.model.quants import dequantize

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_gguf.py"
_spec = importlib.util.spec_from_file_location("make_gguf", TOOL)
make_gguf = importlib.util.module_from_spec(_spec)
sys.modules["make_gguf"] = make_gguf  # dataclasses look their module up here
_spec.loader.exec_module(make_gguf)

TINY = ["--dim", "256", "--layers", "2", "--ffn", "512", "--heads", "4", "--kv-heads", "2"]


def generate(tmp_path: Path, *args: str, name: str = "m.gguf") -> Path:
    out = tmp_path / name
    assert make_gguf.main([str(out), *TINY, *args]) == 0
    return out


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def test_metadata_and_tensors(tmp_path: Path) -> None:
    r = GGUFReader(generate(tmp_path, "--format", "Q4_K_M", "--vocab", "300"))
    assert field(r, "general.architecture") == "llama"
    assert field(r, "general.file_type") == 15  # MOSTLY_Q4_K_M
    expected = {
        "llama.context_length": 2048,
        "llama.embedding_length": 256,
        "llama.block_count": 2,
        "llama.feed_forward_length": 512,
        "llama.rope.dimension_count": 64,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
    }
    for key, value in expected.items():
        assert field(r, key) == value, key
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(r, "llama.rope.freq_base") == 10000.0

    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 300 and len(set(tokens)) == 300
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and tokens[258] == "<0xFF>"
    assert field(r, "tokenizer.ggml.model") == "llama"
    assert field(r, "tokenizer.ggml.bos_token_id") == 1
    assert field(r, "tokenizer.ggml.eos_token_id") == 2

    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 2 + 9 * 2 + 1
    shapes = {  # logical (rows, row length)
        "token_embd.weight": (300, 256),
        "blk.0.attn_q.weight": (256, 256),
        "blk.0.attn_k.weight": (128, 256),
        "blk.1.attn_v.weight": (128, 256),
        "blk.0.ffn_gate.weight": (512, 256),
        "blk.0.ffn_down.weight": (256, 512),
        "blk.0.attn_norm.weight": (256,),
        "output.weight": (300, 256),
    }
    for name, shape in shapes.items():
        assert tuple(int(n) for n in reversed(tensors[name].shape)) == shape, name
    # Q4_K_M's mixture: Q6_K for the output and for attn_v/ffn_down in "more bits" layers.
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "Q4_K"
    assert tensors["blk.1.attn_v.weight"].tensor_type.name == "Q6_K"
    assert tensors["blk.0.attn_v.weight"].tensor_type.name == "Q4_K"
    assert tensors["output.weight"].tensor_type.name == "Q6_K"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"


FORMATS = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ3_S",
           "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_S"]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_weights_are_finite_with_llama_scale(tmp_path: Path, fmt: str) -> None:
    for t in GGUFReader(generate(tmp_path, "--format", fmt, "--vocab", "512")).tensors:
        shape = tuple(int(n) for n in reversed(t.shape))
        w = dequantize(t.data, t.tensor_type.name, shape)
        assert np.isfinite(w).all(), t.name
        rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
        # Norms near 1; matrices near 1/sqrt(row length), so activations keep their scale.
        target = 1.0 if len(shape) == 1 else 1 / math.sqrt(shape[-1])
        assert rms == pytest.approx(target, rel=0.15), t.name


def test_vocab_512_reuses_stories_tokenizer(tmp_path: Path) -> None:
    r = GGUFReader(generate(tmp_path, "--vocab", "512"))
    stories = GGUFReader(make_gguf.STORIES_VOCAB)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert field(r, key) == field(stories, key)


def test_deterministic_given_seed(tmp_path: Path) -> None:
    a = generate(tmp_path, "--vocab", "300", "--seed", "7", name="a.gguf").read_bytes()
    b = generate(tmp_path, "--vocab", "300", "--seed", "7", name="b.gguf").read_bytes()
    c = generate(tmp_path, "--vocab", "300", "--seed", "8", name="c.gguf").read_bytes()
    assert a == b and a != c


def test_size_picks_shape_near_target() -> None:
    q8 = make_gguf.FILE_TYPES["Q8_0"]
    shape = make_gguf.shape_for_size(int(2e9), q8, list(make_gguf.PRESETS.values()))
    assert make_gguf.model_nbytes(shape, q8) == pytest.approx(2e9, rel=0.05)
    tiny = make_gguf.shape_for_size(int(1.17e9), q8, [make_gguf.PRESETS["tinyllama-1.1b"]])
    assert tiny == make_gguf.PRESETS["tinyllama-1.1b"]


@pytest.mark.parametrize("text,value", [("2GB", 2e9), ("1.5GiB", 1.5 * 2**30), ("500M", 5e8), ("123", 123)])
def test_parse_size(text: str, value: float) -> None:
    assert make_gguf.parse_size(text) == int(value)


def test_rejects_rows_that_are_not_whole_blocks(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # argparse's error exit, with the reason on stderr
        make_gguf.main([str(tmp_path / "x.gguf"), *TINY, "--ffn", "320", "--format", "Q4_K"])
