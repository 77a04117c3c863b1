"""tools/gpu_matmul_bw.py, the measurement a lent GPU runs for each matmul's bandwidth at batch 1,
driven here over the emulated step device (a wall-clock timer in place of the GPU's events):
it finds every matmul kernel of the decode list, fused ones included, and counts the bytes of
every weight each reads."""

import importlib.util

import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_cache import BlockManager
from tests.conftest import ROOT, shared_basetemp
from tests.kernels.gpu_emulator import emulated_step_device, needs_emulator
from tests.kernels.gpu_support import gpu_build_cache, gpu_bundle, toolchain_marks  # noqa: F401

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

TARGET = "gfx1100"


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_matmul_bw", ROOT / "tools" / "gpu_matmul_bw.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", [pytest.param("llama-Q8_0", marks=toolchain_marks(TARGET))])
def test_each_matmul_of_the_decode_list_with_its_weight_bytes(model, gpu_bundle, tmp_path_factory):
    tool = _tool()
    bundle = open_bundle(gpu_bundle(model, TARGET))
    kv = bundle.plan.kv
    device = emulated_step_device(bundle, TARGET, kv, 8, 16, shared_basetemp(tmp_path_factory) / "gpu-emu")
    runner = device.runner
    scalars = tool.decode_step(
        runner, Executor(bundle.plan, device), bundle.plan.vocab_size, BlockManager(8, 16), context=5
    )
    assert scalars["n_tokens"] == 1
    rows = tool.matmul_rates(runner, bundle.layout, scalars, tool.WallTimer(runner._driver), repeat=1)
    by_kernel = {r["kernel"]: r for r in rows}
    entries = {e.name: e.nbytes for e in bundle.layout.tensors}
    weights = runner.program.weights

    def nbytes(*names):
        return sum(entries[weights.get(n, n)] for n in names)

    # a one-token step: the one-token list's matmuls (gpu_plan.one_token_twin), each with the
    # bytes of every weight it reads (q, k and v: three)
    launched = runner.launches_for(1)
    assert launched == runner.program.single_launches
    qkv = by_kernel["rfc_matmul_q8_0p_256_64_64x256_fused_q8_t1"]  # (the first norm rounds its rows: RMSNORM_Q8)
    assert qkv["bytes"] == nbytes("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight")
    assert by_kernel["rfc_matmul_swiglu_q8_0p_768x256_q8_t1_q8out"]["bytes"] == nbytes(
        "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"
    )
    assert by_kernel["rfc_matmul_q8_0p_256x768_t1_q8in"]["bytes"] == nbytes("blk.0.ffn_down.weight")
    assert set(by_kernel) == {launch.kernel for launch in launched if launch.kernel.startswith("rfc_matmul_")}
    assert all(r["us"] > 0 and r["gbps"] > 0 for r in rows)
    every = tool.matmul_rates(runner, bundle.layout, scalars, tool.WallTimer(runner._driver), repeat=1, every=True)
    assert len(every) == sum(launch.kernel.startswith("rfc_matmul_") for launch in launched) > len(rows)
    text = tool.table(rows, None)
    assert "rfc_matmul_swiglu_q8_0p_768x256" in text and "device-to-device" not in text
    profile = tool.step_profile(runner, scalars, tool.WallTimer(runner._driver), repeat=1)
    assert f"{len(launched)} launches; the whole list queued back to back" in profile
    # every kernel of the step has its row
    assert all(launch.kernel[:56] in profile for launch in launched)
    blocks = BlockManager(8, 16)
    prefill = tool.prefill_step(runner, bundle.plan.vocab_size, blocks, tokens=runner.prefill_min_tokens or 20)
    assert prefill["n_tokens"] == (runner.prefill_min_tokens or 20)
    text = tool.step_profile(runner, prefill, tool.WallTimer(runner._driver), 1)
    assert f"{len(runner.program.prefill_launches)} launches; the whole list queued back to back" in text
    # gfx1100: WMMA int8
    assert any(launch.kernel.startswith("rfc_matmul_imma_") for launch in runner.program.prefill_launches)
    # the prefill list's own kernels, by name
    assert all(launch.kernel[:56] in text for launch in runner.program.prefill_launches)


@pytest.mark.parametrize("model,target", [pytest.param("llama-Q4_K_M", "sm_90", marks=toolchain_marks("sm_90"))])
def test_a_batch_steps_profile_runs_the_batch_list(model, target, gpu_bundle, tmp_path_factory):
    """gpu_check's profile of a batch step by kernel (batch_decode_step: sequences of their own, a
    token each): the step runs the batch list (its twins on the int8 matrix instructions), and
    every kernel of that list has its row."""
    tool = _tool()
    bundle = open_bundle(gpu_bundle(model, target))
    device = emulated_step_device(bundle, target, bundle.plan.kv, 8, 16, shared_basetemp(tmp_path_factory) / "gpu-emu")
    runner = device.runner
    runner.batch_min_tokens = 2  # a step of 4 on the batch list (16 on a card)
    blocks = BlockManager(8, 16)
    scalars = tool.batch_decode_step(
        runner, Executor(bundle.plan, device), bundle.plan.vocab_size, blocks, seqs=4, context=5
    )
    assert scalars["n_tokens"] == 4
    launched = runner.launches_for(4)
    assert launched == runner.program.batch_launches
    text = tool.step_profile(runner, scalars, tool.WallTimer(runner._driver), 1)
    assert f"{len(launched)} launches; the whole list queued back to back" in text
    assert any(launch.kernel.startswith("rfc_matmul_bmma_") for launch in launched)
    assert all(launch.kernel[:56] in text for launch in launched)
    for s in range(2, 6):
        blocks.free(s)
    assert blocks.num_free() == 8
