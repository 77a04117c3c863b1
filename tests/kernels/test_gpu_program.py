"""The GPU step program: the compiler's launch list, bound once by
rfc.runtime.devices.gpu_program.StepRunner and replayed (a graph per decode batch size),
against the kit's per-op path (tests/kernels/kit/gpu.py) over the same emulated kernels. The two must agree bit for
bit: the same kernels read the same inputs, so any wrong launch, argument slot, arena offset
or copy shows. The driver is the emulator's, recording its calls: each step makes one
host-to-device copy, one graph launch (decode) and one device-to-host copy, then one sync.
"""

import dataclasses
import re

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.program import ArgKind, ArgSlot, unpack_program
from rfc.compiler.targets import parse_target
from rfc.compiler.codegen.gpu_rope_attention import ROPE_IN_ATTENTION
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_cache import BlockManager
from tests.kernels.gpu_emulator import emulated_device, emulated_step_device, needs_emulator
from tests.kernels.gpu_support import BesideReference, gpu_build_cache, gpu_bundle, make_gguf, toolchain_marks  # noqa: F401
from tests.conftest import shared_basetemp

pytestmark = [
    pytest.mark.shared,
    needs_emulator,
]

NUM_BLOCKS, BLOCK_SIZE = 48, 16
TARGET = "gfx1100"


class Twins:
    def __init__(self, bundle_dir, build_dir, mutate=None, context_length=None, target=TARGET):
        self.bundle = open_bundle(bundle_dir)
        kv = self.bundle.plan.kv
        self.op = emulated_device(self.bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, build_dir)
        if mutate is not None:
            import rfc.runtime.devices.gpu as gp

            real = gp.unpack_program
            gp.unpack_program = lambda data: mutate(real(data))  # noqa: E731
        try:
            self.step = emulated_step_device(self.bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, build_dir, context_length)
        finally:
            if mutate is not None:
                gp.unpack_program = real
        # every step on the decode list, whose kernels are the per-op path's: the prefill list's
        # tensor-core matmuls round otherwise and are held to bounds instead
        # (test_prefill_list_keeps_teacher_forced_logits_within_bounds)
        self.step.runner.prefill_min_tokens = None
        # the step device's blocks and threads in reverse order, the per-op path's in order: the same
        # bits also say that no kernel of the program races (tests/kernels/test_gpu_order.py)
        self.step._driver.order = -1
        self.blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
        self.run_op = Executor(self.bundle.plan, self.op)
        self.run_step = Executor(self.bundle.plan, self.step)

    def forward(self, chunks):
        for c in chunks:
            self.blocks.allocate(c.seq_id, c.start + len(c.tokens))
        batch = build_batch(chunks, self.blocks)
        return self.run_step.forward(batch), self.run_op.forward(batch)


def _fusions(bundle) -> list:
    from rfc.artifacts.targets import target_entry
    from rfc.compiler.codegen.gpu_fuse import step_fusions
    from rfc.compiler.codegen.gpu_plan import plan_kernels
    from rfc.compiler.targets import parse_target

    entry = target_entry(bundle.manifest, TARGET)
    weights = unpack_program(bundle.file(entry.program).read_bytes()).weights
    return step_fusions(bundle.plan, *plan_kernels(parse_target(TARGET), bundle.plan, bundle.layout, weights))


def _decode(twins: Twins, steps: int) -> list[tuple]:
    """Prefill two sequences (direct launches), then decode both `steps` times (graphs);
    returns the driver calls of the decode steps. Asserts bit-equal logits throughout."""
    a, b = (5, 17, 33, 2, 9, 41, 7, 300, 12, 8, 19), (100, 3, 77, 250, 31)
    got, want = twins.forward([ScheduledChunk(1, 0, a, all_logits=True), ScheduledChunk(2, 0, b)])
    assert np.array_equal(got, want), f"prefill: max |step - op| {np.abs(got - want).max():.3e}"
    driver = twins.step._driver
    driver.calls.clear()
    la, lb = len(a), len(b)
    for step in range(steps):
        na, nb = int(want[-2].argmax()), int(want[-1].argmax())
        got, want = twins.forward([ScheduledChunk(1, la, (na,)), ScheduledChunk(2, lb, (nb,))])
        assert np.array_equal(got, want), f"decode step {step}: max |step - op| {np.abs(got - want).max():.3e}"
        la, lb = la + 1, lb + 1
    return driver.calls


# llama-Q4_K_M: q/k/v fused in GGUF Q4_K (and q/k alone where v is Q6_K); llama-Q8_0: in planar Q8_0p;
# qwen2-Q8_0: q/k/v keep their own launches (a bias after each), gate/up/SwiGLU fused
@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=toolchain_marks(TARGET)) for m in ("llama-Q4_K_M", "llama-Q8_0", "qwen2-Q8_0")]
)
def test_step_program_replays_the_per_op_path_bit_for_bit(model, gpu_bundle, tmp_path_factory):
    twins = Twins(gpu_bundle(model, TARGET), shared_basetemp(tmp_path_factory) / "gpu-emu")
    program = twins.step.runner.program
    # one launch per op (split-KV attention: the split kernel, whose last block per row and kv head
    # merges) and one per fused run of ops (compiler/codegen/gpu_fuse.py), which the per-op path
    # launches one by one
    fusions = _fusions(twins.bundle)
    assert fusions
    assert len(program.launches) == len(twins.bundle.plan.ops) - sum(f.count - 1 for f in fusions)
    assert program.arena.zeroed == ("attention.arrivals",)
    calls = _decode(twins, steps=4)
    n_launches = len(program.launches)
    # one capture (batch size 2), then replays; per step one copy each way and one sync
    per_step = [("h2d",), ("graph_launch", n_launches), ("d2h",), ("sync",)]
    steps = [c[:1] if c[0] in ("h2d", "d2h", "sync") else c for c in calls if c[0] != "capture"]
    assert steps == per_step * 4, calls[:12]
    assert [c for c in calls if c[0] == "capture"] == [("capture", n_launches)]
    assert not [c for c in calls if c[0] in ("launch", "malloc_host")], "per-step launches or allocations"
    h2d = [c[1] for c in calls if c[0] == "h2d"]
    runner = twins.step.runner
    # from the batch arrays (what device sampling stages ahead of them stays behind) to the
    # block-table rows in use
    assert h2d[0] == runner.stage["block_tables"][0] + 2 * runner.table_width * 4 - runner.stage["tokens"][0]


