"""Device selection: a bundle target that matches this machine, else the numpy reference."""

import importlib
import sys
from dataclasses import dataclass
from enum import Enum

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.artifacts.plan import KVSpec
from rfc.artifacts.targets import Family, target_entries, target_entry
from rfc.runtime.core.device import DeviceError  # the devices' error, declared with the device interface


class DeviceKind(str, Enum):
    """What runs a model: the numpy reference or one family of compiled targets. A str, so it
    reads and prints as the --device name."""

    REF = "ref"
    CPU = "cpu"
    HIP = "hip"
    CUDA = "cuda"

    __str__ = str.__str__  # "cpu", not DeviceKind.CPU

    @property
    def family(self) -> Family | None:
        """The family of targets it runs (None: the reference runs the plan itself)."""
        return None if self is DeviceKind.REF else Family(self.value)

    @property
    def is_gpu(self) -> bool:
        return self.family is not None and self.family.is_gpu


@dataclass(frozen=True)
class DeviceChoice:
    name: DeviceKind
    target: str | None  # the bundle target it runs ("cpu", "gfx1100", "sm_90"), None for ref


# Preference among the compiled families when the device is "auto": a GPU first.
_AUTO = (DeviceKind.HIP, DeviceKind.CUDA, DeviceKind.CPU)


def choose_device(bundle: Bundle, requested: str = "auto") -> DeviceChoice:
    """The device to run on: a GPU target this machine has, else the best CPU variant it
    supports (highest rank: cpu-amx over cpu-avx512 over cpu over cpu-generic), else the reference."""
    names = [t.get("name") for t in bundle.manifest["targets"]]
    if requested == DeviceKind.REF:
        return DeviceChoice(DeviceKind.REF, None)
    if requested != "auto" and requested not in (DeviceKind.CPU, DeviceKind.HIP, DeviceKind.CUDA):
        raise DeviceError(f"unknown device '{requested}' (expected auto, ref, cpu, hip or cuda)")
    wanted = _AUTO if requested == "auto" else (DeviceKind(requested),)
    known = target_entries(bundle.manifest)  # a target this rfc does not know (a newer bundle's) is never chosen
    for kind in wanted:
        for entry in sorted((e for e in known if e.family is kind.family), key=lambda e: -e.target.rank):
            if entry.kernels and _present(kind, entry.name):
                return DeviceChoice(kind, entry.name)
    if requested == "auto":
        why = (
            f"no compiled target of this bundle ({', '.join(map(str, names))}) runs on this machine"
            if names
            else "this bundle has no compiled kernels (--reference-only)"
        )
        print(f"rfc: warning: {why}; using the numpy reference device (slow)", file=sys.stderr)
        return DeviceChoice(DeviceKind.REF, None)
    reasons = [
        f"{e.name}: {probe_reason(wanted[0], e.name) or 'not compiled'}" for e in known if e.family is wanted[0].family
    ]
    raise DeviceError(
        f"device '{requested}' requested, but no bundle target can run it here "
        f"(bundle targets: {', '.join(map(str, names))}{'; ' + '; '.join(reasons) if reasons else ''})"
    )


# The module of each compiled family: cpu exposes `probe(target) -> str | None` (None when the
# machine can run that target, else the reason it cannot) and `Device(...)`; a GPU family its
# driver class (runtime/devices/gpu_driver.py GpuDriver with the family's dialect).
_CPU_MODULE = "rfc.runtime.devices.cpu"
_GPU_DRIVERS = {
    Family.HIP: ("rfc.runtime.devices.hip", "HipDriver"),
    Family.CUDA: ("rfc.runtime.devices.cuda", "CudaDriver"),
}


def gpu_driver_class(family: Family):
    """The driver class of a GPU family (a GpuDriver)."""
    module, name = _GPU_DRIVERS[family]
    return getattr(importlib.import_module(module), name)


def _present(kind: DeviceKind, target: str) -> bool:
    try:
        return _probe(kind, target) is None
    except ImportError:
        return False


def probe_reason(kind: DeviceKind | str, target: str) -> str | None:
    """None when this machine can run `target` on a `kind` device (or its name), else why not."""
    kind = DeviceKind(kind)
    try:
        return _probe(kind, target)
    except ImportError as e:
        return f"{kind} device support is not installed ({e})"


def _probe(kind: DeviceKind, target: str) -> str | None:
    if kind.is_gpu:
        return gpu_driver_class(kind.family).probe(target)
    return importlib.import_module(_CPU_MODULE).probe(target)


def create_device(
    choice: DeviceChoice,
    bundle: Bundle,
    kv: KVSpec,
    num_blocks: int,
    block_size: int,
    context_length: int | None = None,
    threads: int | None = None,
    cache_types: KvCacheTypes = KvCacheTypes(),
):
    """`context_length`: the longest sequence served (--ctx-size; default the plan's), which
    bounds the block tables a device sizes ahead of the batches. `threads`: the cpu step
    program's team (--threads; None: the cores in the affinity mask); GPUs ignore it.
    `cache_types`: how K and V are stored (--cache-type-k/-v; artifacts/kv_cache_type.py)."""
    if choice.name is DeviceKind.REF:
        from rfc.runtime.devices.reference import ReferenceDevice

        return ReferenceDevice(bundle, kv, num_blocks, block_size, cache_types)
    if choice.name.is_gpu:
        from rfc.runtime.devices.gpu import open_device

        driver = gpu_driver_class(choice.name.family)(choice.target)
        return open_device(driver, bundle, choice.target, kv, num_blocks, block_size, context_length, cache_types)
    return importlib.import_module(_CPU_MODULE).Device(
        bundle,
        choice.target,
        kv,
        num_blocks,
        block_size,
        n_threads=threads,
        context_length=context_length,
        cache_types=cache_types,
    )


# -- memory, for sizing the KV pool from a budget (runtime/engine/kv_budget.py) -------------------------


def gpu_memory_info(choice: DeviceChoice) -> tuple[int, int]:
    """(free, total) bytes of the GPU that `choice` runs on, from its driver."""
    return gpu_driver_class(choice.name.family)(choice.target).memory_info()


def gpu_resident_bytes(bundle: Bundle, target: str) -> int:
    """Device bytes a GPU device keeps besides its KV cache: the weights and the step
    program's activation arena (sized at compile time)."""
    from rfc.artifacts.program import unpack_program
    from rfc.runtime.devices.gpu import device_weight_bytes

    entry = target_entry(bundle.manifest, target)
    if entry is None:
        raise DeviceError(f"bundle {bundle.root} has no target {target}")
    arena = unpack_program(bundle.file(entry.program).read_bytes()).arena.total_bytes if entry.program else 0
    return device_weight_bytes(bundle, entry) + arena
