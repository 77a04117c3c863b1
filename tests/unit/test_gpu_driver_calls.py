"""The CUDA driver layer under the step program, against a recording fake libcuda (a Python
object standing in for the ctypes functions): every call checked, graphs captured once per
decode batch size and replayed, one async copy each way per step, and the pointers written
into each captured launch's parameters are the ones the program names. No GPU, no toolchain:
the program is lowered from a reference-only bundle's plan.
"""

import ctypes
import re
import shutil
import struct
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.program import (
    SAMPLE_FLAG_DEVICE,
    SAMPLE_FLAG_GREEDY,
    SAMPLE_FLAG_LOGPROB,
    SAMPLE_WORDS,
    ArgKind,
    ArgSlot,
)
from rfc.compiler.codegen.gpu_imma import Q8_SCRATCH
from rfc.compiler.codegen.gpu_plan import plan_kernels, plan_program
from rfc.compiler.codegen.gpu_sample import plan_sample_kernel, sample_program_extra
from rfc.compiler.pipeline import CompileOptions, compile_model
from rfc.compiler.targets import parse_target
from rfc.runtime.engine.batch import ScheduledChunk, build_batch
from rfc.runtime.devices import DeviceError, cuda, gpu_program
from rfc.runtime.devices.gpu_program import StepRunner
from rfc.runtime.engine.kv_cache import BlockManager
from rfc.runtime.sampling.sampler import Sampler, SamplingParams
from tests.conftest import FIXTURES
from tests.kernels.kit.gpu import declared_layout

CONFIG_BYTES, ATTR_BYTES = 56, 72  # sizeof(CUlaunchConfig), sizeof(CUlaunchAttribute) on x86-64


