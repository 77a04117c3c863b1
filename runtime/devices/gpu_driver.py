"""The GPU driver: one class over the HIP runtime (hip.py) or the CUDA driver API (cuda.py),
with ctypes only.

The two APIs differ in function names, in a few constant arguments one takes and the other
does not, and in how a device is found and an error described. A `Dialect` says all of that
as data (tinygrad's CStyleLanguage declares a backend's dialect as attributes the same way);
`GpuDriver` makes the calls, each through `check`, which turns a non-zero status into a
DeviceError carrying the driver's own error string (tinygrad's runtime/ops_hip.py does the
same). A family binds its dialect to the class: hip.HipDriver, cuda.CudaDriver.
"""

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import numpy as np

from rfc.artifacts.codeobject import KernelInfo
from rfc.runtime.devices import DeviceError

log = logging.getLogger("rfc.device")


class Driver(Protocol):
    """What the GPU device and its step program need of a driver (GpuDriver; the kernel tests'
    emulator); every call raises DeviceError on failure."""

    def malloc(self, nbytes: int) -> int: ...

    def free(self, ptr: int) -> None: ...

    def copy_to_device(self, ptr: int, host: np.ndarray) -> None: ...

    def load_module(self, image: bytes) -> Any: ...

    def function(self, module: Any, name: str) -> Any: ...

    def synchronize(self) -> None: ...

    def malloc_host(self, nbytes: int) -> int: ...  # pinned (page-locked) host memory

    def free_host(self, ptr: int) -> None: ...

    def stream_create(self) -> Any: ...

    def copy_to_device_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None: ...

    def copy_to_host_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None: ...

    def copy_on_device_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None: ...

    # an event marks a point in a stream; the host waits for it while what was queued after it runs
    def event_create(self) -> Any: ...

    def event_record(self, event: Any, stream: Any) -> None: ...

    def event_synchronize(self, event: Any) -> None: ...

    def event_destroy(self, event: Any) -> None: ...

    # whether launch_on(overlap=True) overlaps: the kernel may start while the kernel before it in
    # the stream runs (its code waits for it: compiler/codegen/gpu_overlap.py); where not, the
    # launch is plain
    overlaps: bool

    def launch_on(
        self,
        fn: Any,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        params: ctypes.Array,
        stream: Any,
        overlap: bool = False,
    ) -> None: ...

    def capture_begin(self, stream: Any) -> None: ...

    def capture_end(self, stream: Any) -> Any: ...  # an instantiated, launchable graph

    def graph_launch(self, graph: Any, stream: Any) -> None: ...

    def graph_destroy(self, graph: Any) -> None: ...

    def stream_synchronize(self, stream: Any) -> None: ...

    def memory_info(self) -> tuple[int, int]: ...  # (free, total) bytes of device memory


@dataclass(frozen=True)
class Calls:
    """The C function behind each driver operation (every one returns a status)."""

    init: str
    malloc: str
    free: str
    copy_to_device: str
    load_module: str
    get_function: str
    synchronize: str
    malloc_host: str
    free_host: str
    stream_create: str
    copy_to_device_async: str
    copy_to_host_async: str
    copy_on_device_async: str
    event_create: str
    event_record: str
    event_synchronize: str
    event_destroy: str
    launch: str
    capture_begin: str
    capture_end: str
    graph_instantiate: str
    graph_launch: str
    graph_exec_destroy: str
    graph_destroy: str
    stream_synchronize: str
    memory_info: str

    def names(self) -> set[str]:
        return {getattr(self, f.name) for f in fields(self)}


# The two APIs side by side: the same operations under other names (and, for a few, other
# arguments: Dialect's constant-argument fields).
#   operation               HIP (libamdhip64)            CUDA (libcuda)
_CALL_NAMES = (
    ("init",                 "hipInit",                   "cuInit"),
    ("malloc",               "hipMalloc",                 "cuMemAlloc_v2"),
    ("free",                 "hipFree",                   "cuMemFree_v2"),
    ("copy_to_device",       "hipMemcpyHtoD",             "cuMemcpyHtoD_v2"),
    ("load_module",          "hipModuleLoadData",         "cuModuleLoadData"),
    ("get_function",         "hipModuleGetFunction",      "cuModuleGetFunction"),
    ("synchronize",          "hipDeviceSynchronize",      "cuCtxSynchronize"),
    ("malloc_host",          "hipHostMalloc",             "cuMemAllocHost_v2"),
    ("free_host",            "hipHostFree",               "cuMemFreeHost"),
    ("stream_create",        "hipStreamCreateWithFlags",  "cuStreamCreate"),
    ("copy_to_device_async", "hipMemcpyAsync",            "cuMemcpyHtoDAsync_v2"),
    ("copy_to_host_async",   "hipMemcpyAsync",            "cuMemcpyDtoHAsync_v2"),
    ("copy_on_device_async", "hipMemcpyAsync",            "cuMemcpyDtoDAsync_v2"),
    ("event_create",         "hipEventCreateWithFlags",   "cuEventCreate"),
    ("event_record",         "hipEventRecord",            "cuEventRecord"),
    ("event_synchronize",    "hipEventSynchronize",       "cuEventSynchronize"),
    ("event_destroy",        "hipEventDestroy",           "cuEventDestroy_v2"),
    ("launch",               "hipModuleLaunchKernel",     "cuLaunchKernel"),
    ("capture_begin",        "hipStreamBeginCapture",     "cuStreamBeginCapture_v2"),
    ("capture_end",          "hipStreamEndCapture",       "cuStreamEndCapture"),
    ("graph_instantiate",    "hipGraphInstantiate",       "cuGraphInstantiateWithFlags"),
    ("graph_launch",         "hipGraphLaunch",            "cuGraphLaunch"),
    ("graph_exec_destroy",   "hipGraphExecDestroy",       "cuGraphExecDestroy"),
    ("graph_destroy",        "hipGraphDestroy",           "cuGraphDestroy"),
    ("stream_synchronize",   "hipStreamSynchronize",      "cuStreamSynchronize"),
    ("memory_info",          "hipMemGetInfo",             "cuMemGetInfo_v2"),
)  # fmt: skip
HIP_CALLS = Calls(**{op: hip for op, hip, _cuda in _CALL_NAMES})
CUDA_CALLS = Calls(**{op: cuda for op, _hip, cuda in _CALL_NAMES})


