"""AMD GPUs through the HIP runtime (libamdhip64), with ctypes only.

Every HIP call goes through `check`, which turns a non-zero status into a DeviceError
carrying HIP's own error string (tinygrad's runtime/ops_hip.py does the same).
"""

import ctypes
import re

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.plan import KVSpec
from rfc.runtime.devices import DeviceError
from rfc.artifacts.codeobject import CodeObjectError, read_hsaco, unbundle
from rfc.runtime.devices.gpu_program import GpuStepDevice
from rfc.runtime.devices.gpu_args import target_entry

LIBRARIES = ("libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5")

# hipDeviceProp_t changed layout between ROCm releases (ROCm 6 exports the new one as
# hipGetDevicePropertiesR0600). Rather than trusting one layout's offsets, the properties
# are read into an oversized zeroed buffer and the architecture is found by its shape: the
# NUL-terminated gcnArchName, e.g. "gfx90a:sramecc+:xnack-".
_PROPS_BUFFER = 1 << 16
_ARCH_NAME = re.compile(rb"(gfx[0-9a-f]{3,5})((?::[A-Za-z0-9]+[+-])*)\x00")


_P, _I, _U, _S = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t
# Every libamdhip64 function this module calls, with its C signature (hipError_t is an int).
SIGNATURES: dict[str, list] = {
    "hipInit": [_U], "hipGetDeviceCount": [_P], "hipSetDevice": [_I], "hipMalloc": [_P, _S], "hipFree": [_P],
    "hipMemcpyHtoD": [_P, _P, _S], "hipMemcpyDtoH": [_P, _P, _S], "hipModuleLoadData": [_P, _P],
    "hipModuleGetFunction": [_P, _P, ctypes.c_char_p],
    "hipModuleLaunchKernel": [_P, _U, _U, _U, _U, _U, _U, _U, _P, _P, _P], "hipDeviceSynchronize": [],
    "hipHostMalloc": [_P, _S, _U], "hipHostFree": [_P], "hipStreamCreateWithFlags": [_P, _U],
    "hipMemcpyAsync": [_P, _P, _S, _I, _P], "hipStreamBeginCapture": [_P, _I], "hipStreamEndCapture": [_P, _P],
    "hipGraphInstantiate": [_P, _P, _P, _P, _S], "hipGraphLaunch": [_P, _P], "hipGraphExecDestroy": [_P],
    "hipGraphDestroy": [_P], "hipStreamSynchronize": [_P], "hipMemGetInfo": [_P, _P],
}
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2  # hipMemcpyKind
_STREAM_NON_BLOCKING = 1  # hipStreamNonBlocking
_CAPTURE_THREAD_LOCAL = 1  # hipStreamCaptureModeThreadLocal