class FakeCuda:
    """libcuda as far as the driver layer calls it: host memory for device memory, every
    call recorded as (name, args); `fail` makes one function return an error."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.fail: str | None = None
        self._keep = []
        self.capturing = False
        self.captured: list[list[int]] = []  # per captured launch: its parameter words
        self.configs: list[tuple] = []  # per cuLaunchKernelEx: (grid, block, shared, stream, [(attr id, value)])

    def __getattr__(self, name):
        if not name.startswith("cu"):
            raise AttributeError(name)

        def call(*args):
            self.calls.append((name, args))
            if name == self.fail:
                return 700  # CUDA_ERROR_ILLEGAL_ADDRESS
            handler = getattr(self, "_" + name, None)
            return handler(*args) if handler else 0

        return call

    def _out(self, ref, value):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_uint64))[0] = value

    def _cuMemAlloc_v2(self, ref, nbytes):
        buf = ctypes.create_string_buffer(int(getattr(nbytes, "value", nbytes)))
        self._keep.append(buf)
        self._out(ref, ctypes.addressof(buf))
        return 0

    _cuMemAllocHost_v2 = _cuMemAlloc_v2

    def _cuStreamCreate(self, ref, flags):
        self._out(ref, 0x5151)
        return 0

    def _cuStreamBeginCapture_v2(self, stream, mode):
        self.capturing = True
        return 0

    def _cuStreamEndCapture(self, stream, ref):
        self.capturing = False
        self._out(ref, 0x6000 + len(self.calls))
        return 0

    def _cuGraphInstantiateWithFlags(self, ref, graph, flags):
        self._out(ref, 0x7000 + len(self.calls))
        return 0

    def _cuLaunchKernel(self, fn, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        if self.capturing:
            self.captured.append(
                [ctypes.cast(params[i], ctypes.POINTER(ctypes.c_uint64))[0] for i in range(len(params))]
            )
        return 0

    def _cuLaunchKernelEx(self, config, fn, params, extra):
        """The configuration read as the C library reads it: CUlaunchConfig's bytes at the offsets
        cuda.h gives them (test_launch_config_matches_cuda_h checks those against the header)."""
        raw = ctypes.string_at(ctypes.addressof(config._obj), CONFIG_BYTES)
        grid, block = struct.unpack_from("<3I", raw, 0), struct.unpack_from("<3I", raw, 12)
        (shared,) = struct.unpack_from("<I", raw, 24)
        stream, attrs, n_attrs = struct.unpack_from("<QQI", raw, 32)
        # an attribute: its id (an int padded to 8 bytes), then the value union, whose first int is the flag
        attributes = [struct.unpack_from("<i4xi", ctypes.string_at(attrs + ATTR_BYTES * i, 12)) for i in range(n_attrs)]
        self.configs.append((grid, block, shared, stream, attributes))
        return self._cuLaunchKernel(fn, *grid, *block, shared, stream, params, extra)

    def _cuMemcpyHtoDAsync_v2(self, dst, src, nbytes, stream):
        ctypes.memmove(dst, src, nbytes)  # "device" memory is host memory here
        return 0

    def _cuMemcpyDtoHAsync_v2(self, dst, src, nbytes, stream):
        ctypes.memmove(dst, src, nbytes)
        return 0

    def _cuGetErrorName(self, status, ref):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_char_p))[0] = b"CUDA_ERROR_ILLEGAL_ADDRESS"
        return 0

    def _cuGetErrorString(self, status, ref):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_char_p))[0] = b"an illegal memory access was encountered"
        return 0


def _driver(fake, overlaps: bool = False) -> cuda.CudaDriver:
    driver = cuda.CudaDriver.__new__(cuda.CudaDriver)  # no cuInit/device probing
    driver.lib = fake
    driver.overlaps = overlaps
    return driver


@pytest.fixture(scope="module")
def program_and_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "bundle"
    compile_model(CompileOptions(model=FIXTURES / "tiny-llama-Q4_K_M.gguf", out_dir=out, targets=(), cache_dir=None))
    bundle = open_bundle(out)
    target = parse_target("sm_90")
    specs, op_kernels = plan_kernels(target, bundle.plan, bundle.layout)
    # argument offsets as a cubin lays them out: each argument at its natural alignment
    kernel_args = {s.name: declared_layout(s.args) for s in specs}
    return plan_program(target, bundle.plan, specs, op_kernels), kernel_args, bundle


def _runner(fake, program, kernel_args, bundle, sample=None, pen_per_row=256, overlaps=False):
    entries = bundle.layout.by_name()
    plan = bundle.plan
    return StepRunner(
        _driver(fake, overlaps),
        program,
        kernel_args,
        {k: 0x1000 + i for i, k in enumerate(kernel_args)},
        weight_ptr=lambda name: 0x10_0000_0000 + entries[name].offset,
        kv_ptr=lambda which, layer: (0x20_0000_0000 if which == "k" else 0x30_0000_0000) + layer * 0x100_0000,
        vocab=plan.vocab_size,
        n_embd=plan.n_embd,
        logits=plan.output_logits,
        hidden=plan.output_hidden,
        block_size=16,
        table_width=8,
        sample=sample,
        pen_per_row=pen_per_row,
    )


def _decode_batch(blocks, n: int, start: int):
    chunks = [ScheduledChunk(s, start, (7 + s,)) for s in range(n)]
    for c in chunks:
        blocks.allocate(c.seq_id, c.start + 1)
    return build_batch(chunks, blocks)


def test_decode_steps_capture_once_and_replay(program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    fake = FakeCuda()
    runner = _runner(fake, program, kernel_args, bundle)
    blocks = BlockManager(32, 16)
    fake.calls.clear()
    for step in range(3):
        logits = runner.run(_decode_batch(blocks, 2, step), bundle.plan.output_logits)
        assert logits.shape == (2, bundle.plan.vocab_size)
    names = [c[0] for c in fake.calls]
    launches = len(program.launches)
    assert names.count("cuStreamBeginCapture_v2") == 1 and names.count("cuGraphInstantiateWithFlags") == 1
    assert names.count("cuLaunchKernel") == launches  # all inside the one capture
    assert names.count("cuGraphLaunch") == 3
    assert names.count("cuMemcpyHtoDAsync_v2") == 3 and names.count("cuMemcpyDtoHAsync_v2") == 3
    assert names.count("cuStreamSynchronize") == 3
    assert not {"cuMemAlloc_v2", "cuMemAllocHost_v2", "cuCtxSynchronize", "cuMemcpyHtoD_v2"} & set(names)
    # each step: copy in, replay, copy out, sync, all on the runner's stream
    replay = [
        c
        for c in fake.calls
        if c[0] in ("cuMemcpyHtoDAsync_v2", "cuGraphLaunch", "cuMemcpyDtoHAsync_v2", "cuStreamSynchronize")
    ]
    assert [c[0] for c in replay] == [
        "cuMemcpyHtoDAsync_v2",
        "cuGraphLaunch",
        "cuMemcpyDtoHAsync_v2",
        "cuStreamSynchronize",
    ] * 3
    assert all(c[1][-1].value == 0x5151 for c in replay if c[0] != "cuGraphLaunch")
    h2d = replay[0][1]
    assert (h2d[0], h2d[1]) == (runner._dev_in, runner._host_in)
    assert h2d[2] == runner.stage["block_tables"][0] + 2 * runner.table_width * 4
    d2h = replay[2][1]
    assert d2h[1] == runner.arena + program.arena.slot(bundle.plan.output_logits).offset
    assert d2h[2] == 2 * bundle.plan.vocab_size * 4


def test_captured_parameters_are_the_programs_pointers(program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    fake = FakeCuda()
    runner = _runner(fake, program, kernel_args, bundle)
    runner.run(_decode_batch(BlockManager(32, 16), 3, 0), bundle.plan.output_logits)
    _check_captured(fake, runner, program, kernel_args, bundle)


def _check_captured(fake, runner, program, kernel_args, bundle) -> None:
    """Every captured launch's parameters are the pointers and scalars its program slots name."""
    entries = bundle.layout.by_name()
    assert len(fake.captured) == len(program.launches)
    scalars = {"n_tokens": 3, "n_rows": 3, "table_width": 8, "block_size": 16, "k_type": 0, "v_type": 0}  # f16 caches
    for launch, words in zip(program.launches, fake.captured):
        for slot, word, (name, size, _off) in zip(launch.args, words, kernel_args[launch.kernel]):
            if slot.kind is ArgKind.ARENA:
                want = runner.arena + program.arena.slot(slot.ref).offset
            elif slot.kind is ArgKind.WEIGHT:
                want = 0x10_0000_0000 + entries[slot.ref].offset
            elif slot.kind is ArgKind.BATCH:
                want = runner._dev_in + runner.stage[slot.ref][0]
            elif slot.kind is ArgKind.KV:
                want = (0x20_0000_0000 if slot.ref == "k" else 0x30_0000_0000) + slot.value * 0x100_0000
            else:
                want = scalars[slot.ref]
            got = word & 0xFFFFFFFF if size == 4 else word
            assert got == want, f"{launch.kernel} argument {name}: {got:#x} != {want:#x}"


