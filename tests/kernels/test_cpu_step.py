"""The cpu step program: what the lowering decides (fusions, barriers) and the step device
against the per-op kernels and the reference on a real fixture.

The device tests compare against the kit's CpuOpDevice (tests/kernels/kit/cpu.py: the same
library's exported kernels, the plan interpreted op by op in Python) and against the numpy reference: the step program
reuses the kernels' building blocks, so it must give the op device's logits up to float
summation order (row tiles are handed out dynamically; each output element is still
computed by one thread in one order, so the results are in fact identical).
"""

from __future__ import annotations

import ctypes
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.program import STEP_ARGS, unpack_program
from rfc.compiler.codegen import cpu, cpu_step
from rfc.compiler.codegen.cpu_step import Phase, with_barriers
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.cpu_step import StepArgs
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.engine.assemble import LoadOptions, load_model
from tests.conftest import FIXTURES
from tests.kernels.kit.cpu import CpuOpDevice

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(
        shutil.which(cpu.CC) is None, reason=f"the cpu kernels need a C compiler ('{cpu.CC}' not found)"
    ),
]

MODEL = FIXTURES / "tiny-llama-Q4_0.gguf"


@pytest.fixture(scope="module")
def bundle(bundle_cache) -> Path:
    """MODEL's bundle, its cpu library with the per-op exports the kit's CpuOpDevice calls."""
    if not MODEL.exists():
        pytest.skip(f"fixture {MODEL} missing")
    return bundle_cache(MODEL, op_exports=True)


@pytest.fixture(scope="module")
def shipped(bundle_cache) -> Path:
    """MODEL's bundle as `rfc compile` writes it."""
    if not MODEL.exists():
        pytest.skip(f"fixture {MODEL} missing")
    return bundle_cache(MODEL)


def test_a_bundle_exports_what_the_runtime_calls_alone(shipped, bundle):
    """A bundle's library exports the step entries, their sizes and ABI and the sampler (each op's
    kernel is static there, built only as the step inlines it); with op_exports, the kernels too."""
    runtime = {"rfc_step", "rfc_step_hidden", "rfc_step_abi_version", "rfc_step_arena_alignment",
               "rfc_step_args_bytes", "rfc_step_arena_bytes", "rfc_sample_row", "rfc_sample_logprobs",
               "rfc_kernels_init", "rfc_abi_version"}  # fmt: skip
    exported = _exports(shipped / "kernels/cpu" / cpu.LIBRARY)
    assert exported == runtime
    kit = _exports(bundle / "kernels/cpu" / cpu.LIBRARY)
    assert runtime < kit and {"rfc_add", "rfc_rmsnorm", "rfc_matmul_q4_0x8", "rfc_attention", "rfc_rope"} <= kit


def test_the_entries_share_one_copy_of_the_layers(shipped):
    """rfc_step and rfc_step_hidden part after the last layer: the source holds one OpenMP team
    of the step (rfc_step_run), the layers' loop once, and each entry its own case and a
    one-line wrapper (a whole copy per entry doubled the C compile)."""
    source = (shipped / "kernels/cpu" / cpu.SOURCE).read_text()
    assert source.count("#pragma omp parallel num_threads(n_threads)") == 1
    assert source.count("for (int L = 0; L <") == 1
    for i, entry in enumerate((cpu.STEP_ENTRY, cpu.HIDDEN_ENTRY)):
        assert f"RFC_EXPORT int {entry}(const rfc_step_args *a) {{ return rfc_step_run(a, {i}); }}" in source
        assert f"        case {i}: /* {entry}: " in source


def test_shared_prefix_is_where_the_entries_part():
    a, b, c = {"kind": "a"}, {"kind": "b"}, {"kind": "c"}
    assert cpu._shared_prefix([[a, b, c], [a, b]]) == 2
    assert cpu._shared_prefix([[a, b, c], [a, c, c], [a, b]]) == 1
    assert cpu._shared_prefix([[a, b], [a, b]]) == 2  # an encoder's entries: the same phases
    assert cpu._shared_prefix([[b], [a]]) == 0


def _exports(library: Path) -> set[str]:
    """The functions a shared library's dynamic symbol table defines (`nm -D --defined-only`)."""
    proc = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in proc.stdout.splitlines() if line.split()[1:2] == ["T"]}


