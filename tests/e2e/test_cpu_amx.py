"""The cpu-amx target end to end: a fixture compiled for cpu-amx alone, teacher-forced over
its 64 positions (the x8 matmuls then run on AMX tiles: kernels/cpu_amx.h), against
llama.cpp's logits with the cpu device's bounds (tests/bounds.py). Runs where the CPU has AMX
and the OS grants the tile state; elsewhere it skips with the runtime's reason, before compiling."""

import shutil

import numpy as np
import pytest

from rfc.runtime.devices import cpu as cpu_device
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.bounds import llama_cpp_bounds
from tests.conftest import FIXTURES
from tests.e2e.test_reference_oracle import teacher_forced_logits

pytestmark = [
    pytest.mark.shared,
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)"
    ),
]


def test_cpu_amx_matches_llama_cpp_logits(bundle_cache):
    reason = cpu_device.probe("cpu-amx")
    if reason is not None:
        pytest.skip(f"{reason}: the cpu-amx kernels cannot run here")
    name = "tiny-llama-Q8_0"
    ref = np.load(FIXTURES / f"{name}.logits.npz")
    bundle = bundle_cache(FIXTURES / f"{name}.gguf", ("cpu-amx",))
    choice = load_model(bundle, LoadOptions(device="auto")).device_choice
    assert (choice.name, choice.target) == ("cpu", "cpu-amx")
    ok, summary = llama_cpp_bounds(name, teacher_forced_logits(bundle, "cpu", ref["tokens"].tolist()), ref["logits"])
    assert ok, summary


def test_cpu_amx_k_quants_are_cpu_avx512_bit_for_bit(bundle_cache):
    """A Q4_K_M fixture (Q4_Kx8 and Q6_Kx8 weights): its 64-token teacher-forced step runs the
    Q4_Kx8 matmuls on AMX tiles (from 16 tokens), whose sums are the VNNI kernel's in its
    order, so the logits equal cpu-avx512's exactly, within llama.cpp's bounds."""
    reason = cpu_device.probe("cpu-amx")
    if reason is not None:
        pytest.skip(f"{reason}: the cpu-amx kernels cannot run here")
    name = "tiny-llama-Q4_K_M"
    ref = np.load(FIXTURES / f"{name}.logits.npz")
    tokens = ref["tokens"].tolist()
    amx = bundle_cache(FIXTURES / f"{name}.gguf", ("cpu-amx",))
    model = load_model(amx, LoadOptions(device="cpu"))
    assert model.device_choice.target == "cpu-amx" and "Q4_Kx8" in {t.format for t in model.bundle.layout.tensors}
    got = teacher_forced_logits(amx, "cpu", tokens)
    want = teacher_forced_logits(bundle_cache(FIXTURES / f"{name}.gguf", ("cpu-avx512",)), "cpu", tokens)
    np.testing.assert_array_equal(got, want)
    ok, summary = llama_cpp_bounds(name, got, ref["logits"])
    assert ok, summary
