"""A GGUF is untrusted input to the compiler.

No string from it reaches generated source; numbers do only after validation; counts and
sizes are bounded by the file before anything is allocated; the kernel build cache is
checked when read.
"""

import os
import time
from pathlib import Path

import numpy as np
import pytest

from rfc.compiler.codegen.render import UnsafeTemplateValue, check_params
from tests.conftest import DEMO_MODEL, FIXTURES, assert_compile_refused, rfc
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared

MARKER_DIR = Path("/tmp")


def _payloads(marker: Path) -> dict[str, str]:
    return {
        "constructor": (
            f"x */\n#include <fcntl.h>\n__attribute__((constructor)) static void rfc_pwn(void) "
            f'{{ creat("{marker}", 0644); }}\n/* '
        ),
        "include": 'x */\n#include "/etc/hostname"\n/* ',
        "line splice": "x \\\n#error spliced",
        "json breaker": '"}, "evil": 1, "x": "',
    }


@pytest.fixture(scope="module")
def payload_cache(tmp_path_factory) -> Path:
    """A build cache of this module's own, shared by the payload cases: a source that holds no
    part of the name is the same for every payload, so one build serves them all, and a source
    that held one would miss it and be built (the cache is keyed by the source)."""
    return tmp_path_factory.mktemp("payload-cache")