def test_staged_batch_arrays_land_at_their_offsets(program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    runner = _runner(FakeCuda(), program, kernel_args, bundle)
    batch = _decode_batch(BlockManager(32, 16), 2, 0)
    runner.run(batch, bundle.plan.output_logits)
    host = runner._host_in
    for name in ("tokens", "positions", "slots", "seq_of_token", "logit_rows"):
        off, _n = runner.stage[name]
        arr = getattr(batch, name)
        assert np.array_equal(np.frombuffer(ctypes.string_at(host + off, arr.size * 4), np.int32), arr), name
    off, _n = runner.stage["block_tables"]
    tables = np.frombuffer(ctypes.string_at(host + off, 2 * 8 * 4), np.int32).reshape(2, 8)
    w = batch.block_tables.shape[1]
    assert np.array_equal(tables[:, :w], batch.block_tables) and (tables[:, w:] == -1).all()


def test_a_failing_driver_call_names_itself(program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    fake = FakeCuda()
    runner = _runner(fake, program, kernel_args, bundle)
    fake.fail = "cuGraphLaunch"
    with pytest.raises(DeviceError, match="cuGraphLaunch failed: CUDA_ERROR_ILLEGAL_ADDRESS"):
        runner.run(_decode_batch(BlockManager(32, 16), 1, 0), bundle.plan.output_logits)


def test_every_driver_function_called_has_a_declared_signature():
    """What GpuDriver calls through a dialect, and what each dialect module calls itself."""
    for module in (cuda, __import__("rfc.runtime.devices.hip", fromlist=["hip"])):
        dialect = module.CUDA if module is cuda else module.HIP
        called = dialect.calls.names() | set(re.findall(r"\blib\.(\w+)\(", Path(module.__file__).read_text()))
        missing = called - set(dialect.signatures) - set(dialect.text_signatures)
        assert not missing, f"{module.__name__}: no argtypes for {sorted(missing)}"


# -- sampling on the device -------------------------------------------------------------------------


def _sampling_runner(fake, program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    spec = plan_sample_kernel(parse_target("sm_90"), bundle.plan.vocab_size)
    args = {**kernel_args, spec.name: declared_layout(spec.args)}
    return _runner(fake, program, args, bundle, sample=(0x9999, sample_program_extra(spec))), spec


_STEP_CALLS = (
    "cuMemcpyHtoDAsync_v2",
    "cuGraphLaunch",
    "cuMemcpyDtoHAsync_v2",
    "cuStreamSynchronize",
    "cuLaunchKernel",
    "cuMemAlloc_v2",
    "cuMemAllocHost_v2",
    "cuCtxSynchronize",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
)


def test_device_sampled_decode_steps_are_one_graph_launch(program_and_bundle):
    """Per decode step with device-sampled rows: one copy in (batch, row parameters and
    penalty lists together), one graph launch (the forward pass and the sampling kernel,
    captured once), one copy out (token ids and logprobs, no logits), one sync, no malloc."""
    program, _args, bundle = program_and_bundle
    vocab = bundle.plan.vocab_size
    fake = FakeCuda()
    runner, spec = _sampling_runner(fake, program_and_bundle)
    s = runner.sampling
    blocks = BlockManager(32, 16)
    plain = Sampler(SamplingParams(temperature=0.0), [1, 2], vocab)
    penalized = Sampler(SamplingParams(top_k=5, repetition_penalty=1.2, seed=7), [3, 3, 4], vocab)
    fake.calls.clear()
    for step in range(3):
        out = runner.run_sampled(_decode_batch(blocks, 2, step), [(plain, False), (penalized, True)])
        assert out.logits == {} and out.tokens.shape == (2,)
    names = [c[0] for c in fake.calls]
    assert names.count("cuStreamBeginCapture_v2") == 1 and names.count("cuGraphInstantiateWithFlags") == 1
    # every kernel launch was captured, the sampling kernel last, once
    launches = [c[1] for c in fake.calls if c[0] == "cuLaunchKernel"]
    assert len(launches) == len(program.launches) + 1 == len(fake.captured)
    assert launches[-1][0] == 0x9999 and launches[-1][1:7] == (2, 1, 1, spec.threads, 1, 1)
    step_calls = [c for c in fake.calls if c[0] in _STEP_CALLS and c[0] != "cuLaunchKernel"]
    assert [c[0] for c in step_calls] == [
        "cuMemcpyHtoDAsync_v2",
        "cuGraphLaunch",
        "cuMemcpyDtoHAsync_v2",
        "cuStreamSynchronize",
    ] * 3
    # the copy in: from the step's first penalty pair to its last block-table row
    pen_off, _n = runner.stage["sample_pen"]
    n_pen = 2  # tokens 3 and 4 in the penalized row's window
    first = pen_off + 8 * (s.capacity - n_pen)
    end = runner.stage["block_tables"][0] + 2 * runner.table_width * 4
    assert step_calls[0][1][:3] == (runner._dev_in + first, runner._host_in + first, end - first)
    # the copy out: token id and logprob per row
    assert step_calls[2][1][1:3] == (s._dev_out, 2 * 8)
    # the captured sampling kernel reads the staging's fixed regions
    words = dict(zip([name for name, _kind in spec.args], fake.captured[-1]))
    assert words["params"] == runner._dev_in + runner.stage["sample_params"][0]
    assert words["pen"] == runner._dev_in + pen_off and words["out"] == s._dev_out
    assert words["logits"] == runner.arena + program.arena.slot(bundle.plan.output_logits).offset
    assert words["pen_capacity"] & 0xFFFFFFFF == s.capacity and words["n_rows"] & 0xFFFFFFFF == 2
    # what the kernel reads arrived: the rows' parameters and the penalized row's pairs
    w = {name: i for i, name in enumerate(SAMPLE_WORDS)}
    params = np.frombuffer(ctypes.string_at(words["params"], 2 * len(SAMPLE_WORDS) * 4), np.int32).reshape(2, -1)
    assert params[0, w["flags"]] == SAMPLE_FLAG_DEVICE | SAMPLE_FLAG_GREEDY and params[0, w["pen_count"]] == 0
    assert params[1, w["flags"]] == SAMPLE_FLAG_DEVICE | SAMPLE_FLAG_LOGPROB and params[1, w["top_k"]] == 5
    start, count = int(params[1, w["pen_start"]]), int(params[1, w["pen_count"]])
    assert (start, count) == (s.capacity - n_pen, n_pen)
    pairs = np.frombuffer(ctypes.string_at(words["pen"] + 8 * start, 8 * count), np.int32).reshape(count, 2)
    assert sorted(pairs[:, 0].tolist()) == [3, 4]
    assert dict(zip(pairs[:, 0].tolist(), pairs[:, 1].view(np.float32).tolist())) == {3: 2.0, 4: 1.0}
    # run() replays a forward-only graph of its own: the sampling kernel stays out of it
    fake.calls.clear()
    runner.run(_decode_batch(blocks, 2, 3), bundle.plan.output_logits)
    captured = [c[1][0] for c in fake.calls if c[0] == "cuLaunchKernel"]
    assert len(captured) == len(program.launches) and 0x9999 not in captured


def test_a_host_row_comes_back_as_its_logits(program_and_bundle):
    """A host row in a decode step: the same one copy in and graph launch (the kernel skips
    the row), then the token ids and that row's logits alone, bit for bit; still no malloc."""
    program, _args, bundle = program_and_bundle
    vocab = bundle.plan.vocab_size
    fake = FakeCuda()
    runner, _spec = _sampling_runner(fake, program_and_bundle)
    blocks = BlockManager(32, 16)
    plain = Sampler(SamplingParams(temperature=0.0), [1, 2], vocab)
    runner.run_sampled(_decode_batch(blocks, 3, 0), [(plain, False)] * 3)  # captures the bucket
    logits = runner.arena + program.arena.slot(bundle.plan.output_logits).offset
    want = np.arange(3 * vocab, dtype=np.float32).reshape(3, vocab) / 7  # what the step "wrote"
    ctypes.memmove(logits, want.ctypes.data, want.nbytes)
    fake.calls.clear()
    out = runner.run_sampled(_decode_batch(blocks, 3, 1), [(plain, False), None, None])
    assert sorted(out.logits) == [1, 2]
    assert np.array_equal(out.logits[1], want[1]) and np.array_equal(out.logits[2], want[2])
    step_calls = [c for c in fake.calls if c[0] in _STEP_CALLS]
    assert [c[0] for c in step_calls] == [
        "cuMemcpyHtoDAsync_v2",
        "cuGraphLaunch",
        "cuMemcpyDtoHAsync_v2",
        "cuMemcpyDtoHAsync_v2",
        "cuStreamSynchronize",
    ]
    assert step_calls[2][1][1:3] == (runner.sampling._dev_out, 3 * 8)
    assert step_calls[3][1][1:3] == (logits + vocab * 4, 2 * vocab * 4)  # rows 1 and 2, one run
    assert runner.sampling._params[1, 0] == 0 and runner.sampling._params[2, 0] == 0  # left to the host


def test_all_host_rows_outside_a_graph_skip_the_sampling_kernel(program_and_bundle):
    fake = FakeCuda()
    runner, _spec = _sampling_runner(fake, program_and_bundle)
    blocks = BlockManager(32, 16)
    blocks.allocate(0, 3)
    fake.calls.clear()
    out = runner.run_sampled(build_batch([ScheduledChunk(0, 0, (5, 6, 7))], blocks), [None])  # a prefill: no graph
    assert list(out.logits) == [0]
    assert not [c for c in fake.calls if c[0] == "cuLaunchKernel" and c[1][0] == 0x9999]
    assert [c[0] for c in fake.calls if c[0].startswith("cuMemcpy")] == ["cuMemcpyHtoDAsync_v2", "cuMemcpyDtoHAsync_v2"]


def test_a_penalty_list_over_the_row_budget_goes_to_the_host(program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    vocab = bundle.plan.vocab_size
    spec = plan_sample_kernel(parse_target("sm_90"), vocab)
    fake = FakeCuda()
    runner = _runner(
        fake,
        program,
        {**kernel_args, spec.name: declared_layout(spec.args)},
        bundle,
        sample=(0x9999, sample_program_extra(spec)),
        pen_per_row=2,
    )
    assert runner.sampling.capacity == 2 * runner.max_rows
    small = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.5), [3, 4], vocab)  # 2 entries: fits
    big = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.5), [5, 6, 7], vocab)  # 3: does not
    fake.calls.clear()
    out = runner.run_sampled(_decode_batch(BlockManager(32, 16), 2, 0), [(small, False), (big, False)])
    assert list(out.logits) == [1]
    assert not {"cuMemAlloc_v2", "cuMemAllocHost_v2"} & {c[0] for c in fake.calls}


