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
from rfc.runtime.devices.gpu import GpuDevice
from rfc.runtime.devices.gpu_args import target_entry

LIBRARIES = ("libcuda.so.1", "libcuda.so")
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}
_SM = re.compile(r"sm_([0-9]+)([0-9])a?")


def target_capability(target: str) -> tuple[int, int]:
    m = _SM.fullmatch(target)
    if m is None:
        raise DeviceError(f"{target} is not a CUDA target (sm_XY)")
    return int(m.group(1)), int(m.group(2))


class CudaDriver:
    def __init__(self, target: str):
        self.lib = _load_library()
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


def _load_library() -> ctypes.CDLL:
    for name in LIBRARIES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise DeviceError(f"no CUDA driver: {LIBRARIES[0]} not found")


def probe(target: str) -> str | None:
    """None when this machine can run `target` (sm_XY), else why not."""
    try:
        CudaDriver(target)
    except DeviceError as e:
        return str(e)
    return None


class Device(GpuDevice):
    name = "cuda"

    def __init__(self, bundle: Bundle, target: str, kv: KVSpec, num_blocks: int, block_size: int):
        driver = CudaDriver(target)
        entry = target_entry(bundle, target)
        if "kernels" not in entry:
            raise DeviceError(f"bundle target {target} has no compiled kernels")
        data = bundle.file(entry["kernels"]).read_bytes()
        try:
            code = read_cubin(data)
        except CodeObjectError as e:
            raise DeviceError(f"{entry['kernels']}: {e}") from e
        super().__init__(driver, bundle, entry, code, data, kv, num_blocks, block_size)
