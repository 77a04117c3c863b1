"""`rfc compile` never prints a traceback for a GGUF that is well-formed but wrong: 200 mutated
fixture GGUFs of several architectures (keys dropped or given hostile values of any type,
tensors dropped, added, reshaped or retyped, huge arrays) each compile or are refused with a
CompileError, the one line exit 2 of the command line; a few of them go through the command
line itself. test_gguf_fuzz.py mutates the file's structure instead. Run longer by hand:

    pytest tests/fuzz/test_gguf_semantic_fuzz.py --fuzz-cases 2000
"""

import functools
import struct
import traceback
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from rfc.compiler.errors import CompileError
from rfc.compiler.pipeline import CompileOptions, compile_model
from tests.conftest import DEMO_MODEL, FIXTURES, rfc
from tests.gguf_edit import put_raw_array, rewrite_gguf

pytestmark = pytest.mark.shared

CASES = 200
SOURCES = [DEMO_MODEL] * 2 + [
    FIXTURES / f"tiny-{n}.gguf"
    for n in (
        "gemma2-F16",
        "qwen35-Q8_0",
        "deepseek2-Q8_0",
        "gemma4-Q8_0",
        "command-r-Q8_0",
        "falcon-h1-Q8_0",
        "exaone4-Q8_0",
    )
]
KEYS = (
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "attention.layer_norm_rms_epsilon",
    "attention.layer_norm_epsilon",
    "ssm.inner_size",
    "ssm.group_count",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "expert_count",
    "expert_used_count",
    "final_logit_softcapping",
    "attention.clamp_kqv",
    "logit_scale",
    "rope.dimension_sections",
    "vocab_size",
)
VALUES = (
    0,
    1,
    3,
    2**31,
    2**32 - 1,
    float("nan"),
    float("inf"),
    -1e30,
    1e-30,
    -0.5,
    0.0,
    "yarn",
    "x" * 300,
    [True, False],
    [True] * 600,
)
EXTRA_TENSORS = (
    "blk.0.attn_q.bias",
    "blk.0.ffn_up.scale",
    "blk.0.attn_q.scale",
    "blk.0.attn_output.bias",
    "blk.0.attn_k.input_scale",
    "output.weight",
    "rope_freqs.weight",
    "blk.99.attn_q.weight",
    "blk.0.attn_qkv.weight",
    "blk.0.ffn_gate_exps.weight",
    "blk.0.layer_output_scale.weight",
    "token_embd.weight",
)