def test_rows_past_a_capped_penalty_region_go_to_the_host(program_and_bundle, monkeypatch):
    """With the region's total capped below rows * budget, a row whose list no longer fits
    this step is sampled on the host; a row without penalties stays on the device."""
    program, kernel_args, bundle = program_and_bundle
    vocab = bundle.plan.vocab_size
    spec = plan_sample_kernel(parse_target("sm_90"), vocab)
    monkeypatch.setattr(gpu_program, "_MAX_PEN_CAPACITY", 3)
    runner = _runner(
        FakeCuda(),
        program,
        {**kernel_args, spec.name: declared_layout(spec.args)},
        bundle,
        sample=(0x9999, sample_program_extra(spec)),
        pen_per_row=2,
    )
    assert runner.sampling.capacity == 3
    first = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.5), [3, 4], vocab)
    second = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.5), [5, 6], vocab)
    plain = Sampler(SamplingParams(temperature=0.0), [7], vocab)
    out = runner.run_sampled(
        _decode_batch(BlockManager(32, 16), 3, 0), [(first, False), (second, False), (plain, False)]
    )
    assert list(out.logits) == [1]


# -- the prefill list (tensor-core matmuls: half on sm_70 and newer, int8 on sm_80+, gfx908/90a, gfx11)


def _prefill_batch(blocks, n: int):
    chunk = ScheduledChunk(0, 0, tuple(range(3, 3 + n)))
    blocks.allocate(0, n)
    return build_batch([chunk], blocks)