@dataclass(frozen=True)
class Dialect:
    """One GPU API as data: what GpuDriver calls, and the few procedures that differ."""

    api: str  # how messages name it: "HIP", "CUDA"
    libraries: tuple[str, ...]  # the shared library, the first one found
    calls: Calls
    # every C function called with a status result, and its argument types (ctypes then
    # converts and checks each argument instead of guessing from the Python value)
    signatures: dict[str, list]
    # selects device 0 for `target` (DeviceError when it cannot run it); returns its architecture name
    open_device: Callable[["GpuDriver", str], str]
    error_string: Callable[[Any, int], str]  # (library, status) -> the driver's own words
    # the kernels and argument layouts of a code object, and the image the driver loads
    read_code: Callable[[bytes, str], tuple[dict[str, KernelInfo], bytes]]
    text_signatures: dict[str, list] = field(default_factory=dict)  # functions returning a C string (error text)
    # the constant arguments only one API takes, and where they go
    malloc_host_flags: tuple = ()  # after (pointer, bytes)
    to_device_kind: tuple = ()  # before the stream of an async copy
    to_host_kind: tuple = ()
    on_device_kind: tuple = ()
    instantiate_flags: tuple = ()  # after (graph exec, graph)
    stream_flags: int = 1  # a non-blocking stream: no implicit sync with the legacy stream
    event_flags: int = 2  # CU_EVENT_DISABLE_TIMING / hipEventDisableTiming: a marker, no clock read
    capture_mode: int = 1  # thread-local stream capture
    # the launch with attributes that overlaps a kernel with the one before it (CUDA's
    # cuLaunchKernelEx with programmatic stream serialization), its signature, and the function
    # that builds its configuration: "" where the API has none; a library without the function
    # (an older driver) launches plainly
    launch_overlapped: str = ""
    launch_overlapped_signature: tuple = ()
    overlap_config: Callable[[tuple, tuple, Any], Any] | None = None

    def declare(self, lib) -> None:
        """Sets argtypes and restype of every function in the signatures."""
        for name, argtypes in self.signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        for name, argtypes in self.text_signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_char_p

    def load_library(self):
        for name in self.libraries:
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            self.declare(lib)
            if self.launch_overlapped and hasattr(lib, self.launch_overlapped):
                fn = getattr(lib, self.launch_overlapped)
                fn.argtypes, fn.restype = list(self.launch_overlapped_signature), ctypes.c_int
            return lib
        raise DeviceError(f"no {self.api} driver: {self.libraries[0]} not found")


