"""Compile targets, as data: what each names (an instruction set, never a build machine).

The compiler builds kernels for a target from this table and writes its name into the
manifest; the runtime looks the name up again to decide whether this host can run it and,
when a bundle carries several CPU variants, which one is best. Code branches on a target's
fields (family, ISA flags), never on its name.

- `cpu` is x86-64-v3 (AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE): every x86-64 server of the
  last decade. `cpu-avx512` is x86-64-v4 (AVX-512 F/BW/CD/DQ/VL) plus VNNI. `cpu-amx` is
  cpu-avx512 plus AMX int8 tiles (Sapphire Rapids and later): multi-token int8 matmuls on the
  tile unit (kernels/cpu_amx.h), the rest as cpu-avx512.
  `cpu-generic` is baseline x86-64 (SSE2): the portable C kernels, for old or odd hosts.
- `gfx*` (AMD, HIP code objects): RDNA (gfx10xx-gfx12xx) runs wave32, CDNA/GCN wave64.
- `sm_*` (NVIDIA, cubins): warps of 32; sm_70 and newer have fp16 tensor cores (WMMA).

`TargetEntry` is one compiled target as the manifest's `targets` list records it, read into
typed fields (`target_entry`, `target_entries`).
"""

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from rfc.artifacts.errors import BundleError


class TargetError(BundleError):
    """A target name that names no known instruction set."""


class Family(str, Enum):
    CPU = "cpu"
    HIP = "hip"
    CUDA = "cuda"

    @property
    def is_gpu(self) -> bool:
        return self is not Family.CPU


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
    # int8 matrix instructions (s8 x s8 -> s32), by family: the prefill list's matmuls over
    # quantized weights multiply their int8 quants (kernels/rfc_gpu_imma.h). "mma_m16n8k32":
    # NVIDIA's mma.sync (sm_80 and newer); "mfma_16x16x16": CDNA's v_mfma_i32_16x16x16i8 (gfx908,
    # gfx90a); "wmma_16x16x16_w32": RDNA3's v_wmma_i32_16x16x16_iu8 (gfx11). "": none
    imma: str = ""
    # programmatic dependent launch (griddepcontrol, sm_90 and newer): a kernel of the step program
    # may start while the one before it runs, waiting for it where it first reads what it wrote
    grid_dependency: bool = False
    # NVIDIA: the compute capability as one number (90 for sm_90 and sm_90a); 0 for other families
    sm: int = 0

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
            "cpu-avx512",
            Family.CPU,
            1,
            "x86_64",
            (*_X86_64_V4, "avx512_vnni"),
            ("-march=x86-64-v4", "-mavx512vnni", "-mtune=generic"),
            rank=2,
        ),  # fmt: skip
        Target(
            "cpu-amx",
            Family.CPU,
            1,
            "x86_64",
            (*_X86_64_V4, "avx512_vnni", "amx_tile", "amx_int8"),
            ("-march=x86-64-v4", "-mavx512vnni", "-mamx-tile", "-mamx-int8", "-mtune=generic"),
            rank=3,
        ),  # fmt: skip
    )
}

_GFX = re.compile(r"gfx[0-9]{2,3}[0-9a-f]")
_SM = re.compile(r"sm_[0-9]{2,3}a?")
_WMMA_F16_SM = 70  # Volta: the first NVIDIA architecture with tensor cores
_IMMA_SM = 80  # Ampere: the first with mma.sync m16n8k32 over int8
_GRID_DEPENDENCY_SM = 90  # Hopper: the first with griddepcontrol
# CDNA 1-2; CDNA 3 (gfx94x) replaced v_mfma_i32_16x16x16i8 with a 16x16x32 form, not built here
_IMMA_MFMA_GFX = ("gfx908", "gfx90a")


def parse_target(name: str) -> Target:
    if not isinstance(name, str):
        raise TargetError(f"target {name!r} is not a name")
    if name in CPU_TARGETS:
        return CPU_TARGETS[name]
    if _GFX.fullmatch(name):
        imma = "mfma_16x16x16" if name in _IMMA_MFMA_GFX else "wmma_16x16x16_w32" if name[3:5] == "11" else ""
        return Target(name, Family.HIP, 32 if name[3:5] in ("10", "11", "12") else 64, imma=imma)
    if _SM.fullmatch(name):
        sm = int(name[3:].rstrip("a"))
        return Target(
            name,
            Family.CUDA,
            32,
            wmma_f16=sm >= _WMMA_F16_SM,
            imma="mma_m16n8k32" if sm >= _IMMA_SM else "",
            grid_dependency=sm >= _GRID_DEPENDENCY_SM,
            sm=sm,
        )
    cpus = ", ".join(CPU_TARGETS)
    raise TargetError(f"unknown target '{name[:40]}' (expected {cpus}, gfx* such as gfx1100, or sm_* such as sm_90)")


