"""The cpu step program's loops over repeated layers (compiler/codegen/cpu_step.py loop_layers):
the looped library gives the unrolled one's logits and hidden states bit for bit, and the
loop is really there (the bundle's source is the looped one, several times shorter)."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.program import unpack_program
from rfc.compiler.codegen import CodegenInput, cpu, cpu_step
from rfc.compiler.gguf_reader import read_gguf
from rfc.compiler.spec import build_spec
from rfc.compiler.targets import parse_target
from rfc.runtime.devices.cpu import open_library
from rfc.runtime.devices.cpu_step import CpuStepDevice
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.conftest import FIXTURES

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

# (the model, how many times fewer barriers its looped source has, whether a loop takes floats)
# gemma3: five sliding-window layers, then a global one (another window, another rope table: one
# loop's table-driven numbers); gemma4: per-layer output scales (a float table), its global layer
# another geometry (unrolled); qwen35: Gated DeltaNet layers (state offsets) beside attention ones
MODELS = [("tiny-gemma3-Q8_0", 4, False), ("tiny-gemma4-Q8_0", 1.5, True), ("tiny-qwen35-Q8_0", 1.5, False)]


def test_loop_takes_numbers_only_from_its_table():
    """Blocks that differ in per-layer numbers (weight offsets, counters, KV layers) are one
    loop; a block that differs in anything else (a width) stays unrolled."""

    def layer(i: int, k: int = 64) -> list[dict]:
        return [{"kind": "mm_run", "fmt": "q8_0", "k": k, "x": 1, "rows": "T", "counter": 2 * i,
                 "segs": [{"w": 1000 * i, "row_bytes": 68, "n": 64, "out": 2, "bias": [False, 7], "accum": -1}]},
                {"kind": "barrier"},
                {"kind": "attention", "q": 2, "out": 3, "layer": i, "counter": 2 * i + 1, "window": 0, "softcap": 0.0,
                 "sinks": [], "sfx": []},
                {"kind": "barrier"}]  # fmt: skip

    phases = [{"kind": "embed"}, *layer(0), *layer(1), *layer(2), *layer(3, k=128)]
    out = cpu_step.loop_layers(phases)
    assert [p["kind"] for p in out] == ["embed", "loop", "mm_run", "barrier", "attention", "barrier"]
    loop = out[1]
    assert loop["n"] == 3 and [p["kind"] for p in loop["phases"]] == ["mm_run", "barrier", "attention", "barrier"]
    run, attention = loop["phases"][0], loop["phases"][2]
    assert run["k"] == 64 and run["segs"][0]["bias"] == [False, 7]  # the same in every layer: a constant
    cols = [run["counter"]["col"], run["segs"][0]["w"]["col"], attention["layer"]["col"], attention["counter"]["col"]]
    assert sorted(cols) == [0, 1, 2, 3]
    for i, row in enumerate(loop["table"]):
        assert [row[c] for c in cols] == [2 * i, 1000 * i, i, 2 * i + 1]
    assert out[2:] == phases[-4:]


def _render(bundle: Path, gguf: Path, loop: bool) -> str:
    """The bundle's cpu source as this rfc renders it, looped or unrolled."""
    b = open_bundle(bundle)
    spec = build_spec(read_gguf(gguf))
    program = unpack_program((bundle / "kernels/cpu/program.msgpack").read_bytes())
    inp = CodegenInput(parse_target("cpu"), spec.hparams, spec.plan, b.layout, None, None, program.weights)
    return cpu.render_source(inp, cpu.CpuTuning(loop_layers=loop), sampler=False)  # a bundle's sampler is its own unit


def _batch(blocks, steps, tokens):
    for seq, start, n in steps:
        blocks.allocate(seq, start + n)
    return build_batch([ScheduledChunk(s, st, tuple(int(t) for t in tokens[st : st + n]), all_logits=True)
                        for s, st, n in steps],
                       blocks)  # fmt: skip


@pytest.mark.parametrize("name,fewer,floats", MODELS)
def test_looped_step_gives_the_unrolled_steps_bits(name, fewer, floats, bundle_cache, tmp_path):
    path = FIXTURES / f"{name}.gguf"
    if not path.exists():
        pytest.skip(f"fixture {path} missing")
    bundle = bundle_cache(path)
    looped, unrolled = _render(bundle, path, True), _render(bundle, path, False)
    assert looped == (bundle / "kernels/cpu" / cpu.SOURCE).read_text()  # bundles are built looped
    assert "rfc_step_loop0[" in looped and "_loop0[" not in unrolled
    assert ("rfc_step_loopf0[" in looped) == floats
    barrier = "rfc_barrier(&barrier, nth);"
    assert looped.count(barrier) * fewer <= unrolled.count(barrier), (looped.count(barrier), unrolled.count(barrier))
    sampler = (bundle / "kernels/cpu" / cpu.SAMPLER_SOURCE).read_bytes()
    files = {cpu.SOURCE: unrolled.encode(), cpu.SAMPLER_SOURCE: sampler}
    library = cpu.compile_files(files, cpu.library_command(parse_target("cpu")), cpu.LIBRARY)
    (tmp_path / "unrolled.so").write_bytes(library)

    lm = load_model(bundle, LoadOptions(device="cpu"))
    plan = lm.bundle.plan
    blocks = lm.kv_pool.manager()
    lm.executor.device.n_threads = 3
    _, entry = open_library(lm.bundle, "cpu", plan.kv)
    other = CpuStepDevice(lm.bundle, "cpu", ctypes.CDLL(str(tmp_path / "unrolled.so")), entry, plan.kv,
                          blocks.num_blocks, blocks.block_size, n_threads=3)  # fmt: skip
    if plan.state.tensors:
        other.alloc_state(lm.kv_pool.state_slots + lm.kv_pool.checkpoint_slots)
    other_exec = Executor(plan, other)
    other_blocks = lm.kv_pool.manager()
    tokens = np.random.default_rng(0).integers(0, plan.vocab_size, 64)
    for steps in ([(0, 0, 40)], [(0, 40, 1), (1, 0, 9)], [(1, 9, 1), (0, 41, 1)], [(0, 42, 1)]):
        got = lm.executor.forward(_batch(blocks, steps, tokens))
        want = other_exec.forward(_batch(other_blocks, steps, tokens))
        np.testing.assert_array_equal(got, want)
    got = lm.executor.forward_hidden(_batch(blocks, [(0, 43, 2)], tokens))
    want = other_exec.forward_hidden(_batch(other_blocks, [(0, 43, 2)], tokens))
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
