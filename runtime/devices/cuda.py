"""NVIDIA GPUs: the CUDA driver API (libcuda) as a GpuDriver dialect (gpu_driver.py)."""

import ctypes
import re
import threading

from rfc.artifacts.codeobject import KernelInfo, read_cubin
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.gpu_driver import CUDA_CALLS, Dialect, GpuDriver

LIBRARIES = ("libcuda.so.1", "libcuda.so")
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}
_SM = re.compile(r"sm_([0-9]+)([0-9])a?")


def target_capability(target: str) -> tuple[int, int]:
    m = _SM.fullmatch(target)
    if m is None:
        raise DeviceError(f"{target} is not a CUDA target (sm_XY)")
    return int(m.group(1)), int(m.group(2))


_P, _I, _U, _S, _U64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t, ctypes.c_uint64
# Every libcuda function called, with its C signature (CUresult is an int).
SIGNATURES: dict[str, list] = {
    "cuInit": [_U],
    "cuDeviceGetCount": [_P],
    "cuDeviceGet": [_P, _I],
    "cuDeviceGetAttribute": [_P, _I, _I],
    "cuDevicePrimaryCtxRetain": [_P, _I],
    "cuCtxSetCurrent": [_P],
    "cuGetErrorName": [_I, _P],
    "cuGetErrorString": [_I, _P],
    "cuMemAlloc_v2": [_P, _S],
    "cuMemFree_v2": [_U64],
    "cuMemcpyHtoD_v2": [_U64, _P, _S],
    "cuModuleLoadData": [_P, _P],
    "cuModuleGetFunction": [_P, _P, ctypes.c_char_p],
    "cuLaunchKernel": [_P, _U, _U, _U, _U, _U, _U, _U, _P, _P, _P],
    "cuCtxSynchronize": [],
    "cuMemAllocHost_v2": [_P, _S],
    "cuMemFreeHost": [_P],
    "cuStreamCreate": [_P, _U],
    "cuMemcpyHtoDAsync_v2": [_U64, _P, _S, _P],
    "cuMemcpyDtoHAsync_v2": [_P, _U64, _S, _P],
    "cuMemcpyDtoDAsync_v2": [_U64, _U64, _S, _P],
    "cuEventCreate": [_P, _U],
    "cuEventRecord": [_P, _P],
    "cuEventSynchronize": [_P],
    "cuEventDestroy_v2": [_P],
    "cuStreamBeginCapture_v2": [_P, _I],
    "cuStreamEndCapture": [_P, _P],
    "cuGraphInstantiateWithFlags": [_P, _P, ctypes.c_ulonglong],
    "cuGraphLaunch": [_P, _P],
    "cuGraphExecDestroy": [_P],
    "cuGraphDestroy": [_P],
    "cuStreamSynchronize": [_P],
    "cuMemGetInfo_v2": [_P, _P],
}


# -- overlapped launches: cuLaunchKernelEx with programmatic stream serialization (sm_90 and newer)
_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute: the id, padded to 8 bytes, then the 64-byte value union (of which the
    programmatic serialization flag is the first int)."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int), ("rest", ctypes.c_char * 60)]


class LaunchConfig(ctypes.Structure):
    """CUlaunchConfig."""

    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_bytes", ctypes.c_uint),
        ("stream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(LaunchAttribute)),
        ("n_attrs", ctypes.c_uint),
    ]


_overlap_local = threading.local()


def _overlap_config(grid: tuple, block: tuple, stream) -> LaunchConfig:
    """The configuration of an overlapped launch (one per thread, refilled each launch: the
    driver reads it during the call)."""
    config = getattr(_overlap_local, "config", None)
    if config is None:
        attr = LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
        config = LaunchConfig(attrs=ctypes.pointer(attr), n_attrs=1)
        _overlap_local.config, _overlap_local.attr = config, attr
    config.grid[:] = grid
    config.block[:] = block
    config.stream = stream.value if isinstance(stream, ctypes.c_void_p) else stream
    return config


def _open_device(driver: GpuDriver, target: str) -> str:
    lib = driver.lib
    count = ctypes.c_int(0)
    driver.check("cuDeviceGetCount", lib.cuDeviceGetCount(ctypes.byref(count)))
    if count.value == 0:
        raise DeviceError("no CUDA device")
    dev = ctypes.c_int(0)
    driver.check("cuDeviceGet", lib.cuDeviceGet(ctypes.byref(dev), 0))
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    driver.check("cuDeviceGetAttribute", lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev))
    driver.check("cuDeviceGetAttribute", lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev))
    arch = f"sm_{major.value}{minor.value}"
    # a cubin runs only on the compute capability it was built for
    if (major.value, minor.value) != target_capability(target):
        raise DeviceError(f"GPU is {arch}, bundle target is {target}")
    context = ctypes.c_void_p()
    driver.check("cuDevicePrimaryCtxRetain", lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), dev))
    driver.check("cuCtxSetCurrent", lib.cuCtxSetCurrent(context))
    driver.bound_to(lambda: driver.check("cuCtxSetCurrent", lib.cuCtxSetCurrent(context)))
    return arch


def _error_string(lib, status: int) -> str:
    name, text = ctypes.c_char_p(), ctypes.c_char_p()
    lib.cuGetErrorName(status, ctypes.byref(name))
    lib.cuGetErrorString(status, ctypes.byref(text))
    label = name.value.decode() if name.value else f"CUresult {status}"
    return f"{label}: {text.value.decode()}" if text.value else label


def _read_code(data: bytes, target: str) -> tuple[dict[str, KernelInfo], bytes]:
    """The kernels of a cubin, which is itself what loads."""
    return read_cubin(data), data


CUDA = Dialect(
    api="CUDA",
    libraries=LIBRARIES,
    calls=CUDA_CALLS,
    signatures=SIGNATURES,
    open_device=_open_device,
    error_string=_error_string,
    read_code=_read_code,
    instantiate_flags=(0,),
    launch_overlapped="cuLaunchKernelEx",
    launch_overlapped_signature=(_P, _P, _P, _P),
    overlap_config=_overlap_config,
)


class CudaDriver(GpuDriver):
    dialect = CUDA
