"""The CUDA driver layer under the step program, against a recording fake libcuda (a Python
object standing in for the ctypes functions): every call checked, graphs captured once per
decode batch size and replayed, one async copy each way per step, and the pointers written
into each captured launch's parameters are the ones the program names. No GPU, no toolchain:
the program is lowered from a reference-only bundle's plan.
"""

import ctypes
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.artifacts.program import SAMPLE_FLAG_DEVICE, SAMPLE_FLAG_GREEDY, SAMPLE_FLAG_LOGPROB, SAMPLE_WORDS, ArgKind
from rfc.compiler.codegen.gpu_plan import plan_kernels, plan_program
from rfc.compiler.codegen.gpu_sample import plan_sample_kernel, sample_program_extra
from rfc.compiler.pipeline import CompileOptions, compile_model
from rfc.compiler.targets import parse_target
from rfc.runtime.batch import SeqChunk, build_batch
from rfc.runtime.devices import DeviceError, cuda
from rfc.runtime.devices.gpu_program import StepRunner
from rfc.runtime.kv_cache import BlockManager
from rfc.runtime.sampler import Sampler, SamplingParams
from tests.conftest import FIXTURES


class FakeCuda:
    """libcuda as far as the driver layer calls it: host memory for device memory, every
    call recorded as (name, args); `fail` makes one function return an error."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.fail: str | None = None
        self._keep = []
        self.capturing = False
        self.captured: list[list[int]] = []  # per captured launch: its parameter words

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
            self.captured.append([ctypes.cast(params[i], ctypes.POINTER(ctypes.c_uint64))[0] for i in range(len(params))])
        return 0

    def _cuGetErrorName(self, status, ref):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_char_p))[0] = b"CUDA_ERROR_ILLEGAL_ADDRESS"
        return 0

    def _cuGetErrorString(self, status, ref):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_char_p))[0] = b"an illegal memory access was encountered"
        return 0


def _driver(fake) -> cuda.CudaDriver:
    driver = cuda.CudaDriver.__new__(cuda.CudaDriver)  # no cuInit/device probing
    driver.lib = fake
    return driver


@pytest.fixture(scope="module")
def program_and_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "bundle"
    compile_model(CompileOptions(model=FIXTURES / "tiny-llama-Q4_K_M.gguf", out_dir=out, targets=(), cache_dir=None))
    bundle = open_bundle(out)
    target = parse_target("sm_90")
    specs, op_kernels = plan_kernels(target, bundle.plan, bundle.layout)
    # argument offsets as a cubin lays them out: each argument at its natural alignment
    kernel_args = {}
    for s in specs:
        offset, layout = 0, []
        for name, kind in s.args:
            size = 8 if kind == "ptr" else 4
            offset = -(-offset // size) * size
            layout.append([name, size, offset])
            offset += size
        kernel_args[s.name] = layout
    return plan_program(target, bundle.plan, specs, op_kernels), kernel_args, bundle


def _natural_layout(args) -> list:
    offset, layout = 0, []
    for name, kind in args:
        size = 8 if kind == "ptr" else 4
        offset = -(-offset // size) * size
        layout.append([name, size, offset])
        offset += size
    return layout


def _runner(fake, program, kernel_args, bundle, sample=None):
    entries = bundle.layout.by_name()
    plan = bundle.plan
    return StepRunner(
        _driver(fake), program, kernel_args, {k: 0x1000 + i for i, k in enumerate(kernel_args)},
        weight_ptr=lambda name: 0x10_0000_0000 + entries[name].offset,
        kv_ptr=lambda which, layer: (0x20_0000_0000 if which == "k" else 0x30_0000_0000) + layer * 0x100_0000,
        vocab=plan.vocab_size, n_embd=plan.n_embd, logits=plan.output_logits, hidden=plan.output_hidden,
        block_size=16, table_width=8, sample=sample,
    )


def _decode_batch(blocks, n: int, start: int):
    chunks = [SeqChunk(s, start, (7 + s,)) for s in range(n)]
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
    replay = [c for c in fake.calls if c[0] in ("cuMemcpyHtoDAsync_v2", "cuGraphLaunch", "cuMemcpyDtoHAsync_v2", "cuStreamSynchronize")]
    assert [c[0] for c in replay] == ["cuMemcpyHtoDAsync_v2", "cuGraphLaunch", "cuMemcpyDtoHAsync_v2", "cuStreamSynchronize"] * 3
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
    entries = bundle.layout.by_name()
    assert len(fake.captured) == len(program.launches)
    scalars = {"n_tokens": 3, "n_rows": 3, "table_width": 8, "block_size": 16}
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
    for module in (cuda, __import__("rfc.runtime.devices.hip", fromlist=["hip"])):
        source = Path(module.__file__).read_text()
        called = set(re.findall(r"self\.lib\.(\w+)\(", source))
        # hipGetErrorString returns a char *, declared next to the library load
        missing = called - set(module.SIGNATURES) - {"hipGetErrorString"}
        assert not missing, f"{module.__name__}: no argtypes for {sorted(missing)}"


# -- sampling on the device -------------------------------------------------------------------------


def _sampling_runner(fake, program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    spec = plan_sample_kernel(parse_target("sm_90"), bundle.plan.vocab_size)
    args = {**kernel_args, spec.name: _natural_layout(spec.args)}
    return _runner(fake, program, args, bundle, sample=(0x9999, sample_program_extra(spec))), spec


def test_device_sampled_steps_copy_back_token_ids_only(program_and_bundle):
    """Per decode step: the batch in, the replay, the row parameters in (and the packed
    penalty lists when a row has one), the sampling kernel, the token ids out, one sync; a
    host row (None) adds one copy of its own logits row and nothing else."""
    _program, _args, bundle = program_and_bundle
    vocab = bundle.plan.vocab_size
    fake = FakeCuda()
    runner, spec = _sampling_runner(fake, program_and_bundle)
    blocks = BlockManager(32, 16)
    plain = Sampler(SamplingParams(temperature=0.0), [1, 2], vocab)
    penalized = Sampler(SamplingParams(top_k=5, repetition_penalty=1.2, seed=7), [3, 3, 4], vocab)
    fake.calls.clear()
    out = runner.run_sampled(_decode_batch(blocks, 2, 0), [(plain, False), (penalized, True)])
    assert out.logits == {} and out.tokens.shape == (2,)
    names = [c[0] for c in fake.calls if c[0] != "cuStreamBeginCapture_v2" and c[0] != "cuStreamEndCapture"
             and c[0] != "cuGraphInstantiateWithFlags" and not (c[0] == "cuLaunchKernel" and c[1][0] != 0x9999)]
    assert names == ["cuMemcpyHtoDAsync_v2", "cuGraphLaunch", "cuMemcpyHtoDAsync_v2", "cuMemcpyHtoDAsync_v2",
                     "cuLaunchKernel", "cuMemcpyDtoHAsync_v2", "cuStreamSynchronize"]
    copies = [c[1] for c in fake.calls if c[0].startswith("cuMemcpy")]
    assert copies[1][2] == 2 * len(SAMPLE_WORDS) * 4  # two rows of parameters
    assert copies[2][2] == 2 * 4 * 2  # two distinct tokens (3, 4) in the penalty window: ids then counts
    assert copies[3][2] == 2 * 8  # token id and logprob per row: no logits
    launch = next(c[1] for c in fake.calls if c[0] == "cuLaunchKernel" and c[1][0] == 0x9999)
    assert launch[1:7] == (2, 1, 1, spec.threads, 1, 1)
    s = runner.sampling
    pen = np.frombuffer(ctypes.string_at(s._pen, 16), np.int32)
    assert sorted(pen[:2].tolist()) == [3, 4] and sorted(pen[2:].view(np.float32).tolist()) == [1.0, 2.0]
    words = {w: i for i, w in enumerate(SAMPLE_WORDS)}
    params = s._params[:2]
    assert params[0, words["flags"]] == SAMPLE_FLAG_DEVICE | SAMPLE_FLAG_GREEDY
    assert params[1, words["flags"]] == SAMPLE_FLAG_DEVICE | SAMPLE_FLAG_LOGPROB
    assert params[1, words["top_k"]] == 5 and params[1, words["pen_count"]] == 2

    # the next step: one greedy row on the device, one host row (its logits come back alone)
    fake.calls.clear()
    out = runner.run_sampled(_decode_batch(blocks, 2, 1), [(plain, False), None])
    assert list(out.logits) == [1] and out.logits[1].shape == (vocab,)
    d2h = [c[1] for c in fake.calls if c[0] == "cuMemcpyDtoHAsync_v2"]
    logits = runner.arena + runner.program.arena.slot(bundle.plan.output_logits).offset
    assert [c[2] for c in d2h] == [2 * 8, vocab * 4]
    assert d2h[1][1] == logits + vocab * 4  # row 1 only
    assert s._params[1, words["flags"]] == 0  # the kernel leaves the host row alone
    assert not {"cuMemAlloc_v2", "cuMemAllocHost_v2"} & {c[0] for c in fake.calls}


def test_all_host_rows_skip_the_sampling_kernel(program_and_bundle):
    fake = FakeCuda()
    runner, _spec = _sampling_runner(fake, program_and_bundle)
    fake.calls.clear()
    out = runner.run_sampled(_decode_batch(BlockManager(32, 16), 1, 0), [None])
    assert list(out.logits) == [0]
    assert not [c for c in fake.calls if c[0] == "cuLaunchKernel" and c[1][0] == 0x9999]


def test_a_penalty_list_over_the_capacity_goes_to_the_host(program_and_bundle):
    program, kernel_args, bundle = program_and_bundle
    vocab = bundle.plan.vocab_size
    spec = plan_sample_kernel(parse_target("sm_90"), vocab)
    extra = {**sample_program_extra(spec), "pen_capacity": 2}
    runner = _runner(FakeCuda(), program, {**kernel_args, spec.name: _natural_layout(spec.args)}, bundle,
                     sample=(0x9999, extra))
    small = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.5), [3, 4], vocab)  # 2 entries: fits
    big = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.5), [5, 6, 7], vocab)  # 3: does not
    out = runner.run_sampled(_decode_batch(BlockManager(32, 16), 2, 0), [(small, False), (big, False)])
    assert list(out.logits) == [1]