class HipDriver:
    def __init__(self, target: str, lib=None):
        self.lib = lib if lib is not None else _load_library()
        # hipInit reports "no device" as an error status on machines without a GPU
        status = self.lib.hipInit(0)
        if status != 0:
            raise DeviceError(f"no HIP device (hipInit: {self.error_string(status)})")
        count = ctypes.c_int(0)
        status = self.lib.hipGetDeviceCount(ctypes.byref(count))
        if status != 0 or count.value == 0:
            raise DeviceError("no HIP device" + (f" (hipGetDeviceCount: {self.error_string(status)})" if status else ""))
        self.check("hipSetDevice", self.lib.hipSetDevice(0))
        self.arch = self._arch()
        if self.arch != target:
            raise DeviceError(f"GPU is {self.arch}, bundle target is {target}")

    def error_string(self, status: int) -> str:
        msg = self.lib.hipGetErrorString(status)
        return f"{msg.decode() if msg else 'unknown error'} ({status})"

    def check(self, call: str, status: int) -> None:
        if status != 0:
            raise DeviceError(f"{call} failed: {self.error_string(status)}")

    def _arch(self) -> str:
        props = ctypes.create_string_buffer(_PROPS_BUFFER)
        get = getattr(self.lib, "hipGetDevicePropertiesR0600", None) or self.lib.hipGetDeviceProperties
        self.check("hipGetDeviceProperties", get(props, 0))
        match = _ARCH_NAME.search(props.raw)
        if match is None:
            raise DeviceError("hipGetDeviceProperties returned no gcnArchName")
        return match.group(1).decode()

    # -- the Driver protocol of rfc.runtime.devices.gpu ----------------------------------------
    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check("hipMalloc", self.lib.hipMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)))
        return ptr.value

    def free(self, ptr: int) -> None:
        self.check("hipFree", self.lib.hipFree(ctypes.c_void_p(ptr)))

    def copy_to_device(self, ptr: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self.check("hipMemcpyHtoD", self.lib.hipMemcpyHtoD(ctypes.c_void_p(ptr), host.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(host.nbytes)))

    def copy_to_host(self, host: np.ndarray, ptr: int) -> None:
        assert host.flags.c_contiguous
        self.check("hipMemcpyDtoH", self.lib.hipMemcpyDtoH(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr), ctypes.c_size_t(host.nbytes)))

    def load_module(self, image: bytes) -> ctypes.c_void_p:
        module = ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(image, len(image))  # kept alive with the module
        self.check("hipModuleLoadData", self.lib.hipModuleLoadData(ctypes.byref(module), self._image))
        return module

    def function(self, module: ctypes.c_void_p, name: str) -> ctypes.c_void_p:
        fn = ctypes.c_void_p()
        self.check(f"hipModuleGetFunction({name})", self.lib.hipModuleGetFunction(ctypes.byref(fn), module, name.encode()))
        return fn

    def launch(self, fn, grid, block, params) -> None:
        u = ctypes.c_uint
        self.check(
            "hipModuleLaunchKernel",
            self.lib.hipModuleLaunchKernel(fn, u(grid[0]), u(grid[1]), u(grid[2]), u(block[0]), u(block[1]), u(block[2]),
                                           u(0), None, params, None),
        )

    def synchronize(self) -> None:
        self.check("hipDeviceSynchronize", self.lib.hipDeviceSynchronize())

    # -- the GraphDriver protocol of rfc.runtime.devices.gpu_program ------------------------
    def malloc_host(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check("hipHostMalloc", self.lib.hipHostMalloc(ctypes.byref(ptr), nbytes, 0))
        return ptr.value

    def free_host(self, ptr: int) -> None:
        self.check("hipHostFree", self.lib.hipHostFree(ptr))

    def stream_create(self) -> ctypes.c_void_p:
        stream = ctypes.c_void_p()
        self.check("hipStreamCreateWithFlags", self.lib.hipStreamCreateWithFlags(ctypes.byref(stream), _STREAM_NON_BLOCKING))
        return stream

    def copy_to_device_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self.check("hipMemcpyAsync", self.lib.hipMemcpyAsync(dst, src, nbytes, _HOST_TO_DEVICE, stream))

    def copy_to_host_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self.check("hipMemcpyAsync", self.lib.hipMemcpyAsync(dst, src, nbytes, _DEVICE_TO_HOST, stream))

    def launch_on(self, fn, grid, block, params, stream) -> None:
        self.check("hipModuleLaunchKernel", self.lib.hipModuleLaunchKernel(fn, *grid, *block, 0, stream, params, None))

    def capture_begin(self, stream) -> None:
        self.check("hipStreamBeginCapture", self.lib.hipStreamBeginCapture(stream, _CAPTURE_THREAD_LOCAL))

    def capture_end(self, stream) -> tuple:
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        self.check("hipStreamEndCapture", self.lib.hipStreamEndCapture(stream, ctypes.byref(graph)))
        self.check("hipGraphInstantiate", self.lib.hipGraphInstantiate(ctypes.byref(exe), graph, None, None, 0))
        return graph, exe

    def graph_launch(self, graph: tuple, stream) -> None:
        self.check("hipGraphLaunch", self.lib.hipGraphLaunch(graph[1], stream))

    def graph_destroy(self, graph: tuple) -> None:
        self.check("hipGraphExecDestroy", self.lib.hipGraphExecDestroy(graph[1]))
        self.check("hipGraphDestroy", self.lib.hipGraphDestroy(graph[0]))

    def stream_synchronize(self, stream) -> None:
        self.check("hipStreamSynchronize", self.lib.hipStreamSynchronize(stream))

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, from the runtime."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.check("hipMemGetInfo", self.lib.hipMemGetInfo(ctypes.byref(free), ctypes.byref(total)))
        return free.value, total.value


def _load_library() -> ctypes.CDLL:
    for name in LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.hipGetErrorString.restype = ctypes.c_char_p
        lib.hipGetErrorString.argtypes = [ctypes.c_int]
        declare(lib)
        return lib
    raise DeviceError(f"no HIP driver: {LIBRARIES[0]} not found")


def declare(lib) -> None:
    """Sets argtypes and restype (hipError_t: int) of every function in SIGNATURES."""
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int


def memory_info(target: str) -> tuple[int, int]:
    """(free, total) bytes of the device that runs `target`, from the driver (DeviceError if none)."""
    return HipDriver(target).memory_info()


def probe(target: str) -> str | None:
    """None when this machine can run `target` (a gfx name), else why not."""
    try:
        HipDriver(target)
    except DeviceError as e:
        return str(e)
    return None


class Device(GpuStepDevice):
    name = "hip"

    def __init__(self, bundle: Bundle, target: str, kv: KVSpec, num_blocks: int, block_size: int,
                 context_length: int | None = None):
        driver = HipDriver(target)
        entry = target_entry(bundle, target)
        if "kernels" not in entry:
            raise DeviceError(f"bundle target {target} has no compiled kernels")
        data = bundle.file(entry["kernels"]).read_bytes()
        try:
            code, image = read_hsaco(data, target), unbundle(data, target)
        except CodeObjectError as e:
            raise DeviceError(f"{entry['kernels']}: {e}") from e
        super().__init__(driver, bundle, entry, code, image, kv, num_blocks, block_size, context_length)