@pytest.mark.parametrize("case", ["constructor", "include", "line splice", "json breaker"])
def test_model_name_never_reaches_generated_source(case, tmp_path, payload_cache):
    marker = MARKER_DIR / f"rfc-pwned-{os.getpid()}-{case.replace(' ', '-')}"
    marker.unlink(missing_ok=True)
    name = _payloads(marker)[case]
    model = rewrite_gguf(DEMO_MODEL, tmp_path / "evil.gguf", metadata={"general.name": name})
    out = tmp_path / "bundle"
    rfc("compile", model, "-o", out, "-q", "--cache-dir", payload_cache, check=True)
    for src in (out / "kernels").rglob("*.c"):
        text = src.read_text()
        assert (
            "constructor" not in text
            and "/etc/hostname" not in text
            and "rfc_pwn" not in text
            and "spliced" not in text
        )
    proc = rfc("run", out, "-p", "Once", "-n", "2", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "code from the model's name ran"
    # the name is still data people can see
    assert rfc("inspect", out, "--json", check=True).returncode == 0


@pytest.mark.toolchain
def test_model_name_never_reaches_gpu_source(tmp_path):
    name = _payloads(MARKER_DIR / "unused")["constructor"]
    model = rewrite_gguf(DEMO_MODEL, tmp_path / "evil.gguf", metadata={"general.name": name})
    out = tmp_path / "bundle"
    proc = rfc("compile", model, "-o", out, "-q", "--no-cache", "--arch", "sm_90")
    if proc.returncode != 0 and "nvcc not found" in proc.stderr:
        pytest.skip("nvcc is not installed")
    assert proc.returncode == 0, proc.stderr
    for src in (out / "kernels").rglob("*.cu"):
        assert "rfc_pwn" not in src.read_text()


def test_template_parameters_are_numbers_or_identifiers():
    check_params({"n": 64, "eps": 1e-5, "fmt": "q4_0", "inv": [1.0, 0.5], "tiles": [(4, 2)], "flag": True})
    for bad in ({"name": "a b"}, {"name": "x */"}, {"eps": float("nan")}, {"eps": float("inf")},
                {"list": ["ok", "not ok"]}, {"n": 1 << 70}, {"obj": object()}):  # fmt: skip
        with pytest.raises(UnsafeTemplateValue):
            check_params(bad)


HOSTILE_NUMBERS = {
    "rms_eps NaN": ({"llama.attention.layer_norm_rms_epsilon": float("nan")}, "layer_norm_rms_epsilon"),
    "rms_eps inf": ({"llama.attention.layer_norm_rms_epsilon": float("inf")}, "layer_norm_rms_epsilon"),
    "rms_eps negative": ({"llama.attention.layer_norm_rms_epsilon": -1e-5}, "layer_norm_rms_epsilon"),
    "rope base zero": ({"llama.rope.freq_base": 0.0}, "rope.freq_base"),
    "rope base negative": ({"llama.rope.freq_base": -10000.0}, "rope.freq_base"),
    "rope base NaN": ({"llama.rope.freq_base": float("nan")}, "rope.freq_base"),
    # ln(base) divides
    "yarn base 1": ({"llama.rope.scaling.type": "yarn", "llama.rope.freq_base": 1.0}, "rope.freq_base"),
    "yarn original context 2^32-1": (
        {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.original_context_length": (1 << 32) - 1},
        "original_context_length",
    ),
    "yarn factor NaN": (
        {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": float("nan")},
        "rope.scaling.factor",
    ),
    "yarn factor 1e-30": (
        {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 1e-30},
        "rope.scaling.factor",
    ),
    "block_count 2^31": ({"llama.block_count": 1 << 31}, "block_count"),
    "context_length 0": ({"llama.context_length": 0}, "context_length"),
    "context_length 2^32-1": ({"llama.context_length": (1 << 32) - 1}, "context_length"),
    "head_count 0": ({"llama.attention.head_count": 0}, "head_count"),
    "embedding_length 2^31": ({"llama.embedding_length": 1 << 31}, "embedding_length"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_NUMBERS))
def test_hostile_numbers_are_refused_at_once(case, tmp_path):
    metadata, key = HOSTILE_NUMBERS[case]
    model = rewrite_gguf(DEMO_MODEL, tmp_path / "bad.gguf", metadata=metadata)
    assert_compile_refused(model, tmp_path, key)


def test_counts_past_the_file_are_refused_before_reading(tmp_path):
    """Structural counts (tensors, metadata entries, string and array lengths) are bounded by
    the file's size before the gguf package walks them."""
    data = bytearray(DEMO_MODEL.read_bytes())
    cases = {
        "tensor count": (8, (1 << 40).to_bytes(8, "little")),
        "kv count": (16, (1 << 40).to_bytes(8, "little")),
        "first key length": (24, (1 << 62).to_bytes(8, "little")),
    }
    for what, (pos, value) in cases.items():
        bad = bytearray(data)
        bad[pos : pos + 8] = value
        path = tmp_path / f"{what.replace(' ', '-')}.gguf"
        path.write_bytes(bad)
        started = time.monotonic()
        proc = rfc("compile", path, "-o", tmp_path / "never", "--no-cache")
        assert time.monotonic() - started < 30, what
        assert proc.returncode == 2 and "truncated or corrupt GGUF" in proc.stderr, (what, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


# -- the kernel build cache (finding 4) ---------------------------------------------------------


def _library(bundle: Path) -> bytes:
    return (bundle / "kernels" / "cpu" / "librfc_cpu.so").read_bytes()


def test_a_replaced_cache_entry_is_detected_and_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    rfc("compile", DEMO_MODEL, "-o", tmp_path / "a", "-q", "--cache-dir", cache, check=True)
    objects = [p for p in (cache / "kernels" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 2  # the library and the sampler's object linked into it
    for entry in objects:
        entry.write_bytes(b"\x7fELF evil library")
    proc = rfc("compile", DEMO_MODEL, "-o", tmp_path / "b", "-q", "--cache-dir", cache, check=True)
    assert proc.stderr.count("does not match its recorded sha256") == 2, proc.stderr
    assert _library(tmp_path / "b") == _library(tmp_path / "a")
    rfc("compile", DEMO_MODEL, "-o", tmp_path / "c", "-q", "--no-cache", check=True)
    assert _library(tmp_path / "c") == _library(tmp_path / "a")


def test_a_cache_others_can_write_is_refused(tmp_path):
    cache = tmp_path / "shared-cache"
    (cache / "kernels").mkdir(parents=True)
    (cache / "kernels").chmod(0o777)
    proc = rfc("compile", DEMO_MODEL, "-o", tmp_path / "b", "-q", "--cache-dir", cache)
    assert proc.returncode == 2 and "writable by other users" in proc.stderr
    env = {**os.environ, "RFC_CACHE_DIR": str(cache)}
    proc = rfc("compile", DEMO_MODEL, "-o", tmp_path / "c", "-q", env=env)
    assert proc.returncode == 2 and "writable by other users" in proc.stderr


def test_qkv_fixture_still_compiles_through_the_structural_check(tmp_path):
    """The structural check passes the fixture (its kernels may come from the build cache, as a user's would)."""
    rfc("compile", FIXTURES / "tiny-qwen2-Q8_0.gguf", "-o", tmp_path / "b", "-q", check=True)


# -- never silently wrong ----------------------------------------------------------------------


def test_an_unknown_tensor_or_math_key_refuses_the_model_in_one_line(tmp_path):
    """A tensor the recipe neither uses nor knows, or a key that changes the math (where llama.cpp
    applies it) which the recipe does not apply, would give wrong logits without a word: exit 2,
    one line naming it. A key llama.cpp does not read for the architecture changes nothing there,
    and the model compiles."""
    extra = rewrite_gguf(
        DEMO_MODEL, tmp_path / "extra.gguf", add_tensors={"blk.0.ffn_norm.bias": np.zeros(64, np.float32)}
    )
    assert_compile_refused(extra, tmp_path / "a", "tensor blk.0.ffn_norm.bias is not used by rfc's llama recipe")
    tuned = rewrite_gguf(FIXTURES / "tiny-deepseek2-Q8_0.gguf", tmp_path / "tuned.gguf",
                         metadata={"deepseek2.attention.temperature_scale": 0.5})  # fmt: skip
    assert_compile_refused(
        tuned, tmp_path / "b", "deepseek2.attention.temperature_scale (attention temperature tuning) is not supported"
    )
    capped = rewrite_gguf(DEMO_MODEL, tmp_path / "capped.gguf", metadata={"llama.attn_logit_softcapping": 50.0})
    # llama.cpp's llama loader never reads it
    rfc("compile", capped, "-o", tmp_path / "c", "-q", "--no-cache", check=True)
