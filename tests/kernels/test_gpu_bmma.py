"""The decode list's int8 matmuls on their batch twins (compiler/codegen/gpu_bmma.py, BATCH_MMA):
blocks of 16 tokens x 32 weight rows on the int8 matrix instructions, K shared out over the
block's waves. On the emulator (the instructions' fragment layouts, tests/kernels/gpu_emu.h),
against the reference device within the bounds of int8 activations."""

import re
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_cache import BlockManager
from tests.conftest import shared_basetemp
from tests.kernels.gpu_emulator import emulated_step_device, needs_emulator
from tests.kernels.gpu_support import BesideReference, gpu_build_cache, gpu_bundle, model_path, toolchain_marks  # noqa: F401

pytestmark = [pytest.mark.shared, needs_emulator]

NUM_BLOCKS, BLOCK_SIZE = 48, 16
WIDE = "wide-Q4_K_M"  # a GGUF the test writes (test_a_batch_twin_switch_gives_the_same_bits)
WAVE = {"sm_90": 32, "gfx90a": 64}


def _compile(model, target: str, out_dir, cache_dir) -> None:
    """`model`: a fixture's name or a GGUF's path."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile

    path = model if isinstance(model, Path) else model_path(model)
    emulator_compile(CompileOptions(model=path, out_dir=out_dir, targets=(target,), cache_dir=cache_dir))


@pytest.mark.parametrize(
    "model,target,min_blocks,wave_subs",
    [
        # mma.sync; Q4_K with b, Q6_K halves; the fixture's small matrices on tiles of 16 rows
        pytest.param("llama-Q4_K_M", "sm_90", None, None, marks=toolchain_marks("sm_90")),
        # MFMA, waves of 64; no b; every matrix on tiles of 32 rows
        pytest.param("llama-Q8_0", "gfx90a", 0, None, marks=toolchain_marks("gfx90a")),
        # chunks of 4 sub-blocks a wave (gpu_bmma.WAVE_SUBS; gate/up's 2): two decodes a thread
        pytest.param("llama-Q5_1", "sm_90", None, 4, marks=toolchain_marks("sm_90") + [pytest.mark.exhaustive]),
    ],
)
def test_batch_steps_on_the_batch_twins_stay_within_bounds(
    model, target, min_blocks, wave_subs, gpu_bundle, gpu_build_cache, tmp_path, tmp_path_factory, monkeypatch
):
    """With the switch on (the default), the program gets a batch list: the decode list with its q8-input
    matmuls, q/k/v segments of one format and gate/up + SwiGLU (rounding its output for the
    down matmul, whose twin reads it) on the batch twins; the other lists are the plain
    bundle's. Every step of several tokens runs the batch list here: a 40-token prompt (three
    tiles of tokens, the last partial; every row's logits), then one token from each of four
    sequences of different lengths; each row within the bounds of its sequence teacher-forced
    on the reference device for int8 activations. A wrong fragment, scale, wave sum or
    rounding is off by far more."""
    from rfc.compiler.codegen import gpu_bmma
    from tests.bounds import device_bounds
    from tests.conftest import FIXTURES
    from tests.kernels.gpu_support import prefill_rounding

    plain = open_bundle(gpu_bundle(model, target))
    monkeypatch.setattr(gpu_bmma, "BATCH_MMA", True)
    if min_blocks is not None:
        monkeypatch.setattr(gpu_bmma, "BMMA_MIN_BLOCKS", min_blocks)
    if wave_subs is not None:
        monkeypatch.setattr(gpu_bmma, "WAVE_SUBS", wave_subs)
    _compile(model, target, tmp_path / "bm", gpu_build_cache)
    bundle = open_bundle(tmp_path / "bm")
    device = emulated_step_device(
        bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, shared_basetemp(tmp_path_factory) / "gpu-emu"
    )
    program = device.runner.program
    plain_program = emulated_step_device(
        plain, target, plain.plan.kv, NUM_BLOCKS, BLOCK_SIZE, shared_basetemp(tmp_path_factory) / "gpu-emu"
    ).runner.program
    assert program.batch_min_tokens == gpu_bmma.BATCH_MMA_MIN_TOKENS
    names = [launch.kernel for launch in program.batch_launches]
    twins = [n for n in names if n.startswith("rfc_matmul_bmma_")]
    layers = sum(n.startswith("rfc_attention_") for n in names)
    tiles = {launch.grid[0].tile for launch in program.batch_launches if launch.kernel.startswith("rfc_matmul_bmma_")}
    assert tiles == ({16, 32} if min_blocks is None else {32}), tiles  # (gate/up keeps 32 rows)
    # each twin's chunk (its parameters as the generated source records them)
    source = next(p for p in (tmp_path / "bm" / "kernels" / target).iterdir() if p.suffix in (".cu", ".hip"))
    source = source.read_text()
    chunks = {int(c) for c in re.findall(r'"chunk_subs": (\d+)[^\n]*"name": "rfc_matmul_bmma_', source)}
    assert max(chunks) == (4 if wave_subs else 2) * 256 // WAVE[target], chunks
    assert any(n.endswith("_swiglu_q8out") for n in twins) and len(twins) >= 3 * layers, names
    for i, launch in enumerate(program.batch_launches):  # each rounded gate/up output is read by the twin after it
        if launch.kernel.endswith("_swiglu_q8out"):
            down = program.batch_launches[i + 1]
            assert re.fullmatch(r"rfc_matmul_bmma_\w+_\d+x\d+", down.kernel) and down.args[1] == launch.args[0]
    # the other lists are the default bundle's (which has a batch list of its own: the switch is on
    # by default); the batch list is the decode list launch for launch, but for a q/k/v launch whose
    # segments differ in format (the Q4_K_M fixture's Q6_K v layers): one twin a run of one format
    # (gpu_bmma._format_runs), together the launch's outputs and weights, each reading its input
    assert program.launches == plain_program.launches and plain_program.batch_launches
    assert program.single_launches == plain_program.single_launches
    assert program.prefill_launches == plain_program.prefill_launches
    batch, pairs, split = iter(program.batch_launches), [], 0
    for d in program.launches:
        b = next(batch)
        if not (d.kernel.endswith("_fused_q8") and len(b.args) < len(d.args)):
            pairs.append((b, d))
            continue
        runs, n = [b], (len(d.args) - 2) // 2
        while sum((len(r.args) - 2) // 2 for r in runs) < n:
            runs.append(next(batch))
        halves = [(len(r.args) - 2) // 2 for r in runs]
        assert [a for r, h in zip(runs, halves) for a in r.args[:h]] == list(d.args[:n])
        assert [a for r, h in zip(runs, halves) for a in r.args[h + 1 : 2 * h + 1]] == list(d.args[n + 1 : 2 * n + 1])
        assert all(r.args[h] == d.args[n] and r.kernel.startswith("rfc_matmul_bmma_") for r, h in zip(runs, halves))
        split += 1
    assert next(batch, None) is None
    assert split == (layers // 2 if model == "llama-Q4_K_M" else 0), split  # Q4_K_M: Q6_K v in half the layers
    # (the decode list's gate/up + SwiGLU also takes the slot it rounds its output into and the counts,
    # and its down matmul reads that slot: gpu_glu_handoff.py; their twins keep the arguments before it)
    handoff = ("glu.q8", "attention.arrivals")
    assert all(
        b == d
        or (b.kernel.startswith("rfc_matmul_bmma_") and b.args == d.args)
        or (d.kernel.endswith("_q8out") and b.args == tuple(a for a in d.args if a.ref not in handoff))
        or (d.kernel.endswith("_q8in") and b.args[0] == d.args[0] and b.args[2:] == d.args[2:])
        for b, d in pairs
    )

    runner = device.runner
    runner.prefill_min_tokens = None  # every step of 2 tokens or more on the batch list
    runner.batch_min_tokens = 2
    assert [runner.list_name(n) for n in (1, 2, 40)] == ["single_launches", "batch_launches", "batch_launches"]
    formats = {t.format for t in bundle.layout.tensors}
    tokens = [int(t) for t in np.load(FIXTURES / f"tiny-{model}.logits.npz")["tokens"]]
    step = BesideReference(bundle, device, NUM_BLOCKS, BLOCK_SIZE).step
    prompt = tuple(tokens[:40])
    got, want = step([ScheduledChunk(9, 0, prompt, all_logits=True)])
    ok, msg = device_bounds(model, got, want, rounding=prefill_rounding(model, formats, prompt, target))
    print(msg)
    assert ok, msg
    seqs = [tokens[3 * i : 3 * i + n] for i, n in enumerate((9, 17, 5, 30))]
    step([ScheduledChunk(s, 0, tuple(seq[:-1])) for s, seq in enumerate(seqs)])  # one step of four prompts
    got, want = step([ScheduledChunk(s, len(seq) - 1, (seq[-1],)) for s, seq in enumerate(seqs)])
    rounding = np.stack([prefill_rounding(model, formats, seq, target)[-1] for seq in seqs])
    ok, msg = device_bounds(model, got, want, rounding=rounding)
    print(msg)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_gpu_checks_batch_list_check_runs_the_twins(target, gpu_bundle, tmp_path_factory, monkeypatch):
    """tools/gpu_check.py's check of the batch list (the fixtures' own 64-token step takes the
    prefill list, so without it the twins go unchecked on a card): the real loader over the
    emulated kernels, the fixture's tokens in one step whose launches are the batch list's, within
    llama.cpp's bounds and the reference device's; the bounds without the activation rounding are
    too tight for it, so the check can fail."""
    import importlib.util
    from pathlib import Path

    import rfc.runtime.devices as devices
    from tests.conftest import FIXTURES
    from tests.kernels.gpu_emulator import build_emulator, graph_kernels, loader_driver_class
    from tests.kernels.gpu_support import gpu_rounding

    model = "llama-Q4_K_M"
    bundle_dir = gpu_bundle(model, target)
    bundle = open_bundle(bundle_dir)
    lib = build_emulator(bundle, target, shared_basetemp(tmp_path_factory) / "gpu-emu")
    graphs: list = []
    Driver = loader_driver_class(lib, graphs)
    monkeypatch.setattr(devices, "gpu_driver_class", lambda family: Driver)
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[2] / "tools" / "gpu_check.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    expected = np.load(FIXTURES / f"tiny-{model}.logits.npz")
    tokens = expected["tokens"].tolist()
    lm = tool.load_model(bundle_dir, tool.LoadOptions(device="cuda"))
    ref = tool.teacher_forced(bundle_dir, "ref", tokens)
    formats = {t.format for t in bundle.layout.tensors}
    ok, summary = tool.batch_list_check(
        model, lm, tokens, expected["logits"], ref, gpu_rounding(model, formats, tokens)
    )
    print(summary)
    assert ok, summary
    twins = [launch.kernel for launch in lm.device.runner.program.batch_launches if "bmma" in launch.kernel]
    launched = {k for graph in graphs for k in graph_kernels(graph)}
    assert twins and set(twins) <= launched, (twins, launched)
    assert lm.device.runner.prefill_min_tokens is not None  # put back
    ok, summary = tool.batch_list_check(model, lm, tokens, expected["logits"], ref, None)
    assert not ok and "FAIL" in summary, summary


def _batch_logits(bundle_dir, target: str, tokens: list[int], build_dir) -> np.ndarray:
    """A 40-token prompt and a step of one token from each of four sequences, every step on the
    batch list (every row's logits of both)."""
    bundle = open_bundle(bundle_dir)
    device = emulated_step_device(bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, build_dir)
    device.runner.prefill_min_tokens = None
    device.runner.batch_min_tokens = 2
    step = BesideReference(bundle, device, NUM_BLOCKS, BLOCK_SIZE).run.forward
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    out = []
    seqs = [tokens[:40], *(tokens[3 * i : 3 * i + n] for i, n in enumerate((9, 17, 5, 30)))]
    for chunks in (
        [ScheduledChunk(0, 0, tuple(seqs[0]), all_logits=True)],
        [ScheduledChunk(s, 0, tuple(seq[:-1])) for s, seq in enumerate(seqs[1:], 1)],
        [ScheduledChunk(s, len(seq) - 1, (seq[-1],)) for s, seq in enumerate(seqs[1:], 1)],
    ):
        for c in chunks:
            blocks.allocate(c.seq_id, c.start + len(c.tokens))
        out.append(step(build_batch(chunks, blocks)))
    return np.concatenate(out)


@pytest.mark.parametrize(
    "model,target,switch,settings",
    [
        # ROW_LOADS: tiles of 16 rows (16 sub-blocks a chunk, 2 rows a warp) and gate/up's 32 (8 a chunk, 4 rows)
        pytest.param("llama-Q4_K_M", "sm_90", "ROW_LOADS", {}, marks=toolchain_marks("sm_90")),
        # MFMA's 64-lane waves: 8 sub-blocks a chunk, 8 rows a wave; Q8_0 has no b
        pytest.param("llama-Q8_0", "gfx90a", "ROW_LOADS", {"BMMA_MIN_BLOCKS": 0}, marks=toolchain_marks("gfx90a")),
        # STAGE_TOKENS: chunks of 16 sub-blocks over rows of 8 and 24 (one chunk, and two, each running past K:
        # the clamped copies), Q4_K's sums and Q6_K's halves
        pytest.param("llama-Q4_K_M", "sm_90", "STAGE_TOKENS", {}, marks=toolchain_marks("sm_90")),
        # chunks of 8: a row of 24 is three, the third chunk's copies into the first's buffer, none past K but
        # the copies after the last chunk
        pytest.param("llama-Q4_K_M", "sm_90", "STAGE_TOKENS", {"WAVE_SUBS": 1}, marks=toolchain_marks("sm_90")),
        # a model of 1024 x 1024 (tools/make_gguf.py, one layer): gate/up's twin over four chunks of 8, the others
        # over two of 16, none past K
        pytest.param(WIDE, "sm_90", "STAGE_TOKENS", {}, marks=toolchain_marks("sm_90")),
    ],
)
def test_a_batch_twin_switch_gives_the_same_bits(
    model, target, switch, settings, gpu_bundle, gpu_build_cache, tmp_path, tmp_path_factory, monkeypatch
):
    """Switches that change how a batch twin moves its operands, not what it multiplies or in which
    order it adds: on (the default), the batch list's logits are the switch's off, bit for bit.
    gpu_bmma.ROW_LOADS has a chunk's decodes taken by lanes along a row's sub-blocks and stored at
    padded strides (the shared rows the matrix instructions read are the same); STAGE_TOKENS
    copies a chunk's token rows, scales and sums into shared memory (two buffers, the emulator's
    copies landing only at the issuing thread's wait, 0xff bytes until then) where each wave read
    its own from global memory."""
    from rfc.compiler.codegen import gpu_bmma
    from tests.conftest import FIXTURES

    if model == WIDE:
        from tests.kernels.gpu_support import make_gguf

        model = tmp_path / "wide.gguf"
        make_gguf(model, "--dim", "1024", "--ffn", "1024", "--heads", "8", "--kv-heads", "2", "--layers", "1",
                  "--vocab", "512", "--format", "Q4_K_M")  # fmt: skip
        tokens = [(7 * i + 3) % 500 + 2 for i in range(60)]
    else:
        tokens = [int(t) for t in np.load(FIXTURES / f"tiny-{model}.logits.npz")["tokens"]]
    build_dir = shared_basetemp(tmp_path_factory) / "gpu-emu"
    param = {"ROW_LOADS": "row_loads", "STAGE_TOKENS": "stage"}[switch]
    for name, value in settings.items():
        monkeypatch.setattr(gpu_bmma, name, value)
    logits, sources = [], []
    for on in (True, False):
        if not settings and on and not isinstance(model, Path):
            bundle_dir = gpu_bundle(model, target)  # the default build
        else:
            monkeypatch.setattr(gpu_bmma, switch, on)
            bundle_dir = tmp_path / f"on-{on}"
            _compile(model, target, bundle_dir, gpu_build_cache)
        source = next(p for p in (bundle_dir / "kernels" / target).iterdir() if p.suffix in (".cu", ".hip"))
        sources.append(set(re.findall(rf'"{param}": (\w+)', source.read_text())))
        logits.append(_batch_logits(bundle_dir, target, tokens, build_dir))
    # on: some twin takes it (ROW_LOADS: chunks of 8 to 32 sub-blocks, so not gfx90a's gate/up of 4)
    assert "true" in sources[0] and sources[1] == {"false"}, sources
    assert np.array_equal(logits[0], logits[1]), f"max diff {np.abs(logits[0] - logits[1]).max():.3e}"


def test_the_twins_that_stage_their_tokens(monkeypatch):
    """STAGE_TOKENS as planned at an 8B's sizes: the twins on sm_80 and later copy their tokens into
    two shared buffers within the 48 KiB a block has (gate/up's too, and they ask for two blocks a
    multiprocessor); AMD's (no asynchronous copies), 32-row tiles of 4096 rows (too little shared
    memory left) and the switch off do not."""
    from rfc.compiler.codegen import gpu_bmma
    from rfc.compiler.codegen.gpu_imma import q8_layout
    from rfc.compiler.codegen.gpu_plan import weight_geometry
    from rfc.compiler.targets import parse_target

    x = q8_layout(4096, 2048)
    sm90, sm80, gfx = parse_target("sm_90"), parse_target("sm_80"), parse_target("gfx90a")
    o, v = weight_geometry("Q4_Kp", 4096, 4096), weight_geometry("Q6_Kp", 1024, 4096)
    gate = weight_geometry("Q4_Kp", 14336, 4096)

    def staged(target, weights, **kw):
        spec = gpu_bmma.bmma_spec(target, weights, x, **kw)
        assert spec.params["min_blocks"] == (2 if spec.params["stage"] else 1)
        return spec.params["stage"], spec.params.get("x_pieces", 0)

    assert staged(sm90, [o]) == (True, 16 * 16 * 2 + 16 * 16 // 4 + 16 * 16 // 2)  # quants, scales, sums
    assert staged(sm80, [v]) == (True, 16 * 16 * 2 + 16 * 16 // 4)  # Q6_K halves: no sums
    assert staged(sm90, [o, weight_geometry("Q4_Kp", 1024, 4096)])[0]  # segments
    assert staged(sm90, [gate, gate], glu=True) == (True, 16 * 8 * 2 + 16 * 8 // 4 + 16 * 8 // 2)  # chunks of 8
    assert staged(gfx, [o]) == (False, 0)
    default_min_blocks = gpu_bmma.BMMA_MIN_BLOCKS
    monkeypatch.setattr(gpu_bmma, "BMMA_MIN_BLOCKS", 128)
    assert staged(sm90, [o]) == (False, 0)
    monkeypatch.setattr(gpu_bmma, "BMMA_MIN_BLOCKS", default_min_blocks)
    monkeypatch.setattr(gpu_bmma, "STAGE_TOKENS", False)
    assert staged(sm90, [o]) == (False, 0)


@pytest.mark.parametrize("target", [pytest.param("sm_90", marks=toolchain_marks("sm_90"))])
def test_the_twins_ask_each_line_of_their_weights_into_l2_once_ahead(
    target, gpu_build_cache, tmp_path, tmp_path_factory, monkeypatch
):
    """gpu_bmma.BMMA_PREFETCH_L2 on sm_90: each batch twin asks every 128-byte line of the weights
    it reads into L2 (prefetch.global.L2; the emulator records the addresses) and none outside
    them, a line at most twice (a chunk's window and the next one's meet in a line). A model of
    2048 x 2048 with a chunk asked ahead (BMMA_PREFETCH_BYTES below one chunk's bytes): gate/up's
    eight chunks of 8 sub-blocks, the others' four of 16 (a window of quants 2-3 lines a row), so
    the chunk loop asks what the start did not; Q4_K and Q6_K rows in planes (their d and scales
    asked whole at the start). A window a chunk off, a plane left out or a row's offset wrong
    leaves lines unasked or asks outside the weights."""
    from rfc.compiler.codegen import gpu_bmma
    from rfc.artifacts.program import ArgKind
    from tests.kernels.gpu_support import make_gguf

    model = tmp_path / "wider.gguf"
    make_gguf(model, "--dim", "2048", "--ffn", "2048", "--heads", "16", "--kv-heads", "4", "--layers", "1",
              "--vocab", "512", "--format", "Q4_K_M")  # fmt: skip
    monkeypatch.setattr(gpu_bmma, "BMMA_PREFETCH_BYTES", 1)
    _compile(model, target, tmp_path / "pf", gpu_build_cache)
    bundle = open_bundle(tmp_path / "pf")
    source = next(p for p in (tmp_path / "pf" / "kernels" / target).iterdir() if p.suffix == ".cu").read_text()
    assert set(re.findall(r'"name": "rfc_matmul_bmma_[^\n]*"pf_ahead": (\d+)', source)) == {"1"}
    device = emulated_step_device(
        bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, shared_basetemp(tmp_path_factory) / "gpu-emu"
    )
    runner, driver = device.runner, device._driver
    runner.prefill_min_tokens = None
    runner.batch_min_tokens = 2
    asked: list[tuple[str, np.ndarray]] = []
    launch = driver.launch

    def recording(fn, grid, block, params, overlap=False):
        driver.record_prefetches(True)
        launch(fn, grid, block, params, overlap)
        asked.append((fn.__name__.removeprefix("rfc_emu_launch_"), driver.prefetches()))
        driver.record_prefetches(False)

    monkeypatch.setattr(driver, "launch", recording)
    sizes = {t.name: t.nbytes for t in bundle.layout.tensors}
    program = runner.program
    twins = {}  # launch index -> the lines of the weights it reads
    for i, b in enumerate(program.batch_launches):
        if b.kernel.startswith("rfc_matmul_bmma_"):
            for slot in b.args:
                if slot.kind is ArgKind.WEIGHT:
                    entry = program.weights.get(slot.ref, slot.ref)
                    at = device._memory.weight_address(entry)
                    twins.setdefault(i, set()).update(range(at // 128, (at + sizes[entry] - 1) // 128 + 1))
    kernels = {program.batch_launches[i].kernel for i in twins}
    assert any(k.endswith("_swiglu_q8out") for k in kernels) and len(kernels) >= 4, sorted(kernels)
    tokens = [(7 * i + 3) % 500 + 2 for i in range(16)]
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    blocks.allocate(0, len(tokens))
    Executor(bundle.plan, device).forward(build_batch([ScheduledChunk(0, 0, tuple(tokens))], blocks))
    assert [k for k, _a in asked] == [b.kernel for b in program.batch_launches]
    for i, lines in twins.items():
        got = asked[i][1] // 128
        kernel = program.batch_launches[i].kernel
        assert set(got.tolist()) == lines, (kernel, len(lines - set(got.tolist())), len(set(got.tolist()) - lines))
        assert len(got) <= 2 * len(lines), (kernel, len(got), len(lines))