def missing_isa(target: Target, flags: set[str]) -> list[str]:
    """The ISA flags `target` needs that a host with /proc/cpuinfo `flags` lacks."""
    return [f for f in target.isa if f not in flags]


# -- a bundle's compiled targets, as its manifest records them --------------------------------


class KernelArg(NamedTuple):
    """One kernel parameter as the built code object lays it out (the manifest's kernel_args)."""

    name: str
    size: int  # bytes
    offset: int  # in the parameter buffer


@dataclass(frozen=True)
class TargetEntry:
    """One entry of the manifest's `targets` list (the compiler writes it, compiler/pipeline.py and
    compiler/codegen/): the target it was built for, the files it built and, for a GPU target,
    the argument layout of every kernel as the code object declares it."""

    target: Target
    kernels: str | None = None  # the kernel library (cpu) or code object (gpu)
    program: str | None = None  # the step program (artifacts/program.py)
    sources: tuple[str, ...] = ()  # the generated sources
    toolchain: str = ""
    compile_command: str = ""
    abi_version: int | None = None  # cpu: the ABI of the library's per-op exports (compiler/codegen/cpu.py)
    kernel_args: dict[str, tuple[KernelArg, ...]] = field(default_factory=dict)  # gpu: per kernel, in order
    # gpu: the kernel that runs each plan op alone, as planned; in the code object only where a
    # step program list launches it (the runtime runs the lists alone)
    op_kernels: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def family(self) -> Family:
        return self.target.family

    @property
    def wave_size(self) -> int:
        return self.target.wave_size

    @classmethod
    def parse(cls, raw: Any) -> "TargetEntry":
        """TargetError for a target this rfc does not know (a newer bundle's), BundleError for
        an entry whose fields have the wrong types."""
        if not isinstance(raw, dict):
            raise BundleError("manifest.json: a target entry is not an object")
        target = parse_target(raw.get("name"))
        where = f"manifest.json: target {target.name}"
        if raw.get("family", target.family.value) != target.family.value:
            raise BundleError(
                f"{where} says family {str(raw.get('family'))[:32]!r}, its name is a {target.family.value} target"
            )
        return cls(
            target=target,
            kernels=_optional(raw, "kernels", str, where),
            program=_optional(raw, "program", str, where),
            sources=tuple(_list_of(raw, "sources", str, where)),
            toolchain=_optional(raw, "toolchain", str, where) or "",
            compile_command=_optional(raw, "compile_command", str, where) or "",
            abi_version=_optional(raw, "abi_version", int, where),
            kernel_args=_kernel_args(raw.get("kernel_args") or {}, where),
            op_kernels=tuple(_list_of(raw, "op_kernels", str, where)),
        )


def target_entries(manifest: dict) -> tuple[TargetEntry, ...]:
    """Every target of a bundle that this rfc knows (a newer bundle's other targets are left out)."""
    entries = []
    for raw in manifest["targets"]:
        try:
            entries.append(TargetEntry.parse(raw))
        except TargetError:
            continue
    return tuple(entries)


def target_entry(manifest: dict, name: str) -> TargetEntry | None:
    """The bundle's entry of target `name`, None when it has none."""
    return next((e for e in target_entries(manifest) if e.name == name), None)


def _optional(raw: dict, key: str, kind: type, where: str) -> Any:
    value = raw.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise BundleError(f"{where}: {key} is not a {kind.__name__}")
    return value


def _list_of(raw: dict, key: str, kind: type, where: str) -> list:
    values = raw.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
        raise BundleError(f"{where}: {key} is not a list of {kind.__name__}s")
    return values


def _kernel_args(raw: Any, where: str) -> dict[str, tuple[KernelArg, ...]]:
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: kernel_args is not an object")
    out = {}
    for kernel, args in raw.items():
        if not isinstance(args, list) or not all(_is_kernel_arg(a) for a in args):
            raise BundleError(f"{where}: kernel_args of {str(kernel)[:64]} are not [name, size, offset] triples")
        out[kernel] = tuple(KernelArg(*a) for a in args)
    return out


def _is_kernel_arg(a: Any) -> bool:
    return (
        isinstance(a, list)
        and len(a) == 3
        and isinstance(a[0], str)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in a[1:])
    )