@functools.cache
def _layout(src: Path) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(architecture, tensor names, metadata keys, one-value F32 tensors: learned scalars) of a source."""
    reader = GGUFReader(src)
    keys = tuple(k for k in reader.fields if not k.startswith("GGUF.") and k != "general.architecture")
    scalars = tuple(t.name for t in reader.tensors if t.n_elements == 1 and t.tensor_type == GGMLQuantizationType.F32)
    return str(reader.fields["general.architecture"].contents()), tuple(t.name for t in reader.tensors), keys, scalars


def _mutate(rng: np.random.Generator, src: Path, dst: Path) -> str:
    """Writes one mutation of src to dst; returns what it did."""
    arch, names, keys, scalars = _layout(src)
    kinds = ["value", "retype key", "drop key", "drop tensor", "extra tensor", "reshape", "retype", "huge array"]
    kind = rng.choice(kinds + ["scalar"] * 4 if scalars else kinds)
    if kind == "scalar":  # a learned scalar (gemma4's layer_output_scale) of any value
        target, value = str(rng.choice(scalars)), float(rng.choice([-0.07, -3.0, 0.0, np.nan, 1e30, 2.0]))
        rewrite_gguf(src, dst, tensor_fn=lambda n, d, q: (np.array([value], np.float32), q) if n == target else (d, q))
        return f"scalar {target} = {value}"
    if kind in ("value", "retype key"):
        key = f"{arch}.{rng.choice(KEYS)}" if rng.random() < 0.7 else str(rng.choice(keys))
        value = VALUES[int(rng.integers(0, len(VALUES)))]
        rewrite_gguf(src, dst, metadata={key: value}, drop_keys=(key,) if kind == "retype key" else ())
        return f"{kind} {key} = {str(value)[:20]}"
    if kind == "drop key":
        key = str(rng.choice(keys))
        rewrite_gguf(src, dst, drop_keys=(key,))
        return f"drop key {key}"
    if kind == "drop tensor":
        name = str(rng.choice(names))
        rewrite_gguf(src, dst, drop_tensors=(name,))
        return f"drop tensor {name}"
    if kind == "extra tensor":
        name = str(rng.choice(EXTRA_TENSORS))
        shape = tuple(int(d) for d in rng.choice([(1,), (2,), (64,), (8, 64)]))
        value = np.full(shape, rng.choice([1.0, -3.0, np.nan, 1e30]), np.float32)
        keep = tuple(n for n in names if n == name)  # replaced by the extra one
        rewrite_gguf(src, dst, drop_tensors=keep, add_tensors={name: value})
        return f"extra tensor {name} {shape}"
    if kind == "huge array":
        key = str(
            rng.choice(
                [
                    f"{arch}.attention.head_count",
                    f"{arch}.notes",
                    f"{arch}.rope.dimension_sections",
                    "general.tags",
                    "tokenizer.ggml.token_type",
                ]
            )
        )
        count = int(rng.choice([5, 513, 1_000_000]))
        put_raw_array(src, dst, key, GGUFValueType.UINT32, count, np.ones(count, "<u4").tobytes())
        return f"huge array {key} x{count}"
    target = str(rng.choice(names))

    def change(name, data, qtype):
        if name != target:
            return data, qtype
        if kind == "reshape":
            return (data.reshape(-1) if data.ndim > 1 else data.reshape(1, -1)), qtype
        if qtype == GGMLQuantizationType.F32:
            return data.astype(np.float16), GGMLQuantizationType.F16
        return data.view(np.uint8).astype(np.int8), GGMLQuantizationType.I8

    rewrite_gguf(src, dst, tensor_fn=change)
    return f"{kind} {target}"


def _compile(model: Path, out: Path) -> str | None:
    """None when the model compiled or was refused as the command line refuses it; else the traceback."""
    try:
        compile_model(CompileOptions(model=model, out_dir=out, targets=()))
    except (CompileError, OSError):  # rfc compile: one line, exit 2
        pass
    except Exception:  # noqa: BLE001 - what the command line would print as a traceback
        return traceback.format_exc(limit=-3)
    return None


def _cases(tmp_path: Path, n: int, seed: int):
    rng = np.random.default_rng(seed)
    made = 0
    while made < n:
        src = SOURCES[int(rng.integers(0, len(SOURCES)))]
        dst = tmp_path / f"m{made}.gguf"
        try:
            what = _mutate(rng, src, dst)
        except (ValueError, OverflowError, TypeError, KeyError, struct.error):
            continue  # a mutation the gguf writer cannot write (a value out of its type's range)
        made += 1
        yield src, dst, what


def test_mutated_models_compile_or_are_refused_in_one_line(tmp_path, fuzz_cases):
    failures, n = [], fuzz_cases(CASES)
    for src, model, what in _cases(tmp_path, n, seed=43):
        problem = _compile(model, tmp_path / "out" / model.stem)
        if problem:
            failures.append(f"{src.name}: {what}:\n{problem}")
        model.unlink()
    assert not failures, f"{len(failures)} of {n}:\n" + "\n".join(failures[:5])


def test_the_command_line_prints_no_traceback(tmp_path):
    for _, model, what in _cases(tmp_path, 4, seed=7):
        proc = rfc("compile", model, "--reference-only", "-q", "-o", tmp_path / model.stem)
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, (what, proc.stderr)
        assert proc.returncode == 0 or len(proc.stderr.strip().splitlines()) == 1, (what, proc.stderr)
