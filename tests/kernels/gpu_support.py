"""Shared by the GPU test modules: toolchain skips and bundles compiled per session.

Kept out of conftest.py (tests/kernels is shared with other kernel tests); the modules
import the fixtures. Each module gets its own fixture instance, but all share one kernel
build cache under the session's base temp dir, so a model's source is built once per
target per session.

Two kinds of build. `gpu_bundle`'s are the product's own (-O3): the emulator tests share them
with the tests that read what the toolchain decided (registers, local memory, argument layouts,
byte-identical rebuilds: test_gpu_resources, test_gpu_codegen). A test that compiles a model of
its own for the emulator alone (a saver file, a switched variant) uses `emulator_compile`: the
emulator (gpu_emulator.py) runs the generated source, built by g++, and of the code object reads
only what the runtime checks at load (each kernel's argument layout, its block size, the wave
size), which the toolchain's optimization level does not change. So those are built with the
device optimizations off: nvcc's front end and ptxas at -O0, hipcc at -O0, about half the time
(a tiny llama: nvcc 16.9 -> 8.9 s, hipcc 9.1 -> 3.7 s on a 2-core VM); their manifests record
that command.
"""

import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests import testdata
from tests.conftest import DEMO_MODEL, FIXTURES, ROOT, shared_basetemp

HIPCC, NVCC = shutil.which("hipcc"), shutil.which("nvcc")

needs_hipcc = pytest.mark.skipif(HIPCC is None, reason="hipcc (ROCm) is not installed: it builds the gfx code objects")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed: it builds the sm_* cubins")


def toolchain_marks(target: str) -> list:
    return [pytest.mark.toolchain, needs_nvcc if target.startswith("sm_") else needs_hipcc]


def model_path(name: str) -> Path:
    return DEMO_MODEL if name == "stories260K" else FIXTURES / f"tiny-{name}.gguf"


def make_gguf(path, *args: str) -> None:
    """tools/make_gguf.py's random-weight model at `path`."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("make_gguf", ROOT / "tools" / "make_gguf.py")
    make_gguf = importlib.util.module_from_spec(spec)
    previous = sys.modules.get("make_gguf")  # tests/unit/test_make_gguf.py's, in the same worker
    sys.modules["make_gguf"] = make_gguf  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(make_gguf)
        make_gguf.main([str(path), *args])
    finally:
        if previous is None:
            del sys.modules["make_gguf"]
        else:
            sys.modules["make_gguf"] = previous


@pytest.fixture(scope="session")
def gpu_build_cache(tmp_path_factory) -> Path:
    """The session's kernel build cache (a fixed path, so every module and worker shares it)."""
    path = shared_basetemp(tmp_path_factory) / "gpu-kernel-cache"
    path.mkdir(exist_ok=True)
    return path


# Each family's release flag and what a quick build passes in its place (the emulator's bundles)
_QUICK_FLAGS = {"cuda": ("-Xcicc", "-O0", "-Xptxas", "-O0"), "hip": ("-O0",)}
_RELEASE_FLAG = "-O3"


@contextmanager
def quick_device_builds():
    """compiler/codegen/gpu.py's toolchains with their device optimization off, for the duration
    (the build cache keys on the command, so quick and release builds never share an entry)."""
    from rfc.compiler.codegen import gpu

    saved = dict(gpu.TOOLCHAINS)
    for family, tc in saved.items():
        assert tc.args.count(_RELEASE_FLAG) == 1, f"{family}: the release flag moved"
        args = tuple(a for arg in tc.args for a in ((*_QUICK_FLAGS[family],) if arg == _RELEASE_FLAG else (arg,)))
        gpu.TOOLCHAINS[family] = replace(tc, args=args)
    try:
        yield
    finally:
        gpu.TOOLCHAINS.update(saved)


def emulator_compile(options):
    """compile_model(options) with quick device builds: a bundle for the emulator alone."""
    from rfc.compiler.pipeline import compile_model

    with quick_device_builds():
        return compile_model(options)


@pytest.fixture(scope="session")
def gpu_bundle(tmp_path_factory, gpu_build_cache):
    """gpu_bundle(model_name, target) -> bundle dir, compiled at most once per session."""
    root = tmp_path_factory.mktemp("gpu-bundles")
    built: dict[tuple[str, str], Path] = {}

    def get(name: str, target: str) -> Path:
        if (name, target) not in built:
            from rfc.compiler.pipeline import CompileOptions, compile_model

            out = root / f"{name}-{target}"
            # one worker at a time per bundle: the other waits, then takes the kernels from the cache
            with testdata._locked(gpu_build_cache / "locks" / f"{name}-{target}"):
                compile_model(
                    CompileOptions(model=model_path(name), out_dir=out, targets=(target,), cache_dir=gpu_build_cache)
                )
            built[name, target] = out
        return built[name, target]

    return get


# -- activation rounding of the GPU's int8 matmuls ----------------------------------------------
# Matmuls over quantized weights round their activations to int8 per 32 elements with a float32
# scale (kernels/rfc_gpu_q8.h): tests/oracle.py's "q8_32" kind, for every gpu_plan.is_int8 weight.
GPU_ROUNDING_KIND = "q8_32"


