"""The cpu-amx target end to end: a fixture compiled for cpu-amx alone, teacher-forced over
its 64 positions (the x8 matmuls then run on AMX tiles: kernels/cpu_amx.h), against
llama.cpp's logits with the cpu device's bounds (tests/bounds.py). Runs where the CPU has AMX
and the OS grants the tile state; elsewhere it skips with the runtime's reason, before compiling."""

import shutil

import numpy as np
import pytest

from rfc.runtime.devices import cpu as cpu_device
from rfc.runtime.model.loader import LoadOptions, load_model
from tests.bounds import llama_cpp_bounds
from tests.conftest import FIXTURES
from tests.e2e.test_reference_oracle import teacher_forced_logits

pytestmark = [
    pytest.mark.shared,
    pytest.mark.toolchain,
    pytest.mark.skipif(shutil.which("cc") is None, reason="compiling for the cpu target needs a C compiler ('cc' not found)"),
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