def test_the_program_has_a_prefill_list_of_tensor_core_matmuls(program_and_bundle):
    program, _kernel_args, bundle = program_and_bundle
    # the prefill list: the decode list's launches, matmuls swapped, and before the int8 ones the
    # launch that rounds their input once (gpu_imma.IMMA_PREQUANT)
    rounding = [i for i, p in enumerate(program.prefill_launches) if p.kernel.startswith("rfc_quantize_q8_")]
    paired = [p for i, p in enumerate(program.prefill_launches) if i not in rounding]
    # and the attention on tensor cores (gpu_attention.PREFILL_MMA) in place of the split and its reduction
    decode = [d for i, d in enumerate(program.launches) if not (i and d.kernel.endswith("_reduce"))]
    assert program.prefill_min_tokens == 64 and len(paired) == len(decode) and rounding
    attention = [(d, p) for d, p in zip(decode, paired) if d.kernel.startswith("rfc_attention_")]
    # (the decode list's twin that also rounds its output for the output projection: gpu_fuse.ATTENTION_Q8)
    split = [(d.kernel.removesuffix("_q8"), p) for d, p in attention]
    assert attention and all(
        d.endswith("_split") and p.kernel == d.removesuffix("_split") + "_mma" for d, p in split
    ), attention
    differ = [(d, p) for d, p in zip(decode, paired) if d != p]
    assert all(d.kernel.startswith(("rfc_matmul_", "rfc_attention_", "rfc_swiglu_")) for d, _p in differ), differ
    # the SwiGLU before the down matmul: its twin that also rounds its output into the q8 slot (gpu_plan.GLU_Q8)
    glu = [(d, p) for d, p in differ if d.kernel.startswith("rfc_swiglu_")]
    assert glu and all(
        p.kernel == d.kernel + "_q8" and p.args == d.args[:1] + (ArgSlot(ArgKind.ARENA, Q8_SCRATCH),) + d.args[1:]
        for d, p in glu
    ), glu
    swapped = [(d, p) for d, p in differ if d.kernel.startswith("rfc_matmul_")]
    # int8 tensor cores (sm_80+) for Q4_K and for Q6_K (its halves apart: gpu_imma.SIGNED_HALVES)
    kinds = {(p.kernel.split("_")[2], p.kernel.split("_")[3]) for _d, p in swapped}
    assert swapped and kinds == {("imma", "q4"), ("imma", "q6")}, kinds
    # the same op: the same arguments (an int8 one reads its input as rounded into the q8 slot), a
    # grid over the step's tokens
    for d, p in swapped:
        q8 = p.kernel.startswith("rfc_matmul_imma_")
        assert p.args == (d.args[:1] + (ArgSlot(ArgKind.ARENA, Q8_SCRATCH),) + d.args[2:] if q8 else d.args)
        assert p.grid[1].count == "n_tokens"
    # each rounding launch reads the input of the int8 matmul after it and writes the q8 slot
    for i in rounding:
        after = program.prefill_launches[i + 1]
        decode = next(d for d, p in swapped if p is after)
        assert after.kernel.startswith("rfc_matmul_imma_")
        assert program.prefill_launches[i].args[:2] == (ArgSlot(ArgKind.ARENA, Q8_SCRATCH), decode.args[1])
    # every matmul over token rows swapped; the logits matmul (over the wanted rows) stays
    matmuls = [d for d in program.launches if d.kernel.startswith("rfc_matmul_")]
    assert len(swapped) == len(matmuls) - 1 and all(g.count == "n_rows" for g in matmuls[-1].grid[1:])
    target = parse_target("sm_61")  # no tensor cores
    specs, op_kernels = plan_kernels(target, bundle.plan, bundle.layout)
    assert plan_program(target, bundle.plan, specs, op_kernels).prefill_launches == ()
    for name in ("gfx1100", "gfx90a"):  # int8 matrix instructions only: Q4_K's and Q6_K's matmuls on them
        target = parse_target(name)
        specs, op_kernels = plan_kernels(target, bundle.plan, bundle.layout)
        amd = plan_program(target, bundle.plan, specs, op_kernels)
        paired = [p for p in amd.prefill_launches if not p.kernel.startswith("rfc_quantize_q8_")]
        swapped = [p.kernel for d, p in zip(amd.launches, paired) if d != p and not p.kernel.startswith("rfc_swiglu_")]
        assert {k[: len("rfc_matmul_imma_q4_k")] for k in swapped} == {"rfc_matmul_imma_q4_k", "rfc_matmul_imma_q6_k"}


