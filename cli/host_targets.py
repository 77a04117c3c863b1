"""The targets a GGUF is compiled for when no `--arch` is given to `rfc serve model.gguf` or
`rfc run model.gguf`: the bundle lands in this machine's cache, so it is built for this
machine — every GPU architecture present whose toolchain is installed, and the best CPU
variant the host runs (cpu-amx over cpu-avx512 over cpu over cpu-generic). `rfc compile`
keeps its portable default and uses this only to say what the host could add.

What is looked at, and nothing is started: NVIDIA GPUs through the driver (libcuda's compute
capability: sm_XY), AMD GPUs through the amdgpu driver's KFD topology in sysfs
(gfx_target_version: gfx*), the CPU's /proc/cpuinfo flags against each cpu target's ISA
(artifacts/targets.py) and, for cpu-amx, whether the OS grants this process the AMX tile
state. `HostProbe` holds every source, so a test fakes a host by handing in its own."""

import ctypes
import platform
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rfc.artifacts.targets import CPU_TARGETS, Family, Target, TargetError, missing_isa, parse_target

# The portable default: `rfc compile` without --arch, and a host no cpu variant fits.
PORTABLE_CPU = "cpu"
# Each GPU family's compiler (compiler/codegen/gpu.py TOOLCHAINS): a GPU without it is left to
# --arch, with the reason said, rather than failing the whole compile.
_TOOLCHAIN = {Family.CUDA: ("nvcc", "the CUDA toolkit"), Family.HIP: ("hipcc", "ROCm")}

_CUDA_LIBRARIES = ("libcuda.so.1", "libcuda.so")  # as runtime/devices/cuda.py loads it
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}
_MAX_DEVICES = 64  # GPUs enumerated at most (a driver's count is not trusted blindly)
_GFX_VERSION = re.compile(r"^gfx_target_version\s+([0-9]{1,7})\s*$", re.MULTILINE)


def cuda_archs() -> tuple[str, ...]:
    """The compute capability of each NVIDIA GPU the driver sees, as sm_XY; none without a
    driver or a device."""
    lib = None
    for name in _CUDA_LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None or lib.cuInit(0) != 0:
        return ()
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return ()
    archs = []
    for i in range(min(max(count.value, 0), _MAX_DEVICES)):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        if (
            lib.cuDeviceGet(ctypes.byref(dev), i) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev) != 0
        ):
            continue
        archs.append(f"sm_{major.value}{minor.value}")
    return tuple(archs)


def kfd_archs(nodes: Path) -> tuple[str, ...]:
    """The gfx target of each AMD GPU node in the KFD topology (`nodes`: the amdgpu driver's
    /sys/class/kfd/kfd/topology/nodes); CPU nodes report version 0 and are skipped."""
    archs = []
    try:
        entries = sorted(nodes.iterdir(), key=lambda p: (len(p.name), p.name))[:_MAX_DEVICES]
    except OSError:
        return ()
    for node in entries:
        try:
            text = (node / "properties").read_text(errors="replace")[: 1 << 16]
        except OSError:
            continue
        m = _GFX_VERSION.search(text)
        if m is not None and (name := gfx_name(int(m.group(1)))) is not None:
            archs.append(name)
    return tuple(archs)


def gfx_name(version: int) -> str | None:
    """KFD's gfx_target_version (major * 10000 + minor * 100 + stepping) as a target name:
    90010 is gfx90a, 90402 gfx942, 110000 gfx1100; None for 0 (a CPU node) or a value that
    names no gfx target."""
    major, minor, stepping = version // 10000, version // 100 % 100, version % 100
    if major == 0 or minor > 15 or stepping > 15:
        return None
    name = f"gfx{major}{minor:x}{stepping:x}"
    try:
        return parse_target(name).name
    except TargetError:
        return None


def _amx_granted() -> bool:
    from rfc.runtime.devices.cpu import amx_refusal

    return amx_refusal() is None


def _has_program(name: str) -> bool:
    return shutil.which(name) is not None


@dataclass(frozen=True)
class HostProbe:
    """Where the host's facts come from; a test hands in a fake host's."""

    cpuinfo: Path = Path("/proc/cpuinfo")
    kfd_nodes: Path = Path("/sys/class/kfd/kfd/topology/nodes")
    machine: Callable[[], str] = platform.machine
    system: Callable[[], str] = platform.system
    cuda_archs: Callable[[], tuple[str, ...]] = cuda_archs
    amx_granted: Callable[[], bool] = _amx_granted
    has_program: Callable[[str], bool] = _has_program


@dataclass(frozen=True)
class HostTargets:
    """What a GGUF compiled for this host is built for, and why."""

    targets: tuple[str, ...]  # GPUs first, then the CPU variant
    cpu: str  # the best cpu variant the host runs (PORTABLE_CPU where none does)
    gpus: tuple[str, ...] = ()  # every GPU architecture found, built or not
    skipped: tuple[str, ...] = field(default=())  # why a GPU found is not built

    def describe(self) -> str:
        """One line: what was found and built, for the first log line."""
        found = ", ".join(self.gpus) if self.gpus else "no GPU"
        text = f"this host's best: {', '.join(self.targets)} ({found}; CPU variant {self.cpu})"
        return text + "".join(f"; {s}" for s in self.skipped)


def host_targets(probe: HostProbe = HostProbe()) -> HostTargets:
    """The targets for a bundle compiled for this host (see the module's docstring)."""
    gpus = _unique([*probe.cuda_archs(), *kfd_archs(probe.kfd_nodes)])
    built, skipped = [], []
    for name in gpus:
        program, package = _TOOLCHAIN[parse_target(name).family]
        if probe.has_program(program):
            built.append(name)
        else:
            skipped.append(
                f"{name} left out: {program} is not on PATH (install {package}, or pass --arch {name} once it is)"
            )
    cpu = best_cpu(probe)
    return HostTargets(targets=(*built, cpu), cpu=cpu, gpus=gpus, skipped=tuple(skipped))


def best_cpu(probe: HostProbe = HostProbe()) -> str:
    """The highest-ranked cpu target this host runs, as the runtime ranks them
    (runtime/devices/__init__.py choose_device); PORTABLE_CPU where none does (another
    machine architecture, or not Linux: the runtime then says why)."""
    machine = probe.machine().lower().replace("amd64", "x86_64")
    if probe.system() != "Linux":
        return PORTABLE_CPU
    flags = _cpu_flags(probe.cpuinfo)
    for target in sorted(CPU_TARGETS.values(), key=lambda t: -t.rank):
        if target.machine and target.machine != machine:
            continue
        if missing_isa(target, flags):
            continue
        if _needs_amx(target) and not probe.amx_granted():
            continue
        return target.name
    return PORTABLE_CPU


def compile_hint(host: HostTargets) -> str:
    """What `rfc compile` without --arch says: the portable target it chose and how to add the
    host's own."""
    line = f"no --arch: built for {PORTABLE_CPU} (x86-64-v3, portable to any x86-64 server of the last decade)"
    if host.targets != (PORTABLE_CPU,):
        line += f"; for this host's best pass {' '.join('--arch ' + t for t in host.targets)}"
        if PORTABLE_CPU not in host.targets:
            line += f" (and --arch {PORTABLE_CPU} to keep the portable one)"
    return line


def _needs_amx(target: Target) -> bool:
    return "amx_tile" in target.isa


def _cpu_flags(cpuinfo: Path) -> set[str]:
    from rfc.runtime.devices.cpu import cpu_flags

    return cpu_flags(cpuinfo)


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
