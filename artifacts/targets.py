"""Compile targets, as data: what each names (an instruction set, never a build machine).

The compiler builds kernels for a target from this table and writes its name into the
manifest; the runtime looks the name up again to decide whether this host can run it and,
when a bundle carries several CPU variants, which one is best. Code branches on a target's
fields (family, ISA flags), never on its name.

- `cpu` is x86-64-v3 (AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE): every x86-64 server of the
  last decade. `cpu-avx512` is x86-64-v4 (AVX-512 F/BW/CD/DQ/VL) plus VNNI.
  `cpu-generic` is baseline x86-64 (SSE2): the portable C kernels, for old or odd hosts.
- `gfx*` (AMD, HIP code objects): RDNA (gfx10xx-gfx12xx) runs wave32, CDNA/GCN wave64.
- `sm_*` (NVIDIA, cubins): warps of 32; sm_70 and newer have fp16 tensor cores (WMMA).
"""

import re
from dataclasses import dataclass
from enum import Enum

from rfc.artifacts.errors import BundleError


class TargetError(BundleError):
    """A target name that names no known instruction set."""


class Family(str, Enum):
    CPU = "cpu"
    HIP = "hip"
    CUDA = "cuda"


@dataclass(frozen=True)
class Target:
    name: str  # as on the command line and in the manifest: "cpu", "cpu-avx512", "gfx90a", "sm_90"
    family: Family
    wave_size: int  # threads per wavefront/warp (1 for cpu)
    machine: str = ""  # cpu: the host architecture (platform.machine()) the code is for
    isa: tuple[str, ...] = ()  # cpu: /proc/cpuinfo flags the host must have
    cflags: tuple[str, ...] = ()  # cpu: the C compiler flags that select exactly that ISA
    rank: int = 0  # cpu: preference among the variants a host can run (higher first)
    # fp16 tensor cores through nvcuda::wmma (16x16x16 half fragments, float accumulators):
    # the compiler adds a prefill launch list of tensor-core matmuls (sm_70 and newer)
    wmma_f16: bool = False

    @property
    def arch(self) -> str:
        """The architecture name GPU toolchains take (gfx90a, sm_90); the name for cpu."""
        return self.name


_X86_64_V3 = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
_X86_64_V4 = (*_X86_64_V3, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")

CPU_TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("cpu-generic", Family.CPU, 1, "x86_64", (), ("-march=x86-64", "-mtune=generic"), rank=0),
        Target("cpu", Family.CPU, 1, "x86_64", _X86_64_V3, ("-march=x86-64-v3", "-mtune=generic"), rank=1),
        Target(
            "cpu-avx512", Family.CPU, 1, "x86_64", (*_X86_64_V4, "avx512_vnni"),
            ("-march=x86-64-v4", "-mavx512vnni", "-mtune=generic"), rank=2,
        ),  # fmt: skip
    )
}

_GFX = re.compile(r"gfx[0-9]{2,3}[0-9a-f]")
_SM = re.compile(r"sm_[0-9]{2,3}a?")
_WMMA_F16_SM = 70  # Volta: the first NVIDIA architecture with tensor cores


def parse_target(name: str) -> Target:
    if not isinstance(name, str):
        raise TargetError(f"target {name!r} is not a name")
    if name in CPU_TARGETS:
        return CPU_TARGETS[name]
    if _GFX.fullmatch(name):
        return Target(name, Family.HIP, 32 if name[3:5] in ("10", "11", "12") else 64)
    if _SM.fullmatch(name):
        return Target(name, Family.CUDA, 32, wmma_f16=int(name[3:].rstrip("a")) >= _WMMA_F16_SM)
    cpus = ", ".join(CPU_TARGETS)
    raise TargetError(f"unknown target '{name[:40]}' (expected {cpus}, gfx* such as gfx1100, or sm_* such as sm_90)")


def missing_isa(target: Target, flags: set[str]) -> list[str]:
    """The ISA flags `target` needs that a host with /proc/cpuinfo `flags` lacks."""
    return [f for f in target.isa if f not in flags]