def test_prefill_steps_launch_the_prefill_list_and_decode_steps_replay_the_decode_graph(program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    fake = FakeCuda()
    runner = _runner(fake, program, kernel_args, bundle)
    functions = {k: 0x1000 + i for i, k in enumerate(kernel_args)}
    blocks = BlockManager(32, 16)

    def launched(batch):
        fake.calls.clear()
        runner.run(batch, bundle.plan.output_logits)
        return [c[1][0] for c in fake.calls if c[0] == "cuLaunchKernel"], [c[0] for c in fake.calls]

    fns, names = launched(_prefill_batch(blocks, 64))  # one prompt of 64 tokens: the prefill list, no graph
    assert fns == [functions[launch.kernel] for launch in program.prefill_launches]
    assert "cuStreamBeginCapture_v2" not in names and "cuGraphLaunch" not in names
    blocks.free(0)
    fns, names = launched(_prefill_batch(blocks, 63))  # below the bound: the decode list, launched directly
    assert fns == [functions[launch.kernel] for launch in program.launches]
    fake.captured.clear()
    fns, names = launched(_decode_batch(BlockManager(32, 16), 2, 0))  # decode: the decode list's graph
    assert names.count("cuGraphLaunch") == 1 and fns == [functions[launch.kernel] for launch in program.launches]
    assert not any(launch.kernel.startswith("rfc_matmul_mma_") for launch in program.launches)


def test_the_prefill_list_round_trips_and_is_checked():
    from rfc.artifacts.errors import BundleError
    from rfc.artifacts.program import Arena, GridDim, Launch, StepProgram, pack_program, unpack_program

    import msgpack

    arena = Arena(2048, 512, 256, 256, (), 0)
    launch = Launch("k", 128, (GridDim("n_tokens", 64),), ())
    program = StepProgram("sm_90", arena, launches=(launch,), prefill_launches=(launch,), prefill_min_tokens=64)
    assert unpack_program(pack_program(program)) == program
    raw = msgpack.unpackb(pack_program(program))
    for bad in (0, 4096, -1, "64", True):
        with pytest.raises(BundleError, match="prefill_min_tokens|malformed"):
            unpack_program(msgpack.packb({**raw, "prefill_min_tokens": bad}))
    # a program written before the prefill list: every step runs `launches`
    old = {k: v for k, v in raw.items() if not k.startswith("prefill_")}
    assert unpack_program(msgpack.packb(old)) == StepProgram("sm_90", arena, launches=(launch,))


def test_the_one_token_list_round_trips_and_an_older_program_keeps_its_bytes():
    """single_launches packs when there is one and is absent otherwise (a program without it is the
    bytes it was before the field); the lists EXTRA_PROGRAMMATIC names are the ones that overlap
    (`true`, as first written: every list; names it does not know: none)."""
    from rfc.artifacts.program import EXTRA_PROGRAMMATIC, Arena, GridDim, Launch, StepProgram
    from rfc.artifacts.program import pack_program, unpack_program

    import msgpack

    arena = Arena(2048, 512, 256, 256, (), 0)
    launch = Launch("k", 128, (GridDim("n_tokens", 8),), ())
    one = Launch("k_t1", 128, (GridDim("n_tokens", 1),), ())
    program = StepProgram("sm_90", arena, launches=(launch,), single_launches=(one,))
    assert unpack_program(pack_program(program)) == program
    plain = StepProgram("sm_90", arena, launches=(launch,))
    assert "single_launches" not in msgpack.unpackb(pack_program(plain))
    assert program.every_launch() == (launch, one)
    for flag, lists in (
        (True, {"launches", "prefill_launches", "single_launches", "batch_launches"}),
        (["launches", "single_launches"], {"launches", "single_launches"}),
        (["other"], set()),
        ("launches", set()),
    ):
        marked = StepProgram("sm_90", arena, launches=(launch,), extra={EXTRA_PROGRAMMATIC: flag})
        assert unpack_program(pack_program(marked)).overlapped_lists() == lists


def test_the_batch_list_round_trips_and_is_checked():
    """batch_launches packs with batch_min_tokens when there is one and is absent otherwise (a
    program without it is the bytes it was before the field, and a reader runs such steps on
    `launches`); a batch_min_tokens below 2 or past the arena is refused."""
    from rfc.artifacts.errors import BundleError
    from rfc.artifacts.program import Arena, GridDim, Launch, StepProgram, pack_program, unpack_program

    import msgpack

    arena = Arena(2048, 512, 256, 256, (), 0)
    launch = Launch("k", 128, (GridDim("n_tokens", 8),), ())
    many = Launch("k_bm", 256, (GridDim("n_tokens", 16),), ())
    program = StepProgram("sm_90", arena, launches=(launch,), batch_launches=(many,), batch_min_tokens=8)
    assert unpack_program(pack_program(program)) == program
    assert program.every_launch() == (launch, many)
    plain = StepProgram("sm_90", arena, launches=(launch,))
    assert not {"batch_launches", "batch_min_tokens"} & set(msgpack.unpackb(pack_program(plain)))
    raw = msgpack.unpackb(pack_program(program))
    for bad in (0, 1, 4096, -1, "8", True):
        with pytest.raises(BundleError, match="batch_min_tokens|malformed"):
            unpack_program(msgpack.packb({**raw, "batch_min_tokens": bad}))
    old = {k: v for k, v in raw.items() if not k.startswith("batch_")}
    assert unpack_program(msgpack.packb(old)) == plain


# -- attention in one launch a layer (the split kernel's last block merges) --------------------------


def test_decode_attention_is_one_launch_a_layer_and_two_without_the_merge(program_and_bundle, monkeypatch):
    """ATTENTION_LAST_BLOCK_MERGE: one split launch per attention op, over an arrivals slot the
    program lists as zeroed (so it is written as version 2); off, the split and reduce launches of
    before, and a version 1 program with nothing to zero."""
    import msgpack

    import rfc.compiler.codegen.gpu_plan as gpu_plan
    from rfc.artifacts.program import pack_program

    program, _kernel_args, bundle = program_and_bundle
    n_attention = sum(op.kind == "attention" for op in bundle.plan.ops)
    kinds = lambda p: [  # noqa: E731  (the q8 twin's suffix aside: gpu_fuse.ATTENTION_Q8)
        x.kernel.removesuffix("_q8").rsplit("_", 1)[1] for x in p.launches if x.kernel.startswith("rfc_attention_")
    ]
    assert kinds(program) == ["split"] * n_attention
    counts = program.arena.slot(gpu_plan.ATTENTION_ARRIVALS)
    n_kv_heads = max(op.attrs["n_kv_heads"] for op in bundle.plan.ops if op.kind == "attention")
    assert counts.nbytes == 4 * gpu_plan.ATTENTION_SPLIT_ROWS * n_kv_heads
    assert counts.offset + counts.nbytes <= program.arena.total_bytes
    assert program.arena.zeroed == (gpu_plan.ATTENTION_ARRIVALS,)
    split = next(x for x in program.launches if x.kernel.endswith(("_split", "_split_q8")))
    assert ArgSlot(ArgKind.ARENA, gpu_plan.ATTENTION_ARRIVALS) in split.args
    assert msgpack.unpackb(pack_program(program))["version"] == 2

    monkeypatch.setattr(gpu_plan, "ATTENTION_LAST_BLOCK_MERGE", False)
    target = parse_target("sm_90")
    specs, op_kernels = plan_kernels(target, bundle.plan, bundle.layout)
    off = plan_program(target, bundle.plan, specs, op_kernels)
    assert kinds(off) == ["split", "reduce"] * n_attention
    assert len(off.launches) == len(program.launches) + n_attention
    assert off.arena.zeroed == () and gpu_plan.ATTENTION_ARRIVALS not in {s.buffer for s in off.arena.slots}
    raw = msgpack.unpackb(pack_program(off))
    assert raw["version"] == 1 and "zeroed" not in raw["arena"]


def test_the_runner_zeroes_the_arrival_counts_once(program_and_bundle):
    """The arena's zeroed slots are set to zero once, when the runner is made (device memory
    starts as whatever it was), and never per step."""
    program, kernel_args, bundle = program_and_bundle
    fake = FakeCuda()
    runner = _runner(fake, program, kernel_args, bundle)
    counts = program.arena.slot("attention.arrivals")
    copies = [c[1] for c in fake.calls if c[0] == "cuMemcpyHtoD_v2"]
    assert [(dst, n) for dst, _src, n in copies] == [(runner.arena + counts.offset, counts.nbytes)]
    fake.calls.clear()
    runner.run(_decode_batch(BlockManager(32, 16), 2, 0), bundle.plan.output_logits)
    assert "cuMemcpyHtoD_v2" not in [c[0] for c in fake.calls]


def test_zeroed_slots_round_trip_and_are_checked():
    """A program's zeroed slots: only in a version 2 program, each an arena slot of a bounded
    size (the runtime zeroes it from a host buffer), once."""
    import msgpack

    from rfc.artifacts.errors import BundleError
    from rfc.artifacts.program import MAX_ZEROED_BYTES, Arena, ArenaSlot, StepProgram, pack_program, unpack_program

    big = ArenaSlot("big", 512, MAX_ZEROED_BYTES + 1)
    slots = (ArenaSlot("a", 0, 256), ArenaSlot("counts", 256, 64), big)
    arena = Arena(2048, 512, 256, 256, slots, 512 + big.nbytes, ("counts",))
    program = StepProgram("sm_90", arena)
    back = unpack_program(pack_program(program))
    assert back.arena == arena and back.version == 2
    raw = msgpack.unpackb(pack_program(program))
    cases = [
        ({**raw, "version": 1}, "version 1 program zeroes no slots"),
        ({**raw, "version": 3}, "version 3 is not one of 1, 2"),
        ({**raw, "arena": {**raw["arena"], "zeroed": ["nowhere"]}}, "'nowhere' is not an arena slot"),
        ({**raw, "arena": {**raw["arena"], "zeroed": ["counts", "counts"]}}, "listed twice"),
        ({**raw, "arena": {**raw["arena"], "zeroed": [7]}}, "malformed"),
        ({**raw, "arena": {**raw["arena"], "zeroed": ["big"]}}, "'big' is over"),
    ]
    for bad, message in cases:
        with pytest.raises(BundleError, match=message):
            unpack_program(msgpack.packb(bad))


class FakeCudaDevice(FakeCuda):
    """One sm_90 device, each call recorded with the thread that made it."""

    def __getattr__(self, name):
        call = super().__getattr__(name)

        def threaded(*args):
            self.threads.append((name, threading.get_ident()))
            return call(*args)

        return threaded

    def _cuDeviceGetCount(self, ref):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_int))[0] = 1
        return 0

    def _cuDeviceGetAttribute(self, ref, attribute, dev):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_int))[0] = 9 if attribute == cuda._CC_MAJOR else 0
        return 0

    def _cuDevicePrimaryCtxRetain(self, ref, dev):
        self._out(ref, 0xC0DE)
        return 0


