"""AMD GPUs: the HIP runtime (libamdhip64) as a GpuDriver dialect (gpu_driver.py)."""

import ctypes
import re

from rfc.artifacts.codeobject import KernelInfo, read_hsaco, unbundle
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.gpu_driver import HIP_CALLS, Dialect, GpuDriver

LIBRARIES = ("libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5")

# hipDeviceProp_t changed layout between ROCm releases (ROCm 6 exports the new one as
# hipGetDevicePropertiesR0600). Rather than trusting one layout's offsets, the properties
# are read into an oversized zeroed buffer and the architecture is found by its shape: the
# NUL-terminated gcnArchName, e.g. "gfx90a:sramecc+:xnack-".
_PROPS_BUFFER = 1 << 16
_ARCH_NAME = re.compile(rb"(gfx[0-9a-f]{3,5})((?::[A-Za-z0-9]+[+-])*)\x00")

_P, _I, _U, _S = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t
# Every libamdhip64 function called with a status result (hipError_t is an int), and its C signature.
SIGNATURES: dict[str, list] = {
    "hipInit": [_U],
    "hipGetDeviceCount": [_P],
    "hipSetDevice": [_I],
    "hipMalloc": [_P, _S],
    "hipFree": [_P],
    "hipMemcpyHtoD": [_P, _P, _S],
    "hipModuleLoadData": [_P, _P],
    "hipModuleGetFunction": [_P, _P, ctypes.c_char_p],
    "hipModuleLaunchKernel": [_P, _U, _U, _U, _U, _U, _U, _U, _P, _P, _P],
    "hipDeviceSynchronize": [],
    "hipHostMalloc": [_P, _S, _U],
    "hipHostFree": [_P],
    "hipStreamCreateWithFlags": [_P, _U],
    "hipMemcpyAsync": [_P, _P, _S, _I, _P],
    "hipEventCreateWithFlags": [_P, _U],
    "hipEventRecord": [_P, _P],
    "hipEventSynchronize": [_P],
    "hipEventDestroy": [_P],
    "hipStreamBeginCapture": [_P, _I],
    "hipStreamEndCapture": [_P, _P],
    "hipGraphInstantiate": [_P, _P, _P, _P, _S],
    "hipGraphLaunch": [_P, _P],
    "hipGraphExecDestroy": [_P],
    "hipGraphDestroy": [_P],
    "hipStreamSynchronize": [_P],
    "hipMemGetInfo": [_P, _P],
}
_HOST_TO_DEVICE, _DEVICE_TO_HOST, _DEVICE_TO_DEVICE = 1, 2, 3  # hipMemcpyKind


def _open_device(driver: GpuDriver, target: str) -> str:
    lib = driver.lib
    count = ctypes.c_int(0)
    status = lib.hipGetDeviceCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        raise DeviceError("no HIP device" + (f" (hipGetDeviceCount: {driver.error_string(status)})" if status else ""))
    driver.check("hipSetDevice", lib.hipSetDevice(0))
    props = ctypes.create_string_buffer(_PROPS_BUFFER)
    get = getattr(lib, "hipGetDevicePropertiesR0600", None) or lib.hipGetDeviceProperties
    driver.check("hipGetDeviceProperties", get(props, 0))
    match = _ARCH_NAME.search(props.raw)
    if match is None:
        raise DeviceError("hipGetDeviceProperties returned no gcnArchName")
    arch = match.group(1).decode()
    if arch != target:
        raise DeviceError(f"GPU is {arch}, bundle target is {target}")
    return arch


def _error_string(lib, status: int) -> str:
    msg = lib.hipGetErrorString(status)
    return f"{msg.decode() if msg else 'unknown error'} ({status})"


def _read_code(data: bytes, target: str) -> tuple[dict[str, KernelInfo], bytes]:
    """The kernels of an offload bundle, and the target's code object in it (what loads)."""
    return read_hsaco(data, target), unbundle(data, target)


HIP = Dialect(
    api="HIP",
    libraries=LIBRARIES,
    calls=HIP_CALLS,
    signatures=SIGNATURES,
    text_signatures={"hipGetErrorString": [_I]},
    open_device=_open_device,
    error_string=_error_string,
    read_code=_read_code,
    malloc_host_flags=(0,),  # hipHostMallocDefault
    to_device_kind=(_HOST_TO_DEVICE,),
    to_host_kind=(_DEVICE_TO_HOST,),
    on_device_kind=(_DEVICE_TO_DEVICE,),
    instantiate_flags=(None, None, 0),  # no error node, no log
)


class HipDriver(GpuDriver):
    dialect = HIP
