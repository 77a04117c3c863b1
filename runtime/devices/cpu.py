"""The cpu device: a bundle's compiled CPU kernels (kernels/<target>/librfc_cpu.so).

`probe` says whether this host runs a cpu target, `open_library` loads the target's library
and `Device` is what the engine gets: the step program (cpu_step.py), one ctypes call per
step. (The library's per-op exports are the kernel tests' business: tests/kernels/kit/cpu.py.)
"""

import ctypes
import os
import platform
import tempfile
from pathlib import Path

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.artifacts.plan import KVSpec
from rfc.artifacts.targets import Family, TargetEntry, TargetError, missing_isa, parse_target, target_entry
from rfc.runtime.devices import DeviceError


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def openmp_wait_policy(serving: bool = False) -> None:
    """How libgomp's idle threads wait: the one place that decides it. libgomp reads it once,
    when it is first loaded (by the first probe); a user's own OMP_WAIT_POLICY or
    GOMP_SPINCOUNT wins. The step program's phases meet at its own adaptive barrier (spin,
    then sleep: templates/cpu_step.c.j2); libgomp only forks and joins the team once per step.
    Its idle threads sleep between steps rather than spin against the Python thread and, on a
    busy machine, everyone else: with libgomp spinning, decode beside one busy process had a
    long tail (mean 36 vs 50-58 tok/s, SmolLM2, 2 cores). A server spins a short while first
    (GOMP_SPINCOUNT, which takes precedence over the policy's own count): its requests' steps
    follow each other closely, and its HTTP threads share the cores (docs/serve.md)."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if serving:
        os.environ["GOMP_SPINCOUNT"] = "20000"


# Linux x86-64's arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) (asm/prctl.h, the kernel's
# ABI): the tile state is granted per process, on request, from Linux 5.16 on.
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def amx_refusal() -> str | None:
    """None when the OS grants this process the AMX tile state, else why not. Asking is
    idempotent: the cpu-amx library's rfc_kernels_init asks again once loaded."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0:
        return None
    return (
        f"the OS kernel refuses the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: "
        f"{os.strerror(ctypes.get_errno())}; Linux 5.16 or later grants it)"
    )


def probe(target: str) -> str | None:
    """None when this machine can run a cpu bundle target, else why not."""
    try:
        t = parse_target(target)
    except TargetError as e:
        return str(e)
    if t.family is not Family.CPU:
        return f"'{target}' is not a cpu target"
    if platform.system() != "Linux":
        return f"the cpu kernels are built as Linux shared libraries, this is {platform.system()}"
    machine = platform.machine().lower().replace("amd64", "x86_64")
    if t.machine and machine != t.machine:
        return f"'{target}' is {t.machine} code, this machine is {machine}"
    lacking = missing_isa(t, cpu_flags())
    if lacking:
        return f"this CPU lacks {', '.join(lacking)}"
    refused = amx_refusal() if "amx_tile" in t.isa else None
    if refused:  # before choosing the target: "auto" then falls back to the next one (cpu-avx512)
        return refused
    openmp_wait_policy()
    try:
        ctypes.CDLL("libgomp.so.1")
    except OSError as e:
        return f"the OpenMP runtime the cpu kernels link to cannot be loaded ({e})"
    return None


def open_library(bundle: Bundle, target: str, kv: KVSpec) -> tuple[ctypes.CDLL, TargetEntry]:
    """The target's kernel library, loaded once this host and the KV dtype check out (what
    the library exports is checked by who calls it: the step program's ABI by cpu_step.py)."""
    entry = target_entry(bundle.manifest, target)
    if entry is None or not entry.kernels:
        raise DeviceError(f"bundle has no compiled target {target}")
    reason = probe(target)
    if reason is not None:
        raise DeviceError(f"cannot run bundle target {target} here: {reason}")
    if kv.dtype != "f16":
        raise DeviceError(f"the cpu kernels keep the KV cache in f16; the plan asks for {kv.dtype}")
    with tempfile.TemporaryDirectory(prefix="rfc-kernels-") as private:
        # loaded from a checked private copy (artifacts/bundle.py Bundle.private_copy); the
        # mapping outlives the file, which goes with the directory
        try:
            lib = ctypes.CDLL(str(bundle.private_copy(entry.kernels, Path(private))))
        except OSError as e:
            raise DeviceError(f"cannot load the cpu kernels of bundle target {target}: {e}") from e
    init_kernels(lib, target)
    return lib, entry


def init_kernels(lib: ctypes.CDLL, target: str) -> None:
    """The library's once-per-process setup (cpu-amx: Linux's permission for the AMX tile
    state, which a kernel may refuse). A library built before rfc_kernels_init needs none."""
    init = getattr(lib, "rfc_kernels_init", None)
    if init is None:
        return
    init.argtypes, init.restype = [], ctypes.c_int
    err = init()
    if err:
        raise DeviceError(
            f"cannot run bundle target {target} here: the OS kernel refused the AMX tile state "
            f"(arch_prctl ARCH_REQ_XCOMP_PERM: {os.strerror(err)}; Linux 5.16 or later grants it)"
        )


def Device(
    bundle: Bundle,
    target: str,
    kv: KVSpec,
    num_blocks: int,
    block_size: int,
    n_threads: int | None = None,
    context_length: int | None = None,
    cache_types: KvCacheTypes = KvCacheTypes(),
):
    """The engine's cpu device: the target's step program (one call per step). It sizes its
    block tables from each batch, so the served `context_length` bounds nothing here."""
    from rfc.runtime.devices.cpu_step import CpuStepDevice

    lib, entry = open_library(bundle, target, kv)
    return CpuStepDevice(bundle, target, lib, entry, kv, num_blocks, block_size, n_threads, cache_types)