def test_another_thread_calls_the_driver_in_the_devices_context():
    """The driver API's current context is per thread: an HTTP worker reading the free memory
    for /health called cuMemGetInfo with none (CUDA_ERROR_INVALID_CONTEXT on an H100) until
    each thread made the device's context current before its first call."""
    fake = FakeCudaDevice()
    fake.threads = []
    driver = _driver(fake)
    assert cuda._open_device(driver, "sm_90") == "sm_90"
    driver.memory_info()
    opener = threading.get_ident()
    assert [n for n, t in fake.threads if n.startswith(("cuCtxSetCurrent", "cuMemGetInfo"))] == [
        "cuCtxSetCurrent",
        "cuMemGetInfo_v2",
    ]  # the opening thread: bound when it opened the device
    fake.threads.clear()
    worker = threading.Thread(target=lambda: (driver.memory_info(), driver.memory_info()))
    worker.start()
    worker.join()
    calls = [(n, t) for n, t in fake.threads]
    assert [n for n, _t in calls] == ["cuCtxSetCurrent", "cuMemGetInfo_v2", "cuMemGetInfo_v2"]
    assert len({t for _n, t in calls} - {opener}) == 1  # all in the worker, bound once
    context = fake.calls[-3][1][0]  # the device's primary context, made current in the worker
    assert fake.calls[-3][0] == "cuCtxSetCurrent" and getattr(context, "value", context) == 0xC0DE


