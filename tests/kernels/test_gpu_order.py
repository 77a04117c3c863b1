"""Races in the GPU kernels, found on the emulator: the same steps run with every launch's blocks,
and every pass of a block's threads between two barriers, in index order and then reversed
(gpu_emu.h rfc_emu_set_order), must give the same logits bit for bit.

The emulator runs a block's threads one after another up to each barrier. A kernel that has a
thread read shared memory another thread writes between the same two barriers (a barrier
missing), or overwrite what another thread still reads there (a buffer reused too early), reads
what it was meant to in one order and not in the other; so does a block that reads what another
block of its launch writes, or a launch whose "last block" work depends on which block that is.
On a card those are the hazards `compute-sanitizer --tool racecheck` reports, and wrong bits now
and then. Each case runs every list of the step program: a 64-token prompt (the prefill list:
tensor-core matmuls and attention), a 12-token one beside a decode row (the batch list: the batch
twins, their token copies double-buffered on sm_90), two single rows (the decode list: split
attention at 151 keys, merged by the last block of a row to arrive) and one (the one-token list).
"""

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_cache import BlockManager
from tests.conftest import shared_basetemp
from tests.kernels.gpu_emulator import emulated_step_device, needs_emulator
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, toolchain_marks  # noqa: F401

pytestmark = [pytest.mark.shared, needs_emulator]

NUM_BLOCKS, BLOCK_SIZE = 48, 16


def _steps(bundle, device) -> list[np.ndarray]:
    """Every list of the program, in turn, on `device`; the logits of each step."""
    slots = 2 if bundle.plan.state.tensors else 0  # a recurrent layer's state: a slot a sequence
    if slots:
        device.alloc_state(slots)
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE, prefix_caching=False, state_slots=slots)
    run = Executor(bundle.plan, device)

    def forward(chunks):
        for c in chunks:
            blocks.allocate(c.seq_id, c.start + len(c.tokens))
        return run.forward(build_batch(chunks, blocks))

    long = tuple((7 * i) % 250 + 1 for i in range(150))
    out = [forward([ScheduledChunk(1, 0, long[:64], all_logits=True)])]  # the prefill list
    out.append(forward([ScheduledChunk(1, 64, long[64:150])]))  # the prefill list again: 86 tokens
    short = tuple((11 * i) % 200 + 3 for i in range(12))
    out.append(forward([ScheduledChunk(2, 0, short, all_logits=True), ScheduledChunk(1, 150, (5,))]))  # batch list
    lens = {1: 151, 2: 12}
    tokens = {1: int(out[-1][-1].argmax()), 2: int(out[-1][-2].argmax())}  # each sequence's last row
    for _ in range(2):  # the decode list
        out.append(forward([ScheduledChunk(s, lens[s], (tokens[s],)) for s in (1, 2)]))
        tokens = {1: int(out[-1][0].argmax()), 2: int(out[-1][1].argmax())}
        lens = {s: n + 1 for s, n in lens.items()}
    for _ in range(2):  # the one-token list: a capture, then a replay
        out.append(forward([ScheduledChunk(1, lens[1], (int(out[-1][0].argmax()),))]))
        lens[1] += 1
    return out


# llama-Q4_K_M on sm_90: cp.async token copies, int8 and half tensor cores, the rope folded into the
# one-token attention, overlapped launches; llama-Q8_0 on gfx90a: MFMA, wave 64; qwen35 (Gated
# DeltaNet and conv state kernels) and gemma4moe (expert routing and MoE matmuls, sliding-window
# layers) on sm_90: bundles other tests build too.
# (tests/kernels/test_gpu_program.py's Twins run the decode lists reversed against the per-op
# path in order, gfx1100's among them.)
CASES = (
    ("llama-Q4_K_M", "sm_90"),
    ("llama-Q8_0", "gfx90a"),
    ("qwen35-Q8_0", "sm_90"),
    ("gemma4moe-Q4_K_M", "sm_90"),
)


@pytest.mark.slow
@pytest.mark.parametrize("model,target", [pytest.param(m, t, marks=toolchain_marks(t)) for m, t in CASES])
def test_reversed_thread_and_block_order_gives_the_same_bits(model, target, gpu_bundle, tmp_path_factory):
    bundle = open_bundle(gpu_bundle(model, target))
    build = shared_basetemp(tmp_path_factory) / "gpu-emu"
    runs = []
    for order in (1, -1):
        device = emulated_step_device(bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, build)
        device._driver.order = order
        runs.append(_steps(bundle, device))
    program = device.runner.program
    assert program.prefill_launches and program.single_launches
    for i, (a, b) in enumerate(zip(*runs, strict=True)):
        assert np.isfinite(a).all(), f"step {i}: non-finite logits"
        assert np.array_equal(a, b), f"step {i}: max |forward - reversed| {np.abs(a - b).max():.3e}"


# 64 threads; those below n_rows trade with the lane 16 away (a group of 32 lanes), the rest keep
# their own index
SHUFFLE_SOURCE = """
RFC_KERNEL(64) void rfc_some_lanes_shuffle(float *out, int n_rows) {
    float v = (float)RFC_TID;
    if ((int)RFC_TID < n_rows) v = rfc_shfl_xor(v, 16);
    out[RFC_TID] = v;
}
"""

_LAUNCH = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
out, n = (ctypes.c_float * 64)(), ctypes.c_int(int(sys.argv[2]))
ptr = ctypes.c_void_p(ctypes.addressof(out))
params = (ctypes.c_void_p * 2)(ctypes.addressof(ptr), ctypes.addressof(n))
lib.rfc_emu_set_order(int(sys.argv[3]))
lib.rfc_emu_launch_rfc_some_lanes_shuffle(1, 1, 1, 64, params)
print(" ".join(str(int(x)) for x in out))
"""


@pytest.mark.parametrize("order", [1, -1])
def test_a_shuffle_waits_for_its_lanes_and_fails_when_some_never_come(order, tmp_path_factory):
    """gpu_emu.h's wave barriers: a shuffle's 32-lane group goes on once every lane of it has
    arrived, in either order, and a group that some of its lanes never reach (they skipped the
    shuffle) aborts the launch with the reason instead of hanging or trading stale values."""
    import subprocess
    import sys

    from tests.kernels.gpu_emulator import build_source_emulator

    lib = build_source_emulator(
        SHUFFLE_SOURCE, ["rfc_some_lanes_shuffle"], shared_basetemp(tmp_path_factory) / "gpu-emu"
    )

    def launch(n_rows: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", _LAUNCH, str(lib), str(n_rows), str(order)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    whole = launch(32)  # lanes 0-31: one whole group
    assert whole.returncode == 0, whole.stderr
    assert [int(x) for x in whole.stdout.split()] == [i ^ 16 for i in range(32)] + list(range(32, 64))
    partial = launch(8)  # lanes 0-7 of the group 0-31 shuffle, 8-31 skip it
    assert partial.returncode != 0
    assert "a wave's barrier that lanes of the wave never reach" in partial.stderr, partial.stderr