def test_generated_source_compiles_without_warnings(shipped, tmp_path):
    """The bundle's C sources (the model's and the sampler's), built with the command its
    manifest records, draw no warning from the compiler (gcc flagged the in-place SwiGLU's
    scalar tail with "iteration ... invokes undefined behavior" until its vector loop was
    bounded by n - n % 8) and give the bundle's library byte for byte (the compiler links the
    sampler's object, built once per target, into each model's library)."""
    b = open_bundle(shipped)
    entry = next(t for t in b.manifest["targets"] if t["name"] == "cpu")
    command = shlex.split(entry["compile_command"])
    assert [Path(s).name for s in entry["sources"]] == [cpu.SOURCE, cpu.SAMPLER_SOURCE]
    for source in entry["sources"]:
        shutil.copy(shipped / source, tmp_path / Path(source).name)
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / cpu.LIBRARY).read_bytes() == (shipped / entry["kernels"]).read_bytes()


# -- the lowering ------------------------------------------------------------------------------


def test_barriers_only_at_dependencies():
    phases = [
        Phase("a", {}, {"x"}, {"q"}),
        Phase("b", {}, {"x"}, {"k"}),  # independent of a: no barrier
        Phase("c", {}, {"q", "k"}, {"att"}),  # reads what a and b wrote: barrier
        Phase("d", {}, {"y"}, {"q"}),  # writes what c read: barrier (write after read)
        Phase("e", {}, {"z"}, {"w"}),  # independent: none
    ]
    out, n = with_barriers(phases)
    assert [p["kind"] for p in out] == ["a", "b", "barrier", "c", "barrier", "d", "e"]
    assert n == 2


def test_lowering_fuses_and_counts_barriers(bundle):
    b = open_bundle(bundle)
    plan = b.plan
    entries = b.layout.by_name()
    refs, _, _ = cpu.vector_refs(plan, entries)
    low = cpu_step.lower(plan, entries, refs, plan.output_logits)
    kinds = [p["kind"] for p in low.phases]
    n_layers = plan.kv.n_layers
    runs = [p for p in low.phases if p["kind"] == "mm_run"]
    # per layer: QKV (3 segments), attn_output (+ residual), gate/up (2 segments), down (+ residual); lm head
    assert len(runs) == 4 * n_layers + 1
    assert [len(p["segs"]) for p in runs[:4]] == [3, 1, 2, 1]
    assert runs[1]["segs"][0]["accum"] >= 0 and runs[3]["segs"][0]["accum"] >= 0
    assert "add" not in kinds and "swiglu" not in kinds and "kv_write" not in kinds
    assert kinds.count("rmsnorm") == 0  # every norm runs in its matmul's quantization phase
    assert all(p["layer"] >= 0 for p in low.phases if p["kind"] == "rope")  # rope + KV write
    # after embed; per layer before each of: QKV run, rope+kv, attention, quantize, run, (norm+)quantize, run,
    # (swiglu+)quantize, run, and the next layer's (norm+)quantize; before the lm head's run
    assert low.barriers == 1 + 10 * n_layers + 2
    program = unpack_program((bundle / "kernels/cpu/program.msgpack").read_bytes())
    assert program.entry == cpu.STEP_ENTRY and program.extra["barriers"] == low.barriers


def test_argument_struct_is_the_one_step_args_describes(bundle):
    lib = ctypes.CDLL(str(bundle / "kernels/cpu" / cpu.LIBRARY))
    lib.rfc_step_args_bytes.restype = ctypes.c_size_t
    assert lib.rfc_step_args_bytes() == ctypes.sizeof(StepArgs) == 8 * len(STEP_ARGS)


# -- the device --------------------------------------------------------------------------------


def _batch(blocks: BlockManager, steps: list[tuple[int, int, int]], tokens: np.ndarray):
    for seq, start, n in steps:
        blocks.allocate(seq, start + n)
    return build_batch([ScheduledChunk(s, st, tuple(int(t) for t in tokens[st : st + n]), all_logits=True)
                        for s, st, n in steps],
                       blocks)  # fmt: skip


def _step_equals_per_op(bundle, threads: int):
    """A 20-token prefill, then mixed decode/prefill steps of two sequences, on the step
    device and on the op-by-op kernels: the logits agree exactly. Returns (the step model, the tokens)."""
    lm = load_model(bundle, LoadOptions(device="cpu"))
    blocks = lm.kv_pool.manager()
    step = lm.executor.device
    step.n_threads = threads
    ops = CpuOpDevice(lm.bundle, step.target, lm.bundle.plan.kv, blocks.num_blocks, blocks.block_size)
    op_exec = Executor(lm.bundle.plan, ops)
    op_blocks = BlockManager(blocks.num_blocks, blocks.block_size)
    tokens = np.random.default_rng(threads).integers(0, lm.bundle.plan.vocab_size, 64)
    for steps in ([(0, 0, 20)], [(0, 20, 1), (1, 0, 9)], [(1, 9, 1), (0, 21, 1)]):
        got = lm.executor.forward(_batch(blocks, steps, tokens))
        want = op_exec.forward(_batch(op_blocks, steps, tokens))
        np.testing.assert_array_equal(got, want)
    return lm, blocks, tokens


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_step_program_equals_the_per_op_kernels(bundle, threads):
    """Prefill (many tokens: the packed matmul), then mixed decode/prefill steps of two
    sequences (the single-token paths): the step device and the op device agree exactly."""
    lm, blocks, tokens = _step_equals_per_op(bundle, threads)
    hidden = lm.executor.forward_hidden(_batch(blocks, [(0, 22, 2)], tokens))
    assert hidden.shape == (2, lm.bundle.plan.n_embd) and np.isfinite(hidden).all()