def test_overlapped_launches_follow_the_first(program_and_bundle):
    """A program marked for overlapped launches (compiler/codegen/gpu_overlap.py), on a driver
    with cuLaunchKernelEx: every launch of a step but its first goes through it, with
    programmatic stream serialization on, the grid, block and stream of the plain launch and the
    same parameters; without the mark, or without the driver's launch, every launch is plain."""
    program, kernel_args, bundle = program_and_bundle
    marked = replace(program, extra={**program.extra, "programmatic": True})
    plain = FakeCuda()
    _runner(plain, program, kernel_args, bundle, overlaps=True).run(
        _decode_batch(BlockManager(32, 16), 3, 0), bundle.plan.output_logits
    )
    fake = FakeCuda()
    runner = _runner(fake, marked, kernel_args, bundle, overlaps=True)
    runner.run(_decode_batch(BlockManager(32, 16), 3, 0), bundle.plan.output_logits)
    names = [c[0] for c in fake.calls if c[0].startswith("cuLaunchKernel")]
    assert names == ["cuLaunchKernel"] + ["cuLaunchKernelEx"] * (len(program.launches) - 1)
    _check_captured(fake, runner, program, kernel_args, bundle)
    plain_launches = [c[1] for c in plain.calls if c[0] == "cuLaunchKernel"]
    for (grid, block, shared, stream, attrs), args in zip(fake.configs, plain_launches[1:]):
        assert (grid, block, shared, stream) == (tuple(args[1:4]), tuple(args[4:7]), 0, 0x5151)
        assert attrs == [(6, 1)]  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, allowed
    off = FakeCuda()
    _runner(off, marked, kernel_args, bundle, overlaps=False).run(
        _decode_batch(BlockManager(32, 16), 3, 0), bundle.plan.output_logits
    )
    assert not [c for c in (*off.calls, *plain.calls) if c[0] == "cuLaunchKernelEx"]


def test_a_refused_overlapped_launch_falls_back_to_plain_launches(program_and_bundle, caplog):
    """A driver that refuses cuLaunchKernelEx (an error status) gets that launch and every later
    one plainly, the same parameters, with one warning naming the call and the error."""
    program, kernel_args, bundle = program_and_bundle
    marked = replace(program, extra={**program.extra, "programmatic": True})
    fake = FakeCuda()
    fake.fail = "cuLaunchKernelEx"
    runner = _runner(fake, marked, kernel_args, bundle, overlaps=True)
    with caplog.at_level("WARNING", logger="rfc.device"):
        runner.run(_decode_batch(BlockManager(32, 16), 3, 0), bundle.plan.output_logits)
    names = [c[0] for c in fake.calls if c[0].startswith("cuLaunchKernel")]
    assert names == ["cuLaunchKernel", "cuLaunchKernelEx"] + ["cuLaunchKernel"] * (len(program.launches) - 1)
    assert not runner._driver.overlaps
    _check_captured(fake, runner, program, kernel_args, bundle)
    assert [r.getMessage() for r in caplog.records] == [
        "cuLaunchKernelEx refused an overlapped launch (CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was "
        "encountered): launching one kernel after another"
    ]


def test_a_library_without_the_overlapped_launch_launches_plainly():
    class OldCuda(FakeCuda):
        def __getattr__(self, name):
            if name == "cuLaunchKernelEx":
                raise AttributeError(name)
            return super().__getattr__(name)

    driver = cuda.CudaDriver("sm_90", lib=_ProbeLib(OldCuda()))
    assert not driver.overlaps
    assert cuda.CudaDriver("sm_90", lib=_ProbeLib(FakeCuda())).overlaps


class _ProbeLib:
    """A fake libcuda that opens device 0 as an sm_90."""

    def __init__(self, fake):
        self._fake = fake

    def __getattr__(self, name):
        if name == "cuDeviceGetCount":
            return lambda ref: ctypes.cast(ref, ctypes.POINTER(ctypes.c_int)).__setitem__(0, 1) or 0
        if name == "cuDeviceGetAttribute":

            def attribute(ref, which, dev):
                ctypes.cast(ref, ctypes.POINTER(ctypes.c_int))[0] = 9 if which == 75 else 0
                return 0

            return attribute
        return getattr(self._fake, name)


def test_launch_config_matches_cuda_h(tmp_path):
    """The ctypes CUlaunchConfig / CUlaunchAttribute (runtime/devices/cuda.py) and the byte
    offsets the fake above reads are those of the toolkit's cuda.h, where one is installed."""
    header = next(
        (p for p in (Path("/usr/local/cuda/include/cuda.h"), Path("/usr/include/cuda.h")) if p.is_file()), None
    )
    cc = shutil.which("cc") or shutil.which("gcc")
    if header is None or cc is None:
        pytest.skip("no cuda.h or no C compiler")
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <cuda.h>\n#include <stdio.h>\n#include <stddef.h>\n"
        'int main(void) { printf("%zu %zu %zu %zu %zu %zu %zu %zu %d\\n", sizeof(CUlaunchConfig), '
        "offsetof(CUlaunchConfig, sharedMemBytes), offsetof(CUlaunchConfig, hStream), "
        "offsetof(CUlaunchConfig, attrs), offsetof(CUlaunchConfig, numAttrs), sizeof(CUlaunchAttribute), "
        "offsetof(CUlaunchAttribute, value), "
        "offsetof(CUlaunchAttribute, value.programmaticStreamSerializationAllowed), "
        "(int)CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION); return 0; }\n"
    )
    exe = tmp_path / "layout"
    subprocess.run([cc, f"-I{header.parent}", "-o", str(exe), str(src)], check=True, capture_output=True)
    got = [int(v) for v in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    C, A = cuda.LaunchConfig, cuda.LaunchAttribute
    ours = [
        ctypes.sizeof(C),
        C.shared_bytes.offset,
        C.stream.offset,
        C.attrs.offset,
        C.n_attrs.offset,
        ctypes.sizeof(A),
        A.value.offset,
        A.value.offset,
        cuda._PROGRAMMATIC_STREAM_SERIALIZATION,
    ]
    assert got == ours
    assert (got[0], got[5], got[1], got[2]) == (CONFIG_BYTES, ATTR_BYTES, 24, 32)
