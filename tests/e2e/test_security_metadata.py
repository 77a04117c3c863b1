"""Compile-time memory from GGUF metadata.

A GGUF of a few tens of MB can hold an array of millions of entries; read through the `gguf`
package, each became a numpy object (one 4,000,000-entry string array under a key rfc never
reads: 79 s and 5.3 GB). Keys rfc does not read are now stepped over unread, and each array it
reads is bounded by what its key can hold before it is decoded. Time and peak memory are
measured for the `rfc` process alone, in a fresh subprocess.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from tests.conftest import DEMO_MODEL, rfc
from tests.gguf_edit import put_raw_array, rewrite_gguf, string_array_payload

MILLIONS = 4_000_000
SECONDS = 10
PEAK_BYTES = 1 << 30
KILL_AFTER = 60  # seconds: the code before the fix needs minutes; a failing run ends sooner

# Runs its arguments as a child and reports the child's wall time and peak RSS: a process of
# its own, so no other test's children are counted.
_MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
try:
    proc = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))
    rc, stderr = proc.returncode, proc.stderr
except subprocess.TimeoutExpired:
    rc, stderr = None, "killed: timed out"
print(json.dumps({"rc": rc, "stderr": stderr, "seconds": time.monotonic() - started,
                  "peak_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def _measured_rfc(*args) -> dict:
    command = [sys.executable, "-c", "from rfc.cli.main import main; main()", *map(str, args)]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(KILL_AFTER), *command], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def _assert_fast_and_small(run: dict) -> None:
    assert run["seconds"] < SECONDS, run
    assert run["peak_bytes"] < PEAK_BYTES, f"peak RSS {run['peak_bytes'] >> 20} MiB: {run}"


def _assert_refused(run: dict, out: Path, *words: str) -> None:
    assert run["rc"] == 2, run
    lines = run["stderr"].strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run["stderr"] and all(w in lines[0] for w in words), run["stderr"]
    assert not out.exists() or list(out.iterdir()) == []


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A build cache holding the demo's kernels, so the measured compiles time the reading of
    the file and not the C compiler (metadata rfc does not read cannot change the kernels)."""
    cache = tmp_path_factory.mktemp("cache")
    rfc("compile", DEMO_MODEL, "-o", tmp_path_factory.mktemp("warm") / "bundle", "-q", "--cache-dir", cache, check=True)
    return cache


def test_a_string_array_of_millions_under_an_unknown_key_is_skipped(cache, tmp_path):
    payload = string_array_payload(MILLIONS, b"x")
    model = put_raw_array(DEMO_MODEL, tmp_path / "big.gguf", "vendor.notes", GGUFValueType.STRING, MILLIONS, payload)
    out = tmp_path / "bundle"
    run = _measured_rfc("compile", model, "-o", out, "-q", "--cache-dir", cache)
    assert run["rc"] == 0, run
    _assert_fast_and_small(run)
    assert "vendor.notes" not in json.loads((out / "manifest.json").read_text())["model"]["gguf_metadata"]


def test_an_int_array_of_millions_under_an_unknown_key_is_skipped(cache, tmp_path):
    payload = np.arange(MILLIONS, dtype="<i4").tobytes()
    model = put_raw_array(DEMO_MODEL, tmp_path / "big.gguf", "vendor.table", GGUFValueType.INT32, MILLIONS, payload)
    run = _measured_rfc("compile", model, "-o", tmp_path / "bundle", "-q", "--cache-dir", cache)
    assert run["rc"] == 0, run
    _assert_fast_and_small(run)


def test_a_vocabulary_larger_than_the_embedding_is_refused_unread(cache, tmp_path):
    payload = string_array_payload(MILLIONS, b"x")
    model = put_raw_array(
        DEMO_MODEL, tmp_path / "big.gguf", "tokenizer.ggml.tokens", GGUFValueType.STRING, MILLIONS, payload
    )
    out = tmp_path / "out"
    run = _measured_rfc("compile", model, "-o", out / "bundle", "--cache-dir", cache)
    _assert_refused(run, out, "tokenizer.ggml.tokens", str(MILLIONS), "512", "token_embd.weight")
    _assert_fast_and_small(run)


def test_a_per_layer_array_longer_than_llama_cpp_reads_is_refused(tmp_path):
    """A per-layer array holds at most 512 entries (llama.cpp's LLAMA_MAX_LAYERS, whatever the
    layer count: its saver writes them so); a longer one under a key the recipe reads is refused
    without being decoded."""
    payload = np.ones(MILLIONS, dtype="<u4").tobytes()
    model = put_raw_array(
        DEMO_MODEL, tmp_path / "big.gguf", "llama.attention.head_count_kv", GGUFValueType.UINT32, MILLIONS, payload
    )
    out = tmp_path / "out"
    run = _measured_rfc("compile", model, "-o", out / "bundle", "--no-cache")
    _assert_refused(run, out, "llama.attention.head_count_kv", str(MILLIONS), "512", "LLAMA_MAX_LAYERS")
    _assert_fast_and_small(run)


def test_a_per_layer_array_of_millions_under_an_arch_key_no_recipe_reads_is_skipped(cache, tmp_path):
    payload = np.ones(MILLIONS, dtype="<u4").tobytes()
    model = put_raw_array(
        DEMO_MODEL, tmp_path / "big.gguf", "llama.deepstack_mapping", GGUFValueType.UINT32, MILLIONS, payload
    )
    run = _measured_rfc("compile", model, "-o", tmp_path / "bundle", "-q", "--cache-dir", cache)
    assert run["rc"] == 0, run
    _assert_fast_and_small(run)


def test_merges_beyond_their_bound_are_refused(tmp_path):
    merges = 8 * 512 + 1  # MERGES_PER_TOKEN per token of the demo's 512
    payload = string_array_payload(merges, b"a b")
    model = put_raw_array(
        DEMO_MODEL, tmp_path / "merges.gguf", "tokenizer.ggml.merges", GGUFValueType.STRING, merges, payload
    )
    out = tmp_path / "out"
    proc = rfc("compile", model, "-o", out / "bundle", "--no-cache")
    assert proc.returncode == 2 and "tokenizer.ggml.merges" in proc.stderr and str(merges) in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_vocabulary_only_file_is_bounded_by_the_vocabulary_bound(tmp_path):
    """llama.cpp's vocabulary-only GGUFs have no tensors: `rfc tokenizer` reads them, and their
    vocabulary is bounded by rfc's own bound (2^22 tokens)."""
    vocab_only = rewrite_gguf(DEMO_MODEL, tmp_path / "vocab.gguf", drop_tensors=_tensor_names(DEMO_MODEL))
    rfc("tokenizer", vocab_only, "-o", tmp_path / "tokenizer.json", check=True)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    over = (1 << 22) + 1
    big = put_raw_array(
        vocab_only,
        tmp_path / "big.gguf",
        "tokenizer.ggml.tokens",
        GGUFValueType.STRING,
        over,
        string_array_payload(over),
    )
    proc = rfc("tokenizer", big, "-o", tmp_path / "never.json")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "tokenizer.ggml.tokens" in proc.stderr and str(1 << 22) in proc.stderr, proc.stderr
    assert not (tmp_path / "never.json").exists()


def _tensor_names(path: Path) -> tuple[str, ...]:
    from gguf import GGUFReader

    return tuple(t.name for t in GGUFReader(path).tensors)
