"""NVIDIA GPUs through the CUDA driver API (libcuda), with ctypes only.

Every driver call goes through `check`, which turns a non-zero CUresult into a DeviceError
carrying the driver's own error name and string.
"""

import ctypes
import re

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.plan import KVSpec
from rfc.runtime.devices import DeviceError
from rfc.artifacts.codeobject import CodeObjectError, read_cubin
from rfc.runtime.devices.gpu_program import GpuStepDevice
from rfc.runtime.devices.gpu_args import target_entry

LIBRARIES = ("libcuda.so.1", "libcuda.so")
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}
_SM = re.compile(r"sm_([0-9]+)([0-9])a?")


def target_capability(target: str) -> tuple[int, int]:
    m = _SM.fullmatch(target)
    if m is None:
        raise DeviceError(f"{target} is not a CUDA target (sm_XY)")
    return int(m.group(1)), int(m.group(2))


_P, _I, _U, _S, _U64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t, ctypes.c_uint64
# Every libcuda function this module calls, with its C signature (CUresult is an int): ctypes
# then converts and checks each argument instead of guessing from the Python value.
SIGNATURES: dict[str, list] = {
    "cuInit": [_U], "cuDeviceGetCount": [_P], "cuDeviceGet": [_P, _I], "cuDeviceGetAttribute": [_P, _I, _I],
    "cuDevicePrimaryCtxRetain": [_P, _I], "cuCtxSetCurrent": [_P], "cuGetErrorName": [_I, _P],
    "cuGetErrorString": [_I, _P], "cuMemAlloc_v2": [_P, _S], "cuMemFree_v2": [_U64],
    "cuMemcpyHtoD_v2": [_U64, _P, _S], "cuMemcpyDtoH_v2": [_P, _U64, _S], "cuModuleLoadData": [_P, _P],
    "cuModuleGetFunction": [_P, _P, ctypes.c_char_p],
    "cuLaunchKernel": [_P, _U, _U, _U, _U, _U, _U, _U, _P, _P, _P], "cuCtxSynchronize": [],
    "cuMemAllocHost_v2": [_P, _S], "cuMemFreeHost": [_P], "cuStreamCreate": [_P, _U],
    "cuMemcpyHtoDAsync_v2": [_U64, _P, _S, _P], "cuMemcpyDtoHAsync_v2": [_P, _U64, _S, _P],
    "cuStreamBeginCapture_v2": [_P, _I], "cuStreamEndCapture": [_P, _P],
    "cuGraphInstantiateWithFlags": [_P, _P, ctypes.c_ulonglong], "cuGraphLaunch": [_P, _P],
    "cuGraphExecDestroy": [_P], "cuGraphDestroy": [_P], "cuStreamSynchronize": [_P], "cuMemGetInfo_v2": [_P, _P],
}
_STREAM_NON_BLOCKING = 1  # CU_STREAM_NON_BLOCKING: no implicit sync with the legacy stream
_CAPTURE_THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL


