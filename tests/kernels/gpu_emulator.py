"""Runs a bundle's GPU kernels on the host, for kernel tests on machines without a GPU.

The target's generated source (kernels/<target>/rfc.hip or rfc.cu, the exact text the GPU
toolchain built) is compiled with g++ against gpu_emu.h, which emulates rfc_gpu.h with one
fiber per GPU thread. `EmulatedDriver` implements the Driver protocol of
rfc.runtime.devices.gpu_driver over host memory, so the real GpuDevice (load-time checks, the
bound step program, graphs, weights, KV cache) and the kit's GpuOpDevice (each op's kernel as
a one-launch program) drive the emulated kernels.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.codeobject import KernelInfo
from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.artifacts.plan import KVSpec
from rfc.artifacts.targets import TargetEntry, target_entry
from rfc.runtime.devices import gpu_driver_class
from rfc.runtime.devices.gpu import GpuDevice
from tests import testdata
from tests.kernels.kit.gpu import GpuOpDevice

EMU_HEADER = Path(__file__).with_name("gpu_emu.h")
# The mark of the tests that run kernels here: gpu_emu.h's fibers are x86-64 (and g++ builds them).
needs_emulator = pytest.mark.skipif(
    shutil.which("g++") is None or platform.machine() != "x86_64", reason="the GPU emulator needs g++ on x86-64"
)
# g++'s flags for an emulator library. -O1: a bundle's source builds in half the time -O2 takes
# (2.2 against 4.1 s for a 500 KB one) and its kernels run about as fast here; the float
# results are the same bits (no fast-math at either level, and x86-64's baseline has no FMA to
# contract into), which the bit-for-bit tests check.
EMU_CXX_FLAGS = ("-std=c++17", "-O1", "-shared", "-fPIC")


def build_emulator(bundle: Bundle, target: str, build_dir: Path, per_op: bool = False) -> Path:
    """A shared library with `rfc_emu_launch_<kernel>` for every kernel of the target's code
    object (what the runtime's GpuDevice launches), or with `per_op` for each plan op's own
    kernel (what the kit's GpuOpDevice launches), including those that no list launches, which
    the source holds as device functions on a GPU (compiler/codegen/gpu.py op_only_kernels) and
    as kernels here. g++ builds only the kernels a library launches: a test of one path does not
    pay for the other's (of a tiny llama's 51 sm_90 kernels, 15 are op kernels)."""
    entry = target_entry(bundle.manifest, target)
    kernels = sorted(set(entry.op_kernels) if per_op else set(entry.kernel_args))
    return build_source_emulator(bundle.read_text(entry.sources[0]), kernels, build_dir)


def build_source_emulator(source: str, kernels, build_dir: Path) -> Path:
    """A shared library with `rfc_emu_launch_<kernel>` for each of `kernels` of a generated
    GPU source (gpu.render_source's text)."""
    launchers = "".join(
        f'extern "C" void rfc_emu_launch_{k}(int gx, int gy, int gz, int threads, void **params) '
        f"{{ rfc_emu::launch({k}, gx, gy, gz, threads, params); }}\n"
        for k in kernels
    )
    text = f'#define RFC_GPU_EMULATED 1\n#include "{EMU_HEADER}"\n{source}\n{launchers}'
    key = hashlib.sha256(text.encode() + EMU_HEADER.read_bytes()).hexdigest()[:16]
    lib = build_dir / f"emu-{key}.so"
    if not lib.is_file():
        # one worker builds it while the other waits for the library (test workers share build_dir)
        with testdata._locked(build_dir / f"emu-{key}.lock"):
            if not lib.is_file():
                _build(text, key, lib, build_dir)
    return lib


def _build(text: str, key: str, lib: Path, build_dir: Path) -> None:
    """Compiles the emulator library under this process's own names, then renames it into place."""
    build_dir.mkdir(parents=True, exist_ok=True)
    src, tmp = build_dir / f"emu-{key}.{os.getpid()}.cpp", build_dir / f"emu-{key}.{os.getpid()}.so"
    src.write_text(text)
    cmd = ["g++", *EMU_CXX_FLAGS, "-o", str(tmp), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-6000:]}")
    os.replace(tmp, lib)


class EmulatedDriver:
    """Host memory as device memory, emulated kernels as functions."""

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        self._grid_waits = self.lib.rfc_emu_grid_waits  # RFC_GRID_WAIT calls since the last call (gpu_emu.h)
        self._grid_waits.restype = ctypes.c_long
        self._set_order = self.lib.rfc_emu_set_order
        self._set_order.argtypes = [ctypes.c_int]
        self.memory: dict[int, np.ndarray] = {}
        self.launches = 0
        self.overlapped = 0  # launches made with overlap=True
        self.calls: list[tuple] = []  # step-program driver calls, in order
        self._capture: list | None = None
        self._pending: list = []  # what the stream has queued and not run (deferred)

    def record_prefetches(self, on: bool) -> None:
        """Whether the kernels' RFC_PREFETCH_L2 addresses are recorded from now on (gpu_emu.h: the
        record is the library's, shared by the drivers that load it); the record emptied."""
        fn = self.lib.rfc_emu_record_prefetches
        fn.argtypes = [ctypes.c_int]
        fn(1 if on else 0)

    def prefetches(self) -> np.ndarray:
        """The addresses recorded since the last call (or record_prefetches), in order; then none."""
        fn = self.lib.rfc_emu_prefetches
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_long], ctypes.c_long
        out = np.zeros(fn(None, 0), dtype=np.uint64)
        n = fn(out.ctypes.data, out.size)
        if n < 0:
            raise AssertionError("more prefetches than the emulator records")
        return out[:n]

    def malloc(self, nbytes: int) -> int:
        buf = np.full(nbytes, 0xFF, dtype=np.uint8)  # NaN-filled: reads of unwritten memory show
        ptr = buf.ctypes.data
        self.memory[ptr] = buf
        return ptr

    def free(self, ptr: int) -> None:
        del self.memory[ptr]

    def copy_to_device(self, ptr: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        ctypes.memmove(ptr, host.ctypes.data, host.nbytes)

    def copy_to_host(self, host: np.ndarray, ptr: int) -> None:
        ctypes.memmove(host.ctypes.data, ptr, host.nbytes)

    def load_module(self, image: bytes):
        return self.lib

    def function(self, module, name: str):
        fn = getattr(module, f"rfc_emu_launch_{name}")
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        return fn

    # launches may overlap (the Driver protocol's launch_on(overlap=True)): this "stream" runs them
    # one after another anyway, and checks that every thread of an overlapped launch passed
    # RFC_GRID_WAIT once, as the overlap requires (compiler/codegen/gpu_overlap.py)
    overlaps = True
    # -1 runs each launch's blocks, and each pass of a block's threads between two barriers, in
    # reverse index order (gpu_emu.h rfc_emu_set_order): a kernel that races gives other bits
    order = 1

    def launch(self, fn, grid, block, params, overlap: bool = False) -> None:
        assert block[1] == block[2] == 1
        self.launches += 1
        self._grid_waits()  # zeroed
        self._set_order(self.order)  # libraries are shared between drivers: set it every launch
        fn(grid[0], grid[1], grid[2], block[0], ctypes.cast(params, ctypes.c_void_p))
        n = self._grid_waits()
        if overlap:
            self.overlapped += 1
            threads = grid[0] * grid[1] * grid[2] * block[0]
            if n != threads:
                raise AssertionError(
                    f"{fn.__name__}: {n} RFC_GRID_WAIT calls in an overlapped launch of {threads} threads"
                )

    def synchronize(self) -> None:
        self._run_until()

    # -- the GraphDriver protocol (rfc.runtime.devices.gpu_program): one in-order "stream";
    # a captured graph is the list of launches made during capture, replayed in order.
    def malloc_host(self, nbytes: int) -> int:
        self.calls.append(("malloc_host", nbytes))
        return self.malloc(nbytes)

    def free_host(self, ptr: int) -> None:
        self.free(ptr)

    def stream_create(self):
        return "stream"

    # `deferred`: the stream runs what was queued on it only when the host waits (a sync, an
    # event's sync), as a card may: a host buffer rewritten before its copy ran shows then
    deferred = False

    def _queue(self, op) -> None:
        if self.deferred:
            self._pending.append(op)
        else:
            op()

    def _run_until(self, mark=None) -> None:
        while self._pending:
            op = self._pending.pop(0)
            if op is mark:
                return
            op()

    def copy_to_device_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self.calls.append(("h2d", nbytes))
        self._queue(lambda: ctypes.memmove(dst, src, nbytes))

    def copy_to_host_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self.calls.append(("d2h", nbytes))
        self._queue(lambda: ctypes.memmove(dst, src, nbytes))

    def copy_on_device_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self.calls.append(("d2d", nbytes))
        self._queue(lambda: ctypes.memmove(dst, src, nbytes))

    def event_create(self):
        return [None]  # the mark last recorded

    def event_record(self, event, stream) -> None:
        self.calls.append(("record",))
        event[0] = mark = lambda: None  # noqa: E731  a no-op in the queue, found by identity
        self._queue(mark)

    def event_synchronize(self, event) -> None:
        self.calls.append(("event_sync",))
        if event[0] is not None and any(op is event[0] for op in self._pending):
            self._run_until(event[0])

    def event_destroy(self, event) -> None:
        event[0] = None

    def launch_on(self, fn, grid, block, params, stream, overlap: bool = False) -> None:
        assert stream == "stream"
        if self._capture is not None:
            # a graph node keeps the parameter values as they were at capture time
            values = [ctypes.string_at(params[i], 8) for i in range(len(params))]
            self._capture.append((fn, grid, block, values, overlap))
            return
        self.calls.append(("launch",))
        if self.deferred:  # the parameter values as they are now
            values = [ctypes.string_at(params[i], 8) for i in range(len(params))]
            self._queue(lambda: self._replay([(fn, grid, block, values, overlap)]))
        else:
            self.launch(fn, grid, block, params, overlap)

    def capture_begin(self, stream) -> None:
        assert self._capture is None
        self._capture = []

    def capture_end(self, stream):
        graph, self._capture = self._capture, None
        self.calls.append(("capture", len(graph)))
        return graph

    def graph_launch(self, graph, stream) -> None:
        self.calls.append(("graph_launch", len(graph)))
        self._queue(lambda: self._replay(graph))

    def _replay(self, nodes) -> None:
        for fn, grid, block, values, overlap in nodes:
            bufs = [ctypes.create_string_buffer(v, 8) for v in values]
            params = (ctypes.c_void_p * len(bufs))(*[ctypes.addressof(b) for b in bufs])
            self.launch(fn, grid, block, params, overlap)

    def graph_destroy(self, graph) -> None:
        self.calls.append(("graph_destroy", len(graph)))

    def stream_synchronize(self, stream) -> None:
        self.calls.append(("sync",))
        self._run_until()


def _code(bundle: Bundle, target: str) -> tuple[TargetEntry, dict[str, KernelInfo]]:
    """The target's entry and the kernels of its code object, read as its driver reads them."""
    entry = target_entry(bundle.manifest, target)
    code, _image = gpu_driver_class(entry.family).dialect.read_code(bundle.file(entry.kernels).read_bytes(), target)
    return entry, code


def emulated_device(
    bundle: Bundle,
    target: str,
    kv: KVSpec,
    num_blocks: int,
    block_size: int,
    build_dir: Path,
    cache_types: KvCacheTypes = KvCacheTypes(),
) -> GpuOpDevice:
    """The kit's GpuOpDevice (each op's kernel alone) running the target's kernels emulated,
    checked against its code object."""
    entry, code = _code(bundle, target)
    driver = EmulatedDriver(build_emulator(bundle, target, build_dir, per_op=True))
    return GpuOpDevice(driver, bundle, entry, code, b"", kv, num_blocks, block_size, cache_types)


def emulated_step_device(
    bundle: Bundle,
    target: str,
    kv: KVSpec,
    num_blocks: int,
    block_size: int,
    build_dir: Path,
    context_length: int | None = None,
    cache_types: KvCacheTypes = KvCacheTypes(),
) -> GpuDevice:
    """The runtime's GpuDevice (the bound step program, graphs) over the emulated kernels."""
    entry, code = _code(bundle, target)
    driver = EmulatedDriver(build_emulator(bundle, target, build_dir))
    return GpuDevice(driver, bundle, entry, code, b"", kv, num_blocks, block_size, context_length, cache_types)


def loader_driver_class(lib: Path, graphs: list) -> type:
    """A CUDA-dialect driver class over the emulated kernels of `lib` for the real loader
    (rfc.runtime.devices.gpu_driver_class patched to return it: load_model then builds its
    GpuDevice on the emulator); every graph it replays is appended to `graphs`."""
    from rfc.runtime.devices.cuda import CudaDriver

    class Driver(EmulatedDriver):
        dialect = CudaDriver.dialect

        def __init__(self, name: str):
            super().__init__(lib)

        @staticmethod
        def probe(name: str) -> None:
            return None

        def memory_info(self) -> tuple[int, int]:
            return 1 << 30, 1 << 30

        def graph_launch(self, graph, stream) -> None:
            graphs.append(graph)
            super().graph_launch(graph, stream)

    return Driver


def load_emulated(bundle_dir: Path, target: str, build_dir: Path, deferred: bool = False, **options):
    """The bundle loaded by the real loader (load_model, LoadOptions(device="cuda", **options))
    with its GpuDevice over the emulated kernels of `target`, the stream deferred or eager."""
    import rfc.runtime.devices as devices
    from rfc.artifacts.bundle import open_bundle
    from rfc.runtime.engine.assemble import LoadOptions, load_model

    class Driver(loader_driver_class(build_emulator(open_bundle(bundle_dir), target, build_dir), [])):
        pass

    Driver.deferred = deferred
    mp = pytest.MonkeyPatch()
    mp.setattr(devices, "gpu_driver_class", lambda family: Driver)
    try:
        return load_model(bundle_dir, LoadOptions(device="cuda", **options))
    finally:
        mp.undo()


def graph_kernels(graph) -> list[str]:
    """The kernel names of an emulated graph's launches, in order."""
    return [fn.__name__.removeprefix("rfc_emu_launch_") for fn, *_ in graph]
