"""The GPU device's KV row copy (Device.copy_kv: prefix reuse to the token, docs/determinism.md)
on the emulated driver: after a real prefill, the copied rows of every layer's K and V hold
the source's bytes exactly, the rows around them are untouched, and the copy is one
device-to-device driver copy per run of rows, layer and K or V, on the step stream only (no
launch, no host staging)."""

import ctypes

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_cache import BlockManager, KvCopy, kv_copy_slots
from tests.conftest import shared_basetemp
from tests.kernels.gpu_emulator import emulated_step_device, needs_emulator
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, toolchain_marks  # noqa: F401

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

NUM_BLOCKS, BLOCK_SIZE, TARGET = 8, 16, "gfx1100"


@pytest.mark.parametrize("model", [pytest.param("qwen2-Q8_0", marks=toolchain_marks(TARGET))])
def test_copied_kv_rows_hold_the_source_bytes(model, gpu_bundle, tmp_path_factory):
    bundle = open_bundle(gpu_bundle(model, TARGET))
    kv = bundle.plan.kv
    device = emulated_step_device(
        bundle, TARGET, kv, NUM_BLOCKS, BLOCK_SIZE, shared_basetemp(tmp_path_factory) / "gpu-emu"
    )
    assert device.copies_kv
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    blocks.allocate(1, 20)
    Executor(bundle.plan, device).forward(build_batch([ScheduledChunk(1, 0, tuple(range(3, 23)))], blocks))
    blocks.allocate(2, 16)
    src, dst = blocks.block_table(1)[1], blocks.block_table(2)[0]  # rows 16..19 of sequence 1
    row = kv.n_kv_heads * kv.head_dim * 2

    def rows(which: str, layer: int, block: int, first: int, n: int) -> bytes:
        base = device._memory.kv_address(which, layer)
        return ctypes.string_at(base + (block * BLOCK_SIZE + first) * row, n * row)

    before = {(w, layer): rows(w, layer, dst, 0, BLOCK_SIZE) for w in "kv" for layer in range(kv.n_layers)}
    device._driver.calls.clear()
    device.copy_kv(*kv_copy_slots([KvCopy(src, dst, 4)], BLOCK_SIZE))
    for which in "kv":
        for layer in range(kv.n_layers):
            assert rows(which, layer, dst, 0, 4) == rows(which, layer, src, 0, 4)
            assert rows(which, layer, dst, 4, BLOCK_SIZE - 4) == before[(which, layer)][4 * row :]  # untouched
            assert rows(which, layer, src, 0, 4) != before[(which, layer)][: 4 * row]  # a real copy, not a no-op
    copies = [c for c in device._driver.calls if c[0] == "d2d"]
    assert len(copies) == 2 * kv.n_layers and all(c[1] == 4 * row for c in copies)
    assert not any(c[0] in ("launch", "d2h", "h2d", "sync") for c in device._driver.calls)
    with pytest.raises(Exception, match="outside"):
        device.copy_kv(np.array([0]), np.array([NUM_BLOCKS * BLOCK_SIZE]))
