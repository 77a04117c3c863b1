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
from rfc.runtime.devices.gpu import GpuDevice
from rfc.runtime.devices.gpu_args import target_entry

LIBRARIES = ("libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5")

# hipDeviceProp_t changed layout between ROCm releases (ROCm 6 exports the new one as
# hipGetDevicePropertiesR0600). Rather than trusting one layout's offsets, the properties
# are read into an oversized zeroed buffer and the architecture is found by its shape: the
# NUL-terminated gcnArchName, e.g. "gfx90a:sramecc+:xnack-".
_PROPS_BUFFER = 1 << 16
_ARCH_NAME = re.compile(rb"(gfx[0-9a-f]{3,5})((?::[A-Za-z0-9]+[+-])*)\x00")


class HipDriver:
    def __init__(self, target: str):
        self.lib = _load_library()
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


def _load_library() -> ctypes.CDLL:
    for name in LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.hipGetErrorString.restype = ctypes.c_char_p
        lib.hipGetErrorString.argtypes = [ctypes.c_int]
        return lib
    raise DeviceError(f"no HIP driver: {LIBRARIES[0]} not found")


def probe(target: str) -> str | None:
    """None when this machine can run `target` (a gfx name), else why not."""
    try:
        HipDriver(target)
    except DeviceError as e:
        return str(e)
    return None


class Device(GpuDevice):
    name = "hip"

    def __init__(self, bundle: Bundle, target: str, kv: KVSpec, num_blocks: int, block_size: int):
        driver = HipDriver(target)
        entry = target_entry(bundle, target)
        if "kernels" not in entry:
            raise DeviceError(f"bundle target {target} has no compiled kernels")
        data = bundle.file(entry["kernels"]).read_bytes()
        try:
            code, image = read_hsaco(data, target), unbundle(data, target)
        except CodeObjectError as e:
            raise DeviceError(f"{entry['kernels']}: {e}") from e
        super().__init__(driver, bundle, entry, code, image, kv, num_blocks, block_size)