def test_step_refuses_a_token_outside_the_vocabulary(bundle):
    lm = load_model(bundle, LoadOptions(device="cpu"))
    blocks = lm.kv_pool.manager()
    blocks.allocate(0, 3)
    vocab = lm.bundle.plan.vocab_size
    batch = build_batch([ScheduledChunk(0, 0, (1, vocab, 2))], blocks)
    with pytest.raises(DeviceError, match=f"token id {vocab} is outside the vocabulary"):
        lm.executor.forward(batch)


def test_arena_grows_with_the_step(bundle):
    """A step larger than the program's recorded arena still runs: the entry lays the arena
    out for the step's own T and R, and the device sizes it."""
    lm = load_model(bundle, LoadOptions(device="cpu"))
    blocks = lm.kv_pool.manager()
    n = min(600, lm.bundle.plan.context_length)
    blocks.allocate(0, n)
    tokens = tuple(int(t) for t in np.random.default_rng(0).integers(0, lm.bundle.plan.vocab_size, n))
    logits = lm.executor.forward(build_batch([ScheduledChunk(0, 0, tokens, all_logits=True)], blocks))
    assert logits.shape == (n, lm.bundle.plan.vocab_size) and np.isfinite(logits).all()


def test_cpu_bundles_store_matmul_weights_repacked(bundle):
    """Every target is a cpu variant: matmul-only weights are stored in their packed layout
    (the reference decodes it); the embedding table, which no matmul reads in this untied
    model, keeps the GGUF layout (a tied one is repacked: tests/unit/test_gpu_layout.py)."""
    from rfc.artifacts.formats import Kernels, target_layout
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.spec import build_spec
    from rfc.compiler.targets import parse_targets
    from rfc.compiler.weight_plan import plan_weights

    entries = open_bundle(bundle).layout.by_name()
    assert entries["token_embd.weight"].format == "Q4_0"
    matmul = {w for op in open_bundle(bundle).plan.ops if op.kind == "matmul" for w in op.weights}
    blocks = {w for w in matmul if w.startswith("blk.")}
    assert blocks and all(entries[w].format == target_layout("Q4_0", Kernels.CPU).name for w in blocks)
    assert entries["output.weight"].format == target_layout("Q6_K", Kernels.CPU).name  # Q6_Kx8
    spec = build_spec(read_gguf(MODEL))
    assert {u.name for u in plan_weights(spec, parse_targets(("cpu",))).uses if u.packed} == blocks | {"output.weight"}


def test_a_bundle_with_a_gpu_target_still_repacks_for_the_cpu():
    """A cpu + GPU bundle stores the cpu's packed layouts under the plan's names (the GPU
    target reads variant entries of its own: tests/unit/test_gpu_layout.py)."""
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.spec import build_spec
    from rfc.compiler.targets import parse_targets
    from rfc.compiler.weight_plan import plan_weights

    spec = build_spec(read_gguf(MODEL))
    cpu_only = plan_weights(spec, parse_targets(("cpu", "cpu-avx512"))).uses
    assert any(u.packed for u in cpu_only)
    mixed = plan_weights(spec, parse_targets(("cpu", "gfx1100"))).uses
    assert mixed[: len(cpu_only)] == cpu_only and all("#" in u.name for u in mixed[len(cpu_only) :])


# -- the newer architectures ---------------------------------------------------------------------

ARCH_MODELS = ["tiny-qwen3-Q8_0", "tiny-gemma2-Q8_0", "tiny-gemma3-F16"]


@pytest.mark.parametrize("name", ARCH_MODELS)
def test_step_program_equals_the_per_op_kernels_for(name, bundle_cache):
    """Per-head Q/K norms, embedding scale, GeGLU, post-norms, sliding windows (32: crossed
    here), soft-capped attention and logits, per-layer rope bases: the step program gives the
    per-op kernels' logits exactly, prefill and decode."""
    path = FIXTURES / f"{name}.gguf"
    if not path.exists():
        pytest.skip(f"fixture {path} missing")
    lm = load_model(bundle_cache(path, op_exports=True), LoadOptions(device="cpu"))
    blocks = lm.kv_pool.manager()
    ops = CpuOpDevice(lm.bundle, lm.executor.device.target, lm.bundle.plan.kv, blocks.num_blocks, blocks.block_size)
    op_exec = Executor(lm.bundle.plan, ops)
    op_blocks = BlockManager(blocks.num_blocks, blocks.block_size)
    tokens = np.random.default_rng(0).integers(0, lm.bundle.plan.vocab_size, 64)
    for steps in ([(0, 0, 40)], [(0, 40, 1), (1, 0, 9)], [(1, 9, 1), (0, 41, 1)]):
        got = lm.executor.forward(_batch(blocks, steps, tokens))
        want = op_exec.forward(_batch(op_blocks, steps, tokens))
        np.testing.assert_array_equal(got, want)