# a layer's ops; the per-op path launches 15 kernels for them
LLAMA_LAYER_OPS = (
    "rmsnorm",
    "matmul",
    "matmul",
    "matmul",
    "rope",
    "kv_write",
    "attention",
    "matmul",
    "add",
    "rmsnorm",
    "matmul",
    "matmul",
    "swiglu",
    "matmul",
    "add",
)
# the step program's: q/k/v reading the rows the norm before them left rounded (the q8 hand-off;
# the first layer's norm is a launch of its own, whose output the matmuls round), rope with the
# KV write, attention as one launch (which leaves its rows rounded for the output projection:
# gpu_fuse.ATTENTION_Q8), the output projection, the residual add with the next norm (which
# leaves its rows rounded for gate/up), gate/up with the SwiGLU, the down projection, the add
# with the next layer's norm
ROPE = "rope_adjacent_8x2x32_32_kv_write_f16_64"
LLAMA_LAYER_FUSED = (
    "matmul_q8_0p_256_64_64x256_fused_q8",
    ROPE,
    "attention_f16_8x2x32_split_q8",
    "matmul_q8_0p_256x256_q8",
    "add_rmsnorm_256_q8",
    "matmul_swiglu_q8_0p_768x256_q8_q8out",  # it rounds its output for the down matmul (gpu_glu_handoff.py)
    "matmul_q8_0p_256x768_q8in",
    "add_rmsnorm_256_q8",
)


@pytest.mark.parametrize("model", [pytest.param("llama-Q8_0", marks=toolchain_marks(TARGET))])
def test_a_llama_decode_layer_is_eight_launches(model, gpu_bundle):
    """The per-op path launches 15 kernels a layer; the step program 8: q/k/v as one matmul, rope
    with the KV write, attention as one launch (the split kernel's last block merges), gate/up
    with the SwiGLU, each residual add with the next norm. The one-token list is the same
    launches, its matmuls' twins taking one token a block, but for the rope + KV write, which its
    attention launch does: seven a layer."""
    bundle = open_bundle(gpu_bundle(model, TARGET))
    entry = next(t for t in bundle.manifest["targets"] if t["name"] == TARGET)
    program = unpack_program(bundle.file(entry["program"]).read_bytes())
    kernels = [launch.kernel.removeprefix("rfc_") for launch in program.launches]
    layers = bundle.plan.kv.n_layers
    assert [op.kind for op in bundle.plan.ops] == [
        "embed",
        *LLAMA_LAYER_OPS * layers,
        "gather_rows",
        "rmsnorm",
        "matmul",
    ]
    assert (
        kernels
        == [
            "embed_q8_0_256",
            "rmsnorm_256_q8",  # it leaves its rows rounded for the first q/k/v too (gpu_fuse.RMSNORM_Q8)
            *LLAMA_LAYER_FUSED * (layers - 1),
            *LLAMA_LAYER_FUSED[:-1],
            # the last layer's residual add alone: the logits' rows are gathered before their norm, which
            # rounds them for the LM head
            "add_256",
            "gather_rows_256",
            "rmsnorm_256_q8",
            "matmul_q8_0p_512x256_q8",
        ]
    )
    # the one-token list: the matmuls' twins, gate/up + SwiGLU's also rounding its output for the down
    # matmul's, which reads it rounded (gpu_glu_handoff.py)
    # and its attention launches each taking the rope + KV write before them (gpu_rope_attention.py)
    single = [launch.kernel.removeprefix("rfc_") for launch in program.single_launches]
    expected, i = [], 0
    while i < len(kernels):
        if kernels[i] == ROPE:
            expected.append(_one_token_kernel(kernels[i + 1]) + "_rope")
            i += 2
            continue
        expected.append(_one_token_kernel(kernels[i]))
        i += 1
    assert single == expected and len(single) == len(kernels) - layers
    assert program.arena.zeroed == ("attention.arrivals",)
    assert [s.buffer for s in program.arena.slots[-2:]] == ["glu.q8", "attention.arrivals"]
    # the prefill list keeps its runs (gpu_fuse.step_fusions): each residual add with the next
    # norm, which also leaves its output rounded for the int8 tensor-core matmuls after it (the
    # decode list's q8 hand-off: no rounding launch there; the first norm's too), and the SwiGLU
    # rounds its output for the down matmul (gpu_plan.GLU_Q8): the rounding launches left are the
    # output projections'
    prefill = [launch.kernel.removeprefix("rfc_") for launch in program.prefill_launches]
    assert prefill.count("add_rmsnorm_256_q8") == 2 * layers - 1 and prefill.count("rmsnorm_256_q8") == 2
    assert prefill.count("quantize_q8_256") == layers and prefill.count("swiglu_768_q8") == layers
    assert "quantize_q8_768" not in prefill
    assert not [k for k in prefill if k.endswith(("_norm", "_add")) or "_add_rmsnorm" in k or "_rope" in k]


