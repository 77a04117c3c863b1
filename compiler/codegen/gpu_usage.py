"""Per-kernel resource usage of a built GPU target: registers, stack, spills, shared memory.

A kernel with a stack frame keeps per-thread arrays in local (off-chip, cached) memory; a
kernel that spills has run out of registers. Either turns a bandwidth-bound matmul or
attention kernel into a latency-bound one, and neither shows up in a numerical test, so
tests/kernels/test_gpu_resources.py fails on them and tools/gpu_check.py prints the table.

- sm_*: the cubin says it (`cubin_usage`): ptxas writes each kernel's register count and
  stack frame into `.nv.info` (the numbers `nvcc -Xptxas -v` prints; tests/kernels/
  test_gpu_resources.py compares them with a real `-Xptxas -v` build), and a kernel's static
  shared memory is its `.nv.shared.<kernel>` section. Spills are not recorded apart: ptxas
  spills into the stack frame, so a kernel that spills has a stack. `cuda_usage` builds a
  source with `-Xptxas -v` and parses the report, spills included.
- gfx*: the code object's AMDGPU metadata note says it (the same fields
  `llvm-readelf --notes rfc.hsaco` prints: .vgpr_count, .private_segment_fixed_size, ...).
"""

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.codeobject import CodeObjectError, amdgpu_metadata, cubin_resources, unbundle
from rfc.artifacts.targets import Family, TargetEntry
from rfc.compiler.errors import CompileError

# Kernels that stream weights or the KV cache: any local memory in them is a defect.
HOT_KERNEL_PREFIXES = ("rfc_matmul_", "rfc_moe_matmul_", "rfc_attention_", "rfc_attn_", "rfc_head_matmul_")


@dataclass(frozen=True)
class KernelUsage:
    name: str
    registers: int  # per thread (VGPRs on gfx)
    stack_bytes: int  # per thread: local/private memory (gfx: private segment)
    # per thread: register spill stores (gfx: VGPR + SGPR spill count x 4); None where the
    # binary does not say (a cubin: its spills are inside stack_bytes)
    spill_bytes: int | None
    shared_bytes: int  # per block: static shared memory (LDS)
    scalar_registers: int = 0  # gfx only (SGPRs)

    @property
    def is_hot(self) -> bool:
        return self.name.startswith(HOT_KERNEL_PREFIXES)

    @property
    def uses_local_memory(self) -> bool:
        return self.stack_bytes > 0 or bool(self.spill_bytes)

    def local_memory(self) -> str:
        """'<name>: N bytes stack frame[, M bytes spilled]', for a check's failure message."""
        spilled = f", {self.spill_bytes} bytes spilled" if self.spill_bytes is not None else ""
        return f"{self.name}: {self.stack_bytes} bytes stack frame{spilled}"


_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(report: str) -> dict[str, KernelUsage]:
    """Kernels of a `ptxas -v` report (one 'Compiling entry function' paragraph each)."""
    usage: dict[str, KernelUsage] = {}
    name, frame, regs, smem = None, (0, 0, 0), 0, 0

    def close() -> None:
        if name is not None:
            usage[name] = KernelUsage(name, regs, frame[0], max(frame[1], frame[2]), smem)

    for line in report.splitlines():
        if m := _ENTRY.search(line):
            close()
            name, frame, regs, smem = m.group(1), (0, 0, 0), 0, 0
        elif name is not None and (m := _FRAME.search(line)):
            frame = tuple(int(g) for g in m.groups())
        elif name is not None and (m := _REGS.search(line)):
            regs = int(m.group(1))
            if s := _SMEM.search(line):
                smem = int(s.group(1))
    close()
    return usage


def cuda_usage(source: str, command: list[str]) -> dict[str, KernelUsage]:
    """Builds `source` with the target's nvcc command plus -Xptxas -v and parses the report.
    `command` is the manifest's compile command split into words ({src}/{out} as rfc.cu /
    rfc.cubin, the file names the compiler used)."""
    with tempfile.TemporaryDirectory(prefix="rfc-usage-") as tmp:
        (Path(tmp) / "rfc.cu").write_text(source)
        proc = subprocess.run([*command, "-Xptxas", "-v"], cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"`{' '.join(command)} -Xptxas -v` failed ({proc.returncode}): {proc.stderr[-4000:]}")
    return parse_ptxas(proc.stderr + proc.stdout)


def cubin_usage(binary: bytes) -> dict[str, KernelUsage]:
    """Usage of every kernel of a cubin, from what ptxas recorded in it (no toolchain). The
    stack is the kernel's frame plus what the functions it calls need (ptxas' "bytes stack
    frame" when it calls none); spills are inside it."""
    try:
        resources = cubin_resources(binary)
    except CodeObjectError as e:
        raise CompileError(f"cannot read kernel usage from the cubin: {e}") from e
    return {
        name: KernelUsage(
            name, registers=r.registers, stack_bytes=r.stack_bytes, spill_bytes=None, shared_bytes=r.shared_bytes
        )
        for name, r in resources.items()
    }


def hip_usage(binary: bytes, arch: str) -> dict[str, KernelUsage]:
    """Usage of every kernel of an AMD code object, from its metadata note."""
    try:
        meta = amdgpu_metadata(unbundle(binary, arch))
        return {
            k[".name"]: KernelUsage(
                name=k[".name"],
                registers=int(k.get(".vgpr_count", 0)),
                stack_bytes=int(k.get(".private_segment_fixed_size", 0)),
                spill_bytes=4 * (int(k.get(".vgpr_spill_count", 0)) + int(k.get(".sgpr_spill_count", 0))),
                shared_bytes=int(k.get(".group_segment_fixed_size", 0)),
                scalar_registers=int(k.get(".sgpr_count", 0)),
            )
            for k in meta["amdhsa.kernels"]
        }
    except (CodeObjectError, KeyError, TypeError, ValueError) as e:
        raise CompileError(f"{arch}: cannot read kernel usage from the code object: {e}") from e


def bundle_usage(bundle: Bundle, entry: TargetEntry) -> dict[str, KernelUsage]:
    """Usage of every kernel of a bundle's GPU target, from the code object it holds."""
    binary = bundle.file(entry.kernels).read_bytes()
    return cubin_usage(binary) if entry.family is Family.CUDA else hip_usage(binary, entry.name)


def usage_table(usage: dict[str, KernelUsage]) -> str:
    """One line per kernel, hot kernels first."""
    rows = sorted(usage.values(), key=lambda u: (not u.is_hot, u.name))
    lines = [f"{'kernel':<48} {'regs':>5} {'sregs':>5} {'stack':>6} {'spill':>6} {'shared':>7}"]
    for u in rows:
        flag = "  <- local memory" if u.is_hot and u.uses_local_memory else ""
        spill = "-" if u.spill_bytes is None else u.spill_bytes
        lines.append(
            f"{u.name:<48} {u.registers:>5} {u.scalar_registers:>5} {u.stack_bytes:>6} {spill:>6} "
            f"{u.shared_bytes:>7}{flag}"
        )
    return "\n".join(lines)