def test_lowering_of_per_layer_attributes(bundle_cache):
    """gemma3: two rope tables (local and global bases), windows only on the local layers,
    per-head norms as phases of their own; llama's fusions stay."""
    path = FIXTURES / "tiny-gemma3-Q8_0.gguf"
    if not path.exists():
        pytest.skip(f"fixture {path} missing")
    b = open_bundle(bundle_cache(path))
    plan, entries = b.plan, b.layout.by_name()
    low = cpu_step.lower(plan, entries, cpu.vector_refs(plan, entries)[0], plan.output_logits)
    ropes = [p for p in low.phases if p["kind"] == "rope"]
    assert {p["variant"] for p in ropes} == {0, 1} and len(cpu_step.rope_variants(plan)) == 2
    windows = [p["window"] for p in low.phases if p["kind"] == "attention"]
    assert windows == [32 if i % 6 < 5 else 0 for i in range(plan.kv.n_layers)]
    assert sum(p["kind"] == "rmsnorm_heads" for p in low.phases) == 2 * plan.kv.n_layers
    quantize = [p for p in low.phases if p["kind"] == "mm_quantize"]
    assert [p["pro"]["kind"] for p in quantize[:4]] == ["rmsnorm", "none", "rmsnorm", "swiglu"]
    assert quantize[3]["pro"]["fn"] == "rfc_geglu_span"


def test_step_program_refuses_attribute_values_outside_float32():
    from rfc.compiler.errors import CompileError

    with pytest.raises(CompileError, match="outside the float32 range"):
        cpu_step.f32_literal(1e-300, "attention softcap")


# -- mixture of experts (tiny-mixtral: 4 experts, 2 per token) ---------------------------------

MOE_MODEL = FIXTURES / "tiny-mixtral-Q4_K_M.gguf"


@pytest.fixture(scope="module")
def moe_bundle(bundle_cache) -> Path:
    if not MOE_MODEL.exists():
        pytest.skip(f"fixture {MOE_MODEL} missing")
    return bundle_cache(MOE_MODEL, op_exports=True)


def test_moe_lowering_groups_and_fuses(moe_bundle):
    """Per layer: the router runs as its matmul's own phase, then moe_route (+ the grouping),
    gate and up as one expert matmul of two segments, swiglu inside the down matmul's
    gather, and moe_combine adding the residual. Q4_K expert tensors (rows whole groups of 8)
    are repacked for the cpu (Q4_Kx8); Q6_K ones keep their GGUF layout (Q6_Kx8 takes matmul
    weights only)."""
    b = open_bundle(moe_bundle)
    entries = b.layout.by_name()
    refs, _, _ = cpu.vector_refs(b.plan, entries)
    low = cpu_step.lower(b.plan, entries, refs, b.plan.output_logits)
    kinds = [p["kind"] for p in low.phases]
    n_layers = b.plan.kv.n_layers
    assert kinds.count("moe_route") == kinds.count("moe_combine") == n_layers
    quantize = [p for p in low.phases if p["kind"] == "moe_quantize"]
    assert [len(p["segs"]) for p in quantize[:2]] == [2, 1]
    assert quantize[0]["per_slot"] == 0 and quantize[0]["up"] == -1
    assert quantize[1]["per_slot"] == 1 and quantize[1]["up"] >= 0  # swiglu(gate, up) in the gather
    assert all(p["accum"] >= 0 for p in low.phases if p["kind"] == "moe_combine")
    assert "swiglu" not in kinds and "add" not in kinds
    experts = [w for op in b.plan.ops if op.kind == "moe_matmul" for w in op.weights]
    assert experts and all(entries[w].format in ("Q4_Kx8", "Q6_K") and len(entries[w].shape) == 3 for w in experts)
    assert any(entries[w].format == "Q4_Kx8" for w in experts)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_moe_step_program_equals_the_per_op_kernels(moe_bundle, threads):
    """A 20-token prefill (experts with 8+ tokens take the packed matmul, others the row
    tiles), then mixed steps: the step program and the op-by-op kernels agree exactly."""
    _step_equals_per_op(moe_bundle, threads)