def _by_gguf_format(formats, kind_of) -> dict[str, str]:
    """{format: kind_of(format)} for the formats kind_of gives a kind, keyed by GGUF format (the
    oracle reads the GGUF): a layout the planner repacked (Q6_Kp) counts as its base format."""
    from rfc.artifacts.formats import FORMATS

    return {FORMATS[f].base or f: kind for f in formats if (kind := kind_of(f)) is not None}


def gpu_rounding_kinds(formats) -> dict[str, str]:
    """The decode list's rounding kinds: q8_32 for every int8 matmul's format."""
    from rfc.compiler.codegen.gpu_plan import is_int8

    return _by_gguf_format(formats, lambda f: GPU_ROUNDING_KIND if is_int8(f) else None)


def gpu_rounding(model: str, formats, tokens) -> "np.ndarray | None":
    """D = oracle(activations rounded as the GPU rounds them) - oracle(exact), teacher-forced
    over `tokens` (None when no matmul rounds: float weights only)."""
    from tests.oracle import Oracle

    kinds = gpu_rounding_kinds(formats)
    if not kinds:
        return None
    path = model_path(model)
    return Oracle(path, act_rounding=kinds).logits(list(tokens)) - Oracle(path).logits(list(tokens))


def prefill_rounding(model: str, formats, tokens, target: str = "sm_90") -> "np.ndarray | None":
    """gpu_rounding's D for a step that takes the prefill list (tensor-core matmuls) on `target`:
    quantized formats keep the dp4a kernels' q8_32 bound (the int8 tensor-core kernels round
    as they do, the half ones less), F16/BF16 matmuls round activations to float16 (oracle kind
    "f16") where the target has half tensor cores (Target.wmma_f16: elsewhere they keep the
    decode list's float kernels)."""
    from tests.oracle import Oracle

    kinds = prefill_rounding_kinds(formats, target)
    if not kinds:
        return None
    path = model_path(model)
    return Oracle(path, act_rounding=kinds).logits(list(tokens)) - Oracle(path).logits(list(tokens))


def prefill_rounding_kinds(formats, target: str) -> dict[str, str]:
    """The prefill list's rounding kinds on `target` (prefill_rounding)."""
    from rfc.compiler.codegen.gpu_mma import MMA_FORMATS
    from rfc.compiler.codegen.gpu_plan import is_int8
    from rfc.compiler.targets import parse_target

    half = parse_target(target).wmma_f16
    return _by_gguf_format(
        formats, lambda f: GPU_ROUNDING_KIND if is_int8(f) else "f16" if half and f in MMA_FORMATS else None
    )


class BesideReference:
    """A device and the reference device over one bundle, run on the same batches: step(chunks)
    allocates each chunk's KV blocks and gives (the device's logits, the reference's)."""

    def __init__(self, bundle, device, num_blocks: int, block_size: int):
        from rfc.runtime.devices.reference import ReferenceDevice
        from rfc.runtime.engine.executor import Executor
        from rfc.runtime.engine.kv_cache import BlockManager

        self.bundle, self.device = bundle, device
        self.ref = ReferenceDevice(bundle, bundle.plan.kv, num_blocks, block_size)
        self.blocks = BlockManager(num_blocks, block_size)
        self.run = Executor(bundle.plan, device)
        self.run_ref = Executor(bundle.plan, self.ref)

    def step(self, chunks, hidden: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The two devices' logits, or with `hidden` their final hidden states (an encoder's output)."""
        from rfc.runtime.engine.batch import build_batch

        for c in chunks:
            self.blocks.allocate(c.seq_id, c.start + len(c.tokens))
        batch = build_batch(chunks, self.blocks)
        if hidden:
            return self.run.forward_hidden(batch), self.run_ref.forward_hidden(batch)
        return self.run.forward(batch), self.run_ref.forward(batch)


def assert_teacher_forced_within_bounds(pair, model: str, n: int = 40) -> None:
    """The fixture's first n tokens teacher-forced through `pair` (test_gpu_kernels.Pair: a GPU
    device beside the reference): within tests/bounds.py's bounds of the reference for the GPU's
    activation rounding, and of llama.cpp's logits."""
    import numpy as np

    from rfc.runtime.engine.batch import ScheduledChunk
    from tests.bounds import device_bounds, llama_cpp_bounds

    expected = np.load(FIXTURES / f"tiny-{model}.logits.npz")
    tokens = tuple(int(t) for t in expected["tokens"][:n])
    gpu, ref = pair.step([ScheduledChunk(0, 0, tokens, all_logits=True)])
    ok, msg = device_bounds(model, gpu, ref, rounding=gpu_rounding(model, pair.formats, tokens))
    assert ok, msg
    ok, msg = llama_cpp_bounds(model, gpu, expected["logits"][: len(tokens)])
    assert ok, msg


def round_activations(x):
    """x rounded as an int8 GPU matmul rounds its input (for op-level comparisons)."""
    import numpy as np

    from tests.oracle import ACTIVATION_KINDS

    return ACTIVATION_KINDS[GPU_ROUNDING_KIND](np.asarray(x, dtype=np.float64)).astype(np.float32)