class GpuDriver:
    """A GPU through its family's dialect (the subclass's `dialect`)."""

    dialect: ClassVar[Dialect]
    overlaps: bool = False  # whether launch_on(overlap=True) overlaps (the library has the launch)
    bind_thread: Callable[[], None] | None = None  # what a thread runs before its first call (bound_to)
    _bound: threading.local | None = None

    def __init__(self, target: str, lib=None):
        d = self.dialect
        self.lib = lib if lib is not None else d.load_library()
        self.overlaps = bool(d.launch_overlapped) and hasattr(self.lib, d.launch_overlapped)
        # the init call reports "no device" as an error status on machines without a GPU
        status = getattr(self.lib, d.calls.init)(0)
        if status != 0:
            raise DeviceError(f"no {d.api} device ({d.calls.init}: {self.error_string(status)})")
        self.arch = d.open_device(self, target)

    @classmethod
    def probe(cls, target: str) -> str | None:
        """None when this machine can run `target`, else why not."""
        try:
            cls(target)
        except DeviceError as e:
            return str(e)
        return None

    def error_string(self, status: int) -> str:
        return self.dialect.error_string(self.lib, status)

    def check(self, call: str, status: int) -> None:
        if status != 0:
            raise DeviceError(f"{call} failed: {self.error_string(status)}")

    def _call(self, name: str, *args, what: str = "") -> None:
        if self.bind_thread is not None and not getattr(self._bound, "done", False):
            self.bind_thread()
            self._bound.done = True
        self.check(what or name.removesuffix("_v2"), getattr(self.lib, name)(*args))

    def bound_to(self, bind: Callable[[], None]) -> None:
        """Makes every thread that calls the driver run `bind` first, once (CUDA: the device's
        context made current there). The driver API keeps the current context per thread, so
        a thread other than the one that opened the device (an HTTP worker reading the free
        memory for /health, a request freeing its pages) would call with none at all:
        CUDA_ERROR_INVALID_CONTEXT. The opening thread is bound already."""
        self._bound = threading.local()
        self._bound.done = True
        self.bind_thread = bind

    # -- memory and modules --------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64(0)
        self._call(self.dialect.calls.malloc, ctypes.byref(ptr), ctypes.c_size_t(nbytes))
        return ptr.value

    def free(self, ptr: int) -> None:
        self._call(self.dialect.calls.free, ptr)

    def copy_to_device(self, ptr: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self._call(self.dialect.calls.copy_to_device, ptr, host.ctypes.data, host.nbytes)

    def load_module(self, image: bytes) -> ctypes.c_void_p:
        module = ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(image, len(image))  # kept alive with the module
        self._call(self.dialect.calls.load_module, ctypes.byref(module), self._image)
        return module

    def function(self, module: ctypes.c_void_p, name: str) -> ctypes.c_void_p:
        fn = ctypes.c_void_p()
        call = self.dialect.calls.get_function
        self._call(call, ctypes.byref(fn), module, name.encode(), what=f"{call}({name})")
        return fn

    def synchronize(self) -> None:
        self._call(self.dialect.calls.synchronize)

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, from the driver."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._call(self.dialect.calls.memory_info, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    # -- what the step program needs: pinned staging, a stream, graphs ---------------------------
    def malloc_host(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._call(self.dialect.calls.malloc_host, ctypes.byref(ptr), nbytes, *self.dialect.malloc_host_flags)
        return ptr.value

    def free_host(self, ptr: int) -> None:
        self._call(self.dialect.calls.free_host, ptr)

    def stream_create(self) -> ctypes.c_void_p:
        stream = ctypes.c_void_p()
        self._call(self.dialect.calls.stream_create, ctypes.byref(stream), self.dialect.stream_flags)
        return stream

    def copy_to_device_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self._call(self.dialect.calls.copy_to_device_async, dst, src, nbytes, *self.dialect.to_device_kind, stream)

    def copy_to_host_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self._call(self.dialect.calls.copy_to_host_async, dst, src, nbytes, *self.dialect.to_host_kind, stream)

    def copy_on_device_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self._call(self.dialect.calls.copy_on_device_async, dst, src, nbytes, *self.dialect.on_device_kind, stream)

    # events: a point in a stream that the host can wait for while the work queued after it runs
    def event_create(self) -> ctypes.c_void_p:
        event = ctypes.c_void_p()
        self._call(self.dialect.calls.event_create, ctypes.byref(event), self.dialect.event_flags)
        return event

    def event_record(self, event, stream) -> None:
        self._call(self.dialect.calls.event_record, event, stream)

    def event_synchronize(self, event) -> None:
        self._call(self.dialect.calls.event_synchronize, event)

    def event_destroy(self, event) -> None:
        self._call(self.dialect.calls.event_destroy, event)

    def launch_on(self, fn, grid, block, params, stream, overlap: bool = False) -> None:
        if overlap and self.overlaps:
            config = self.dialect.overlap_config(grid, block, stream)
            status = getattr(self.lib, self.dialect.launch_overlapped)(ctypes.byref(config), fn, params, None)
            if status == 0:
                return
            # a driver that refuses the overlapped launch gets plain ones from now on: the kernels
            # are the same (their wait is then a no-op), only the overlap is lost
            self.overlaps = False
            log.warning(
                "%s refused an overlapped launch (%s): launching one kernel after another",
                self.dialect.launch_overlapped,
                self.error_string(status),
            )
        self._call(self.dialect.calls.launch, fn, *grid, *block, 0, stream, params, None)

    def capture_begin(self, stream) -> None:
        self._call(self.dialect.calls.capture_begin, stream, self.dialect.capture_mode)

    def capture_end(self, stream) -> tuple:
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        calls = self.dialect.calls
        self._call(calls.capture_end, stream, ctypes.byref(graph))
        self._call(calls.graph_instantiate, ctypes.byref(exe), graph, *self.dialect.instantiate_flags)
        return graph, exe

    def graph_launch(self, graph: tuple, stream) -> None:
        self._call(self.dialect.calls.graph_launch, graph[1], stream)

    def graph_destroy(self, graph: tuple) -> None:
        self._call(self.dialect.calls.graph_exec_destroy, graph[1])
        self._call(self.dialect.calls.graph_destroy, graph[0])

    def stream_synchronize(self, stream) -> None:
        self._call(self.dialect.calls.stream_synchronize, stream)