class CudaDriver:
    def __init__(self, target: str, lib=None):
        self.lib = lib if lib is not None else _load_library()
        status = self.lib.cuInit(0)
        if status != 0:
            raise DeviceError(f"no CUDA device (cuInit: {self.error_string(status)})")
        count = ctypes.c_int(0)
        self.check("cuDeviceGetCount", self.lib.cuDeviceGetCount(ctypes.byref(count)))
        if count.value == 0:
            raise DeviceError("no CUDA device")
        dev = ctypes.c_int(0)
        self.check("cuDeviceGet", self.lib.cuDeviceGet(ctypes.byref(dev), 0))
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self.check("cuDeviceGetAttribute", self.lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev))
        self.check("cuDeviceGetAttribute", self.lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev))
        self.arch = f"sm_{major.value}{minor.value}"
        # a cubin runs only on the compute capability it was built for
        if (major.value, minor.value) != target_capability(target):
            raise DeviceError(f"GPU is {self.arch}, bundle target is {target}")
        self.context = ctypes.c_void_p()
        self.check("cuDevicePrimaryCtxRetain", self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), dev))
        self.check("cuCtxSetCurrent", self.lib.cuCtxSetCurrent(self.context))

    def error_string(self, status: int) -> str:
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        self.lib.cuGetErrorName(status, ctypes.byref(name))
        self.lib.cuGetErrorString(status, ctypes.byref(text))
        label = name.value.decode() if name.value else f"CUresult {status}"
        return f"{label}: {text.value.decode()}" if text.value else label

    def check(self, call: str, status: int) -> None:
        if status != 0:
            raise DeviceError(f"{call} failed: {self.error_string(status)}")

    # -- the Driver protocol of rfc.runtime.devices.gpu ----------------------------------------
    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64(0)
        self.check("cuMemAlloc", self.lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(nbytes)))
        return ptr.value

    def free(self, ptr: int) -> None:
        self.check("cuMemFree", self.lib.cuMemFree_v2(ctypes.c_uint64(ptr)))

    def copy_to_device(self, ptr: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self.check("cuMemcpyHtoD", self.lib.cuMemcpyHtoD_v2(ctypes.c_uint64(ptr), host.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(host.nbytes)))

    def copy_to_host(self, host: np.ndarray, ptr: int) -> None:
        assert host.flags.c_contiguous
        self.check("cuMemcpyDtoH", self.lib.cuMemcpyDtoH_v2(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr), ctypes.c_size_t(host.nbytes)))

    def load_module(self, image: bytes) -> ctypes.c_void_p:
        module = ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(image, len(image))
        self.check("cuModuleLoadData", self.lib.cuModuleLoadData(ctypes.byref(module), self._image))
        return module

    def function(self, module: ctypes.c_void_p, name: str) -> ctypes.c_void_p:
        fn = ctypes.c_void_p()
        self.check(f"cuModuleGetFunction({name})", self.lib.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()))
        return fn

    def launch(self, fn, grid, block, params) -> None:
        u = ctypes.c_uint
        self.check(
            "cuLaunchKernel",
            self.lib.cuLaunchKernel(fn, u(grid[0]), u(grid[1]), u(grid[2]), u(block[0]), u(block[1]), u(block[2]),
                                    u(0), None, params, None),
        )

    def synchronize(self) -> None:
        self.check("cuCtxSynchronize", self.lib.cuCtxSynchronize())

    # -- the GraphDriver protocol of rfc.runtime.devices.gpu_program ------------------------
    def malloc_host(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check("cuMemAllocHost", self.lib.cuMemAllocHost_v2(ctypes.byref(ptr), nbytes))
        return ptr.value

    def free_host(self, ptr: int) -> None:
        self.check("cuMemFreeHost", self.lib.cuMemFreeHost(ptr))

    def stream_create(self) -> ctypes.c_void_p:
        stream = ctypes.c_void_p()
        self.check("cuStreamCreate", self.lib.cuStreamCreate(ctypes.byref(stream), _STREAM_NON_BLOCKING))
        return stream

    def copy_to_device_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self.check("cuMemcpyHtoDAsync", self.lib.cuMemcpyHtoDAsync_v2(dst, src, nbytes, stream))

    def copy_to_host_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        self.check("cuMemcpyDtoHAsync", self.lib.cuMemcpyDtoHAsync_v2(dst, src, nbytes, stream))

    def launch_on(self, fn, grid, block, params, stream) -> None:
        self.check("cuLaunchKernel", self.lib.cuLaunchKernel(fn, *grid, *block, 0, stream, params, None))

    def capture_begin(self, stream) -> None:
        self.check("cuStreamBeginCapture", self.lib.cuStreamBeginCapture_v2(stream, _CAPTURE_THREAD_LOCAL))

    def capture_end(self, stream) -> tuple:
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        self.check("cuStreamEndCapture", self.lib.cuStreamEndCapture(stream, ctypes.byref(graph)))
        self.check("cuGraphInstantiate", self.lib.cuGraphInstantiateWithFlags(ctypes.byref(exe), graph, 0))
        return graph, exe

    def graph_launch(self, graph: tuple, stream) -> None:
        self.check("cuGraphLaunch", self.lib.cuGraphLaunch(graph[1], stream))

    def graph_destroy(self, graph: tuple) -> None:
        self.check("cuGraphExecDestroy", self.lib.cuGraphExecDestroy(graph[1]))
        self.check("cuGraphDestroy", self.lib.cuGraphDestroy(graph[0]))

    def stream_synchronize(self, stream) -> None:
        self.check("cuStreamSynchronize", self.lib.cuStreamSynchronize(stream))

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, from the driver."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.check("cuMemGetInfo", self.lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)))
        return free.value, total.value


def _load_library() -> ctypes.CDLL:
    for name in LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        declare(lib)
        return lib
    raise DeviceError(f"no CUDA driver: {LIBRARIES[0]} not found")


def declare(lib) -> None:
    """Sets argtypes and restype (CUresult: int) of every function in SIGNATURES."""
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int


def memory_info(target: str) -> tuple[int, int]:
    """(free, total) bytes of the device that runs `target`, from the driver (DeviceError if none)."""
    return CudaDriver(target).memory_info()


def probe(target: str) -> str | None:
    """None when this machine can run `target` (sm_XY), else why not."""
    try:
        CudaDriver(target)
    except DeviceError as e:
        return str(e)
    return None


class Device(GpuStepDevice):
    name = "cuda"

    def __init__(self, bundle: Bundle, target: str, kv: KVSpec, num_blocks: int, block_size: int,
                 context_length: int | None = None):
        driver = CudaDriver(target)
        entry = target_entry(bundle, target)
        if "kernels" not in entry:
            raise DeviceError(f"bundle target {target} has no compiled kernels")
        data = bundle.file(entry["kernels"]).read_bytes()
        try:
            code = read_cubin(data)
        except CodeObjectError as e:
            raise DeviceError(f"{entry['kernels']}: {e}") from e
        super().__init__(driver, bundle, entry, code, data, kv, num_blocks, block_size, context_length)