@pytest.mark.parametrize("model", [pytest.param("llama-Q4_K_M", marks=toolchain_marks(TARGET))])
def test_a_served_context_narrows_the_block_tables(model, gpu_bundle, tmp_path_factory):
    """--ctx-size reaches the step program: its block tables are as wide as the served
    context (not the plan's), and the steps still agree with the per-op path."""
    build_dir = shared_basetemp(tmp_path_factory) / "gpu-emu"
    full = Twins(gpu_bundle(model, TARGET), build_dir)
    assert full.step.runner.table_width == min(NUM_BLOCKS, -(-full.bundle.plan.context_length // BLOCK_SIZE)) > 2
    twins = Twins(gpu_bundle(model, TARGET), build_dir, context_length=20)  # 2 blocks; _decode stays within 15 tokens
    assert twins.step.runner.table_width == 2
    _decode(twins, steps=4)


@pytest.mark.parametrize("model", [pytest.param("llama-Q4_K_M", marks=toolchain_marks(TARGET))])
def test_a_wrong_argument_slot_is_caught(model, gpu_bundle, tmp_path_factory):
    """The program with one matmul reading the wrong arena buffer: the comparison fails."""

    def mutate(program):
        launches = list(program.launches)
        i = next(i for i, launch in enumerate(launches) if launch.kernel.startswith("rfc_matmul_") and i > 3)
        args = list(launches[i].args)
        other = next(s.buffer for s in program.arena.slots if s.buffer not in (args[1].ref, args[0].ref))
        args[1] = ArgSlot(ArgKind.ARENA, other)
        launches[i] = dataclasses.replace(launches[i], args=tuple(args))
        return dataclasses.replace(program, launches=tuple(launches))

    twins = Twins(gpu_bundle(model, TARGET), shared_basetemp(tmp_path_factory) / "gpu-emu", mutate=mutate)
    with pytest.raises(AssertionError, match="prefill"):
        _decode(twins, steps=1)


@pytest.mark.parametrize("model", [pytest.param("llama-Q4_K_M", marks=toolchain_marks(TARGET))])
def test_program_arena_reuses_dead_buffers(model, gpu_bundle):
    bundle = open_bundle(gpu_bundle(model, TARGET))
    entry = next(t for t in bundle.manifest["targets"] if t["name"] == TARGET)
    program = unpack_program(bundle.file(entry["program"]).read_bytes())
    a = program.arena
    capacity = sum(-(-s.nbytes // a.alignment) * a.alignment for s in a.slots)
    assert a.total_bytes < capacity, "no buffer shares bytes with another"
    plan = bundle.plan
    live = {}
    for i, op in enumerate(plan.ops):
        for name in (*op.inputs, *op.outputs):
            live.setdefault(name, [i, i])[1] = i
    for name in (plan.output_logits, plan.output_hidden):
        live[name][1] = len(plan.ops)
    for x in a.slots:
        for y in a.slots:
            if x.buffer < y.buffer and x.offset < y.offset + y.nbytes and y.offset < x.offset + x.nbytes:
                (x0, x1), (y0, y1) = live[x.buffer], live[y.buffer]
                assert x1 < y0 or y1 < x0, f"{x.buffer} and {y.buffer} overlap while both live"


# gpt-oss-Q8_0: sinks (merged last), and windowed layers of fewer slices beside full ones
@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=toolchain_marks(TARGET)) for m in ("llama-Q4_K_M", "gpt-oss-Q8_0")]
)
def test_split_attention_replays_the_per_op_path_bit_for_bit(model, gpu_bundle, tmp_path_factory):
    """Decode rows of 151 and 71 keys: several slices each, so the program's split attention
    kernels leave partials in the arena's scratch, which each (row, kv head)'s last block merges,
    and the result must still equal the per-op kernel's (which merges the same partials in the
    same order). The counts of arrivals sit in an arena slot the runtime zeroes once (the
    emulator's memory starts NaN-filled, -1 as ints: unzeroed, no block would merge) and each
    launch leaves at zero, so every layer and every replayed graph starts from zero."""
    twins = Twins(gpu_bundle(model, TARGET), shared_basetemp(tmp_path_factory) / "gpu-emu")
    program = twins.step.runner.program
    assert any(launch.kernel.endswith(("_split", "_split_q8")) for launch in program.launches)
    # slots of no plan buffer: after every buffer's
    reserved = ("attention.scratch", "matmul.q8", "glu.q8", "attention.arrivals", "matmul.arrivals")
    assert program.arena.slot("attention.scratch").offset >= max(
        s.offset + s.nbytes for s in program.arena.slots if s.buffer not in reserved
    )
    prompt = tuple((7 * i) % 250 + 1 for i in range(150))
    got, want = twins.forward([ScheduledChunk(1, 0, prompt), ScheduledChunk(2, 0, prompt[:70])])
    assert np.array_equal(got, want)
    lens = [150, 70]
    for step in range(2):
        tokens = [int(want[0].argmax()), int(want[1].argmax())]
        got, want = twins.forward([ScheduledChunk(1, lens[0], (tokens[0],)), ScheduledChunk(2, lens[1], (tokens[1],))])
        assert np.array_equal(got, want), f"decode step {step}: max |step - op| {np.abs(got - want).max():.3e}"
        lens = [lens[0] + 1, lens[1] + 1]
    assert program.arena.zeroed == ("attention.arrivals",)
    for slot in program.arena.zeroed:
        counts = program.arena.slot(slot)
        left = np.empty(counts.nbytes // 4, np.int32)
        twins.step._driver.copy_to_host(left, twins.step.runner.arena + counts.offset)
        assert not left.any(), f"a launch left {slot} counts behind"


# -- the one-token list ------------------------------------------------------------------------------


def _one_token_kernel(kernel: str) -> str:
    """The one-token list's kernel in place of the decode list's `kernel` (without rfc_): the
    matmuls' twins, the FFN's hand-off suffixes (gpu_glu_handoff.py) after the twin's."""
    for suffix in ("_q8out", "_q8in"):
        if kernel.endswith(suffix):
            return kernel.removesuffix(suffix) + "_t1" + suffix
    return kernel + "_t1" if kernel.startswith("matmul_") else kernel


def _fold_rope_attention(decode, single) -> tuple[list, int]:
    """(the decode list's launches beside the one-token list's, each rope + KV write launch and
    the attention after it beside that attention's twin taking both; the number of such)."""
    from rfc.compiler.codegen.gpu_rope_attention import SUFFIX

    aligned, folded, i = [], 0, 0
    for s in single:
        d = decode[i]
        if s.kernel.endswith(SUFFIX) and "_kv_write_" in d.kernel and s.kernel == decode[i + 1].kernel + SUFFIX:
            aligned.append(
                (
                    decode[i + 1],
                    dataclasses.replace(s, kernel=decode[i + 1].kernel, args=s.args[: len(decode[i + 1].args)]),
                )
            )
            folded, i = folded + 1, i + 2
            continue
        aligned.append((d, s))
        i += 1
    assert i == len(decode)
    return aligned, folded


@pytest.mark.parametrize(
    "model,target",
    [
        pytest.param(m, t, marks=toolchain_marks(t))
        for m, t in (
            ("llama-Q4_K_M", TARGET),
            ("llama-Q8_0", TARGET),
            ("qwen2-Q8_0", "sm_90"),
            ("llama-BF16", "sm_90"),  # the float matmuls' template
            ("llama-Q4_K_M", "sm_90"),
        )
    ],
)
def test_one_token_steps_run_the_one_token_list_bit_for_bit(model, target, gpu_bundle, tmp_path_factory):
    """A step of one token (batch-1 decode) runs the one-token list: the decode list with every
    matmul whose blocks take 8 tokens replaced by its twin taking one (gpu_plan.one_token_twin).
    A token's sums run in the same order either way, so its logits equal the per-op path's
    (blocks of 8) bit for bit, step after step; a step of two tokens still runs the decode list.
    On sm_90 every launch of the list but the first overlaps the one before, and the emulator
    sees each thread of those launches pass RFC_GRID_WAIT once."""
    from rfc.compiler.codegen.gpu_plan import ONE_TOKEN_SUFFIX

    build = shared_basetemp(tmp_path_factory) / "gpu-emu"
    bundle = open_bundle(gpu_bundle(model, target))
    kv = bundle.plan.kv
    step = emulated_step_device(bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, build)
    op = emulated_device(bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, build)
    step._driver.order = -1  # reversed, the per-op path's in order: as Twins
    runner, program = step.runner, step.runner.program
    single, decode = program.single_launches, program.launches
    # each layer's rope + KV write launch folded into its attention launch's twin (gpu_rope_attention.py)
    aligned, folded = _fold_rope_attention(decode, single)
    assert folded == (bundle.plan.kv.n_layers if ROPE_IN_ATTENTION else 0)
    twinned = [(d.kernel, s.kernel) for d, s in aligned if d != s]
    # every matmul of the decode list but MoE's (whose blocks walk expert slots) has its twin; an int8
    # gate/up + SwiGLU's rounds its output for the down matmul's twin (gpu_glu_handoff.py)
    matmuls = [d.kernel for d in decode if d.kernel.startswith("rfc_matmul_")]
    assert [d for d, _s in twinned] == matmuls
    assert all(s == "rfc_" + _one_token_kernel(d.removeprefix("rfc_")) for d, s in twinned)
    assert all(ONE_TOKEN_SUFFIX in s for _d, s in twinned)
    int8 = "BF16" not in model
    assert sum(s.endswith("_t1_q8out") for _d, s in twinned) == (bundle.plan.kv.n_layers if int8 else 0)
    assert runner.launches_for(1) == single and runner.launches_for(2) == decode
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    run_step, run_op = Executor(bundle.plan, step), Executor(bundle.plan, op)

    def forward(chunks):
        for c in chunks:
            blocks.allocate(c.seq_id, c.start + len(c.tokens))
        batch = build_batch(chunks, blocks)
        return run_step.forward(batch), run_op.forward(batch)

    # (fewer than gpu_bmma.BATCH_MMA_MIN_TOKENS: a longer prompt runs the batch list, whose sums are
    # in another order, and the KV it writes would differ in the last bits)
    prompt = (5, 17, 33, 2, 9, 41, 7)
    got, want = forward([ScheduledChunk(1, 0, prompt)])
    assert np.array_equal(got, want)
    step._driver.calls.clear()
    step._driver.overlapped = 0
    n = len(prompt)
    for i in range(4):
        got, want = forward([ScheduledChunk(1, n + i, (int(want[-1].argmax()),))])
        assert np.array_equal(got, want), f"decode step {i}: max |step - op| {np.abs(got - want).max():.3e}"
    assert [c for c in step._driver.calls if c[0] == "capture"] == [("capture", len(single))]
    overlapping = parse_target(target).grid_dependency
    assert step._driver.overlapped == (4 * (len(single) - 1) if overlapping else 0)
    # two sequences, a token each: the decode list (blocks of 8 tokens), overlapped as well
    step._driver.overlapped = 0
    got, want = forward([ScheduledChunk(1, n + 4, (3,)), ScheduledChunk(2, 0, (4,))])
    assert np.array_equal(got, want)
    assert step._driver.overlapped == (len(decode) - 1 if overlapping else 0)


# -- the prefill list (tensor-core matmuls) on sm_90 ------------------------------------------------

MMA_TARGET = "sm_90"


@pytest.mark.parametrize(
    "model,target",
    [
        pytest.param(m, t, marks=toolchain_marks(t))
        for m, t in [
            (m, MMA_TARGET)
            for m in (
                "llama-Q4_K_M",
                "qwen2-Q8_0",
                "llama-Q5_1",
                "llama-Q2_K",
                "gemma2-F16",
                "llama-BF16",
                "gemma4moe-Q4_K_M",
                "gpt-oss-Q8_0",
            )
        ]
        + [("llama-Q8_0", "gfx90a")]
    ],
)  # AMD: int8 MFMA, wave 64
def test_prefill_list_keeps_teacher_forced_logits_within_bounds(model, target, gpu_bundle, tmp_path_factory):
    """A 64-token prompt, every row's logits, on the emulated step device: the step takes the
    prefill list (tensor-core matmuls: int8 activations and quants where the format's sub-blocks
    allow, gpu_imma.py, else activations and weights as halves) and stays within the
    bounds the dp4a kernels are held to (tests/bounds.py: per format against the reference,
    and against llama.cpp). F16/BF16 matmuls read float activations on the decode list; on
    the prefill list their bound is the oracle's for float16 activations (gpu_support.prefill_rounding:
    without it gemma2-F16 is at max 3.1e-2 / mean 5.1e-3 against float noise's 1e-2 / 1e-3).
    gemma4moe-Q4_K_M's output matrix is repacked (Q6_Kp): its bound must round it as its GGUF
    format, Q6_K (an H100 found the bound 5x too tight, at the emulator's own deviation). Attention runs on half
    tensor cores on sm_90 (Q and P rounded to half: within these bounds unchanged), gemma2-F16's windowed and
    soft-capped, gpt-oss-Q8_0's windowed with sinks."""
    from tests.bounds import device_bounds, llama_cpp_bounds
    from tests.conftest import FIXTURES
    from tests.kernels.gpu_support import prefill_rounding
    from rfc.compiler.codegen.gpu_imma import IMMA_FORMATS
    from rfc.runtime.devices.reference import ReferenceDevice

    bundle = open_bundle(gpu_bundle(model, target))
    kv = bundle.plan.kv
    device = emulated_step_device(
        bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, shared_basetemp(tmp_path_factory) / "gpu-emu"
    )
    program = device.runner.program
    assert program.prefill_min_tokens == 64
    # int8 tensor cores for the formats whose sub-blocks allow (gpu_imma.IMMA_FORMATS), half ones for the others
    tensor_core = [
        m.groups()
        for launch in program.prefill_launches
        if (m := re.fullmatch(r"rfc_matmul_(i?mma)_(.+)_\d+x\d+(?:_\d+)?", launch.kernel))
    ]
    assert tensor_core and all(
        (kind == "imma") == (fmt in {f.lower() for f in IMMA_FORMATS}) for kind, fmt in tensor_core
    ), tensor_core
    # attention on half tensor cores (compiler/codegen/gpu_attention.py) where the target has them: these
    # fixtures' head_dim (32, 64) and f16 caches are the kernel's
    attention = [launch.kernel for launch in program.prefill_launches if launch.kernel.startswith("rfc_attention_")]
    assert attention and all(k.endswith("_mma") == parse_target(target).wmma_f16 for k in attention), attention
    formats = {t.format for t in bundle.layout.tensors}
    expected = np.load(FIXTURES / f"tiny-{model}.logits.npz")
    tokens = tuple(int(t) for t in expected["tokens"][:64])
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    blocks.allocate(0, len(tokens))
    batch = build_batch([ScheduledChunk(0, 0, tokens, all_logits=True)], blocks)
    device._driver.calls.clear()
    gpu = Executor(bundle.plan, device).forward(batch)
    ref = Executor(bundle.plan, ReferenceDevice(bundle, kv, NUM_BLOCKS, BLOCK_SIZE)).forward(batch)
    assert ("capture", len(program.prefill_launches)) in device._driver.calls  # T == R: the prefill list's graph
    # the prefill list's launches never overlap, sm_90 included (gpu_overlap.OVERLAPPED_LISTS)
    assert device._driver.overlapped == 0
    ok, msg = device_bounds(model, gpu, ref, rounding=prefill_rounding(model, formats, tokens, target))
    print(msg)
    assert ok, msg
    ok, msg = llama_cpp_bounds(model, gpu, expected["logits"][: len(tokens)])
    print(msg)
    assert ok, msg


@pytest.mark.parametrize(
    "model,target",
    [pytest.param("llama-Q4_K_M", t, marks=toolchain_marks(t)) for t in (TARGET, "sm_90")],
)
def test_decode_rows_of_several_sequences_on_the_prefill_list_stay_within_bounds(
    model, target, gpu_bundle, tmp_path_factory
):
    """gpu_plan.PREFILL_MIN_TOKENS lowered to a decode step's rows (the switch the batch-16 A/B
    times: the tensor-core matmuls then read each weight once for all of a step's rows, where
    the decode list's blocks of 8 tokens read it twice at 16): a step of one token from each of
    four sequences of different lengths runs the prefill list's graph, and each row's logits
    stay within the bounds of its sequence teacher-forced on the reference device, for the
    prefill list's rounding. The rows' attention reads each sequence's own pages: a row that
    read another's keys is off by far more."""
    from tests.bounds import device_bounds
    from tests.conftest import FIXTURES
    from tests.kernels.gpu_support import prefill_rounding

    bundle = open_bundle(gpu_bundle(model, target))
    kv = bundle.plan.kv
    device = emulated_step_device(
        bundle, target, kv, NUM_BLOCKS, BLOCK_SIZE, shared_basetemp(tmp_path_factory) / "gpu-emu"
    )
    program = device.runner.program
    device.runner.prefill_min_tokens = 4  # what the compiled switch sets in the program
    tokens = [int(t) for t in np.load(FIXTURES / f"tiny-{model}.logits.npz")["tokens"]]
    seqs = [tokens[3 * i : 3 * i + n] for i, n in enumerate((9, 17, 5, 30))]
    step = BesideReference(bundle, device, NUM_BLOCKS, BLOCK_SIZE).step
    for s, seq in enumerate(seqs):  # each prompt but its last token
        step([ScheduledChunk(s, 0, tuple(seq[:-1]))])
    device._driver.calls.clear()
    got, want = step([ScheduledChunk(s, len(seq) - 1, (seq[-1],)) for s, seq in enumerate(seqs)])
    assert ("capture", len(program.prefill_launches)) in device._driver.calls  # the prefill list's graph
    formats = {t.format for t in bundle.layout.tensors}
    rounding = np.stack([prefill_rounding(model, formats, seq, target)[-1] for seq in seqs])
    ok, msg = device_bounds(model, got, want, rounding=rounding)
    print(msg)
    assert ok, msg


@pytest.mark.parametrize("target", [pytest.param(TARGET, marks=toolchain_marks(TARGET))])
@pytest.mark.parametrize("wide", [True, False])
def test_one_token_twins_round_a_wide_row_in_one_pass_bit_for_bit(target, wide, tmp_path, monkeypatch):
    """A 4608-wide FFN down projection (float input, rounded by each block): its blocks of 8
    tokens round their rows 2048 columns at a time, its one-token twin all 4608 at once in the
    same shared memory (gpu_plan._one_token_chunk; with ONE_TOKEN_WIDE_CHUNK off, 2048 too). A
    lane walks the same sub-blocks in the same order either way, so one-token steps (the one-token
    list) give the per-op path's logits (blocks of 8) bit for bit; a twin whose lanes walked them
    in another order would not (2.4e-7 off with chunks of 2560)."""
    from rfc.compiler.codegen import gpu_glu_handoff, gpu_plan
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile

    monkeypatch.setattr(gpu_plan, "ONE_TOKEN_WIDE_CHUNK", wide)
    # (the one-token list's down matmul reads its input rounded by gate/up where that hand-off is on:
    # test_one_token_gate_up_rounds_for_the_down_matmul_bit_for_bit; here it rounds its float input)
    monkeypatch.setattr(gpu_glu_handoff, "GLU_Q8_DOWN", False)

    gguf = tmp_path / "wide-down.gguf"
    make_gguf(gguf, "--format", "Q4_0", "--dim", "256", "--layers", "1", "--ffn", "4608",
               "--heads", "4", "--kv-heads", "2", "--vocab", "512")  # fmt: skip
    out = tmp_path / "bundle"
    emulator_compile(CompileOptions(model=gguf, out_dir=out, targets=(target,), cache_dir=tmp_path / "cache"))
    source = (out / "kernels" / target / "rfc.hip").read_text()
    twins = Twins(out, tmp_path / "emu")
    single = twins.step.runner.launches_for(1)
    (down,) = [x.kernel for x in single if re.fullmatch(r"rfc_matmul_\w+_256x4608_t1", x.kernel)]

    def shared_quants(kernel: str) -> str:
        body = source[source.index(f"void {kernel}(") :]
        return re.search(r"int xq_s\[([^\]]+)\]", body).group(1)

    assert shared_quants(down) == ("1 * 4608 / 4" if wide else "1 * 2048 / 4")
    assert shared_quants(down.removesuffix("_t1")) == "8 * 2048 / 4"
    prompt = (5, 17, 33, 2, 9, 41, 7, 300, 12, 8, 19)
    got, want = twins.forward([ScheduledChunk(1, 0, prompt)])
    assert np.array_equal(got, want)
    for i in range(3):
        got, want = twins.forward([ScheduledChunk(1, len(prompt) + i, (int(want[-1].argmax()),))])
        assert np.array_equal(got, want), f"decode step {i}: max |step - op| {np.abs(got - want).max():.3e}"


@pytest.mark.parametrize(
    "target,dim,per_group",
    [
        pytest.param("gfx90a", 2048, 8, marks=toolchain_marks("gfx90a")),
        pytest.param("sm_90", 1024, 4, marks=toolchain_marks("sm_90") + [pytest.mark.exhaustive]),
        # 64 rows a block (4 lanes a 128-wide row), two sub-blocks rounded by each block, over 352 rows: the last
        # block holds one (a read past its rows would round the next token's first, the same values)
        pytest.param("gfx1100", 128, 1, marks=toolchain_marks("gfx1100")),
    ],
)  # gate/up rows a block: 256 threads over lanes of min(wave, sub-blocks a row) (gpu_plan._int8_tiling): 4 on
# gfx90a's 64-lane waves at 2048 columns, a wave's two 32-lane groups rounding different tokens. The fixtures'
# (256 wide: 32 rows a block, each rounding its own) on sm_90 and gfx1100 in
# test_one_token_steps_run_the_one_token_list_bit_for_bit; exhaustive: sm_90 at 1024 columns (8 rows a block, the
# same template code; 14 s a run)
def test_gate_up_rounds_for_the_down_matmul_bit_for_bit(target, dim, per_group, tmp_path):
    """The decode and one-token lists' gate/up + SwiGLU launch rounds its outputs per 32 rows for
    the down matmul, whose launch reads them rounded (gpu_glu_handoff.py). Where a block holds
    fewer than 32 rows the last of the `per_group` blocks of each 32 to arrive rounds them, the
    others having written theirs. A 7-token prompt and steps of two sequences (the decode list's
    blocks of 8 tokens) and one-token steps still give the per-op path's logits (the down matmul
    rounding its float input in every block) bit for bit, and the counts are left at zero. A
    count that let an earlier block round would read rows not yet written (the emulator runs a
    launch's blocks in order over NaN-filled memory)."""
    from rfc.compiler.codegen import gpu_glu_handoff
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile

    gguf = tmp_path / "glu.gguf"
    fmt, ffn = ("Q4_K", "256") if dim % 256 == 0 else ("Q8_0", "352")
    make_gguf(gguf, "--format", fmt, "--dim", str(dim), "--layers", "2", "--ffn", ffn,
              "--heads", "4", "--kv-heads", "2", "--vocab", "512")  # fmt: skip
    out = tmp_path / "bundle"
    emulator_compile(CompileOptions(model=gguf, out_dir=out, targets=(target,), cache_dir=tmp_path / "cache"))
    source = next((out / "kernels" / target).glob("rfc.*[pu]")).read_text()  # rfc.hip, rfc.cu
    twins = Twins(out, tmp_path / "emu", target=target)
    runner = twins.step.runner
    for tokens, reader in ((1, "_t1_q8in"), (2, "_q8in")):
        launches = runner.launches_for(tokens)
        rounding = [i for i, x in enumerate(launches) if x.kernel.endswith(gpu_glu_handoff.PRODUCER_SUFFIX)]
        assert len(rounding) == 2 and all(launches[i + 1].kernel.endswith(reader) for i in rounding)
        assert all(launches[i + 1].args[1].ref == gpu_glu_handoff.GLU_Q8_SCRATCH for i in rounding)
        producer = source[source.index(f"void {launches[rounding[0]].kernel}(") :]
        producer = producer[: producer.index("// generated by")]
        assert ("RFC_DEVICE_ATOMIC_ADD(count, 1) == " + str(per_group - 1) in producer) == (per_group > 1)
    a, b = (5, 17, 33, 2, 9, 41, 7), (100, 3, 77)
    got, want = twins.forward([ScheduledChunk(1, 0, a)])
    assert np.array_equal(got, want)
    got, want = twins.forward([ScheduledChunk(2, 0, b)])
    assert np.array_equal(got, want)
    n, m = len(a), len(b)
    for i in range(2):  # one token, then two sequences' tokens
        got, want = twins.forward([ScheduledChunk(1, n, (int(want[-1].argmax()),))])
        assert np.array_equal(got, want), f"one-token step {i}: max |step - op| {np.abs(got - want).max():.3e}"
        got, want = twins.forward([ScheduledChunk(1, n + 1, (3 + i,)), ScheduledChunk(2, m, (9 + i,))])
        assert np.array_equal(got, want), f"two-token step {i}: max |step - op| {np.abs(got - want).max():.3e}"
        n, m = n + 2, m + 1
    counts = runner.program.arena.slot("attention.arrivals")
    left = np.empty(counts.nbytes // 4, np.int32)
    twins.step._driver.copy_to_host(left, runner.arena + counts.offset)
    assert not left.any(), "a launch left counts behind"


def _compile(model: str, target: str, out_dir, cache_dir) -> None:
    """Compiles fixture `model` for `target` into out_dir with the codegen constants as they are set now."""
    from rfc.compiler.pipeline import CompileOptions
    from tests.kernels.gpu_support import emulator_compile
    from tests.kernels.gpu_support import model_path

    emulator_compile(CompileOptions(model=model_path(model), out_dir=out_dir, targets=(target,), cache_dir=cache_dir))


def _prompt_on_each(bundle_dirs, target: str, tokens: tuple, tmp_path_factory):
    """Each bundle's logits for one prompt of `tokens` (every row's) on the emulated step device,
    the programs, and the batch."""
    emu_dir = shared_basetemp(tmp_path_factory) / "gpu-emu"
    logits, programs = [], []
    for bundle_dir in bundle_dirs:
        bundle = open_bundle(bundle_dir)
        device = emulated_step_device(bundle, target, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE, emu_dir)
        blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
        blocks.allocate(0, len(tokens))
        batch = build_batch([ScheduledChunk(0, 0, tokens, all_logits=True)], blocks)
        logits.append(Executor(bundle.plan, device).forward(batch))
        programs.append(device.runner.program)
    return logits, programs, batch


@pytest.mark.parametrize("model,target", [pytest.param("llama-Q4_K_M", MMA_TARGET, marks=toolchain_marks(MMA_TARGET))])
def test_prefill_list_segments_give_the_per_op_launches_bits(
    model, target, gpu_bundle, gpu_build_cache, tmp_path, tmp_path_factory, monkeypatch
):
    """The prefill list's q, k and v (and q and k where v is in another format: llama-Q4_K_M's
    Q6_K layers), and gate and up, as one segmented int8 tensor-core launch each
    (gpu_imma.IMMA_SEGMENTS), and its SwiGLU rounding its output for the down matmul
    (gpu_plan.GLU_Q8): every logit of a 70-token prompt (a partial tile of tokens) bit for bit
    those of the bundle compiled with both switches off, which launches the matmuls one by one
    and a rounding launch before down; the decode list the same launches. (One bundle for both
    switches: one compile fewer; test_the_activation_rounding_... has GLU_Q8 alone.)"""
    from rfc.compiler.codegen import gpu_imma, gpu_plan

    on_dir = gpu_bundle(model, target)  # compiled (once a session) with the default: segments
    monkeypatch.setattr(gpu_imma, "IMMA_SEGMENTS", False)
    monkeypatch.setattr(gpu_plan, "GLU_Q8", False)
    _compile(model, target, tmp_path / "off", gpu_build_cache)
    tokens = tuple((7 * i + 3) % 500 for i in range(70))
    logits, programs, _batch = _prompt_on_each((on_dir, tmp_path / "off"), target, tokens, tmp_path_factory)
    on, off = programs
    segmented = [launch for launch in on.prefill_launches if launch.kernel.endswith("_segments")]
    assert segmented and not any(launch.kernel.endswith("_segments") for launch in off.prefill_launches)
    sizes = [(len(launch.args) - 2) // 2 for launch in segmented]  # out{i}, q8, weight{i}, n_rows
    assert sorted(set(sizes)) == [2, 3], sizes
    twins = [launch for launch in on.prefill_launches if re.fullmatch(r"rfc_swiglu_\d+_q8", launch.kernel)]
    assert twins and not any(
        launch.kernel.endswith("_q8") and "swiglu" in launch.kernel for launch in off.prefill_launches
    )
    assert len(off.prefill_launches) == len(on.prefill_launches) + sum(n - 1 for n in sizes) + len(twins)
    assert on.launches == off.launches
    assert np.array_equal(logits[0].view(np.uint32), logits[1].view(np.uint32)), (
        f"{np.count_nonzero(logits[0] != logits[1])} logits differ"
    )


@pytest.mark.parametrize(
    "model,target",
    [
        pytest.param(m, t, marks=toolchain_marks(t) + ([] if t == "gfx90a" else [pytest.mark.exhaustive]))
        for m, t in (("llama-Q4_K_M", MMA_TARGET), ("gemma3-Q8_0", MMA_TARGET), ("llama-Q8_0", "gfx90a"))
    ],
)  # a wave of 64 (the rounding by 32 threads of a wave's half); exhaustive: SwiGLU on sm_90 is
# test_prefill_list_segments_give_the_per_op_launches_bits's, GeGLU's the same rounding code
def test_the_activation_rounding_for_the_down_matmul_gives_the_rounding_launchs_bits(
    model, target, gpu_bundle, gpu_build_cache, tmp_path, tmp_path_factory, monkeypatch
):
    """The prefill list's gated activation before the FFN's down projection rounds its output
    for that int8 tensor-core matmul itself (gpu_plan.GLU_Q8, no float row written where nothing
    else reads it): every logit of a 70-token prompt bit for bit those of the bundle compiled with
    the switch off (activation, rounding launch, matmul), a rounding launch fewer a layer, and
    the decode lists the same launches."""
    from rfc.compiler.codegen import gpu_plan

    on_dir = gpu_bundle(model, target)
    monkeypatch.setattr(gpu_plan, "GLU_Q8", False)
    _compile(model, target, tmp_path / "off", gpu_build_cache)
    tokens = tuple((5 * i + 11) % 500 for i in range(70))
    logits, programs, _batch = _prompt_on_each((on_dir, tmp_path / "off"), target, tokens, tmp_path_factory)
    on, off = programs
    twin = re.compile(r"rfc_(?:swiglu|glu)_\w+_q8(?:_\d+)?")
    twins = [i for i, launch in enumerate(on.prefill_launches) if twin.fullmatch(launch.kernel)]
    assert twins and not any(twin.fullmatch(launch.kernel) for launch in off.prefill_launches)
    # each twin's next launch is the down projection's tensor-core matmul, with no rounding launch between
    assert all(on.prefill_launches[i + 1].kernel.startswith("rfc_matmul_imma_") for i in twins)
    assert len(off.prefill_launches) == len(on.prefill_launches) + len(twins)
    assert on.launches == off.launches and on.single_launches == off.single_launches
    assert np.array_equal(logits[0].view(np.uint32), logits[1].view(np.uint32)), (
        f"{np.count_nonzero(logits[0] != logits[1])} logits differ"
    )


@pytest.mark.parametrize(
    "model,target",
    [
        pytest.param("llama-Q4_K_M", MMA_TARGET, marks=toolchain_marks(MMA_TARGET)),
        pytest.param("llama-Q8_0", "gfx90a", marks=toolchain_marks("gfx90a") + [pytest.mark.exhaustive]),
    ],
)
def test_split_k_matmuls_keep_the_prefill_logits_within_bounds(
    model, target, gpu_bundle, gpu_build_cache, tmp_path, tmp_path_factory, monkeypatch
):
    """gpu_imma.IMMA_SPLIT_K (off by default): the down matmuls (K = 768, three chunks of the small
    tile, so three splits of one chunk each with the threshold lowered to 768) launch three blocks
    a tile, each over its chunk into a partial row, and then the launch that adds the partials in
    order into the output; a 70-token prompt's logits within the bounds of the reference device
    (another order of sums than the unsplit build's, so not its bits, but within 2% of them
    relative to the largest logit), the decode lists the same launches."""
    from rfc.compiler.codegen import gpu_imma
    from rfc.runtime.devices.reference import ReferenceDevice
    from tests.bounds import device_bounds
    from tests.kernels.gpu_support import prefill_rounding

    plain_dir = gpu_bundle(model, target)
    monkeypatch.setattr(gpu_imma, "IMMA_SPLIT_K", 3)
    monkeypatch.setattr(gpu_imma, "IMMA_SPLIT_MIN_K", 768)
    _compile(model, target, tmp_path / "split", gpu_build_cache)
    tokens = tuple((5 * i + 11) % 500 for i in range(70))
    logits, programs, batch = _prompt_on_each((tmp_path / "split", plain_dir), target, tokens, tmp_path_factory)
    split, plain = programs
    names = [launch.kernel for launch in split.prefill_launches]
    reduce = [i for i, n in enumerate(names) if n.startswith("rfc_splitk_reduce_")]
    layers = sum(n.startswith("rfc_attention_") for n in names)
    assert len(reduce) == layers and all(re.fullmatch(r"rfc_matmul_imma_\w+x768_k3", names[i - 1]) for i in reduce)
    assert not any(n.startswith("rfc_splitk_reduce_") for n in (launch.kernel for launch in plain.prefill_launches))
    # the reduction reads the partials slot and writes the down matmul's output
    for i in reduce:
        down = split.prefill_launches[i - 1]
        assert down.args[0] == ArgSlot(ArgKind.ARENA, gpu_imma.SPLIT_SCRATCH)
        assert split.prefill_launches[i].args[:2] == (
            plain.prefill_launches[plain_index(plain, down)].args[0],
            ArgSlot(ArgKind.ARENA, gpu_imma.SPLIT_SCRATCH),
        )
    assert split.launches == plain.launches
    assert split.arena.slot(gpu_imma.SPLIT_SCRATCH).nbytes == 3 * split.arena.max_tokens * 256 * 4
    got, unsplit = logits
    assert not np.array_equal(got, unsplit)
    # (float sums in another order flip an int8 rounding of a later layer's input now and then:
    # within 2%; dropping a partial is 45%)
    assert float(np.abs(got - unsplit).max()) < 0.02 * float(np.abs(unsplit).max())
    bundle = open_bundle(tmp_path / "split")
    ref = Executor(bundle.plan, ReferenceDevice(bundle, bundle.plan.kv, NUM_BLOCKS, BLOCK_SIZE)).forward(batch)
    formats = {t.format for t in bundle.layout.tensors}
    ok, msg = device_bounds(model, got, ref, rounding=prefill_rounding(model, formats, tokens, target))
    assert ok, msg


def plain_index(program, launch) -> int:
    """The index in `program`'s prefill list of the unsplit launch of split matmul `launch`."""
    name = launch.kernel.removesuffix("_k3")
    return next(
        i
        for i, other in enumerate(program.prefill_launches)
        if other.kernel == name and other.args[1:] == launch.args[1:]
    )
