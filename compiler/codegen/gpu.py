"""Kernel codegen for GPU targets (families "hip" and "cuda").

One HIP-dialect source per target: the prelude (kernels/rfc_gpu.h + kernels/rfc_blocks.h)
and one rendered template per kernel (gpu_plan decides the kernels and their constants).
hipcc builds it to a code object for gfx*, nvcc to a cubin for sm_*; the argument layout
of every kernel is read back from the binary and checked against what the templates
declare before it goes into the manifest.
"""

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from rfc.compiler.codegen import CodegenInput
from rfc.compiler.codegen.cache import cached_build
from rfc.compiler.codegen.format_table import format_params
from rfc.compiler.codegen.gpu_bmma import BMMA_TEMPLATE, batch_list
from rfc.compiler.codegen.gpu_fuse import fused_specs, step_fusions
from rfc.compiler.codegen.gpu_glu_handoff import glu_q8_handoffs
from rfc.compiler.codegen.gpu_rope_attention import rope_in_attention
from rfc.compiler.codegen.gpu_attention import MMA_ATTENTION_TEMPLATE
from rfc.compiler.codegen.gpu_imma import IMMA_TEMPLATE
from rfc.compiler.codegen.gpu_mma import MMA_TEMPLATE
from rfc.compiler.codegen.gpu_overlap import OVERLAPPED_LISTS, PROGRAM_FLAG, check_grid_wait, programmatic
from rfc.compiler.codegen.gpu_plan import ARG_SIZES, KernelSpec, one_token_twin, plan_kernels, plan_program
from rfc.compiler.codegen.gpu_sample import plan_sample_kernel, sample_program_extra
from rfc.compiler.codegen.render import render
from rfc.compiler.errors import CompileError
from rfc.compiler.targets import Target
from rfc.artifacts.codeobject import CodeObjectError, KernelInfo, read_cubin, read_hsaco
from rfc.artifacts.formats import Kernels
from rfc.artifacts.ops import I32
from rfc.artifacts.program import PROGRAM_FILE, ArgKind, StepProgram, pack_program

PRELUDE_TEMPLATE = "gpu_prelude.hip.j2"


@dataclass(frozen=True)
class Toolchain:
    """How one family builds the shared source: data, not branches (see STYLE 7)."""

    program: str
    source_file: str
    binary_file: str
    args: tuple[str, ...]  # {arch}, {src} and {out} are substituted
    env: tuple[tuple[str, str], ...]  # set for the compiler process
    install_hint: str

    def command(self, target: Target) -> list[str]:
        subst = {"arch": target.name, "src": self.source_file, "out": self.binary_file}
        return [self.program, *(a.format(**subst) for a in self.args)]


TOOLCHAINS = {
    # -nogpuinc/-nogpulib: no HIP headers, no device libraries (gfx1100 has none here);
    # rfc_gpu.h maps everything to builtins. -fno-discard-value-names keeps argument names
    # in the code object's metadata so the runtime can check them by name.
    "hip": Toolchain(
        program="hipcc",
        source_file="rfc.hip",
        binary_file="rfc.hsaco",
        args=(
            "--genco",
            "--offload-arch={arch}",
            "-nogpuinc",
            "-nogpulib",
            "-O3",
            "-std=c++17",
            "-fno-discard-value-names",
            "-o",
            "{out}",
            "{src}",
        ),
        # with nvcc on the PATH hipcc would otherwise pick the NVIDIA platform
        env=(("HIP_PLATFORM", "amd"),),
        install_hint="install ROCm's hipcc",
    ),
    "cuda": Toolchain(
        program="nvcc",
        source_file="rfc.cu",
        binary_file="rfc.cubin",
        args=("-cubin", "-arch={arch}", "-O3", "-std=c++17", "-x", "cu", "-o", "{out}", "{src}"),
        env=(),
        install_hint="install the CUDA toolkit's nvcc",
    ),
}


def plan_target(
    target: Target, plan, layout, weights=None
) -> tuple[list[KernelSpec], list[str], StepProgram, KernelSpec]:
    """(every kernel planned: each op's own, the lists' fused kernels and twins, the sampling
    kernel; the op kernels' names; the step program; the sampling kernel) of a GPU target
    (build() builds those the program launches: op_only_kernels): the program marked for
    overlapped launches where the target has them and every kernel waits as they require
    (gpu_overlap.py)."""
    specs, op_kernels = plan_kernels(target, plan, layout, weights)
    fusions = step_fusions(plan, specs, op_kernels, target.family)
    sample = plan_sample_kernel(target, plan.vocab_size)
    # the kernels either list launches (a fused kernel of the prefill list's runs that it launches
    # op by op there is not built)
    fused = fused_specs(fusions)
    # the one-token twins of the decode list's matmuls, for the list a one-token step runs
    twins = [t for t in (one_token_twin(s, target) for s in (*specs, *fused)) if t is not None]
    program = plan_program(target, plan, [*specs, *fused, *twins], op_kernels, fusions)
    # the decode list's int8 matmuls on their batch twins (gpu_bmma.BATCH_MMA)
    by_name = {s.name: s for s in (*specs, *fused, *twins)}
    program, batch = batch_list(target, plan, program, by_name, op_kernels, fusions)
    # the decode lists' gate/up + SwiGLU rounding its output for the down matmul (gpu_glu_handoff.py)
    program, handoff = glu_q8_handoffs(plan, program, by_name, op_kernels, fusions)
    # the one-token list's rope + KV write in its attention launch (gpu_rope_attention.py)
    program, roped = rope_in_attention(plan, program, {**by_name, **{s.name: s for s in handoff}}, fusions)
    launched = {launch.kernel for launch in program.every_launch()}
    built = [s for s in (*fused, *twins, *batch, *handoff, *roped) if s.name in launched]
    specs = [*specs, *built, sample]
    if programmatic(target):
        check_overlap(specs, program, sample)
        # (the batch list named only where there is one: other programs keep their bytes)
        lists = [n for n in OVERLAPPED_LISTS if n != "batch_launches" or program.batch_launches]
        program = replace(program, extra={**program.extra, PROGRAM_FLAG: lists})
    return specs, op_kernels, program, sample


def op_only_kernels(specs: list[KernelSpec], program: StepProgram, sample: KernelSpec) -> frozenset[str]:
    """The kernels of `specs` that neither a list of `program` launches nor the sampling kernel
    is: plan ops' own kernels that a fused kernel or a twin stands in for everywhere (a llama's
    q, k and v matmuls, its plain rmsnorm). The runtime runs only the lists, so the source keeps
    them as device functions nothing calls (render_source) and the code object does not hold
    them: 14 of a tiny llama's 54 sm_90 kernels, some 30% of its nvcc time."""
    launched = {launch.kernel for launch in program.every_launch()} | {sample.name}
    return frozenset(s.name for s in specs if s.name not in launched)


def build(inp: CodegenInput) -> dict:
    target = inp.target
    tc = TOOLCHAINS[target.family]
    specs, op_kernels, program, sample = plan_target(target, inp.plan, inp.layout, inp.weights)
    op_only = op_only_kernels(specs, program, sample)
    source = render_source(target, specs, op_only)
    command = tc.command(target)
    version = toolchain_version(tc)
    binary = cached_build(inp.cache, [source, " ".join(command), version], lambda: _compile(tc, target, source))
    built = kernels_in(target, binary)
    specs = [s for s in specs if s.name not in op_only]
    kernel_args = {s.name: _checked_layout(s, built) for s in specs}
    kernels_rel = f"{inp.bundle_dir}/{tc.binary_file}"
    source_rel = f"{inp.bundle_dir}/{tc.source_file}"
    inp.writer.write_bytes(kernels_rel, binary)
    inp.writer.write_bytes(source_rel, source.encode())
    program_rel = f"{inp.bundle_dir}/{PROGRAM_FILE}"
    program = replace(program, extra={**program.extra, "sample": sample_program_extra(sample)}, weights=inp.weights)
    inp.writer.write_bytes(program_rel, pack_program(program))
    return {
        "kernels": kernels_rel,
        "sources": [source_rel],
        "toolchain": version,
        "compile_command": " ".join(command),
        "kernel_args": kernel_args,
        "launch": {s.name: s.launch() for s in specs},
        "op_kernels": op_kernels,
        "program": program_rel,
    }


# Around a kernel of render_source's `op_only`: RFC_KERNEL and its kin made a static device
# function's qualifiers, so the toolchain drops the unused function and builds no kernel; the GPU
# emulator (tests/kernels/gpu_emu.h, RFC_GPU_EMULATED) keeps it a kernel it can launch.
_OP_ONLY_MACROS = ("RFC_KERNEL", "RFC_KERNEL_BLOCKS", "RFC_IMMA_KERNEL_ATTRS")
OP_ONLY_BEGIN = "\n".join(
    [
        "#ifndef RFC_GPU_EMULATED  // a plan op's own kernel that no list launches: not built",
        *(f'#pragma push_macro("{m}")' for m in _OP_ONLY_MACROS),
        *(f"#undef {m}" for m in _OP_ONLY_MACROS),
        "#define RFC_KERNEL(threads) static RFC_DEVICE_FN",
        "#define RFC_KERNEL_BLOCKS(threads, blocks) static RFC_DEVICE_FN",
        "#define RFC_IMMA_KERNEL_ATTRS",
        "#endif",
    ]
)
OP_ONLY_END = "\n".join(["#ifndef RFC_GPU_EMULATED", *(f'#pragma pop_macro("{m}")' for m in _OP_ONLY_MACROS), "#endif"])


def render_source(target: Target, specs: list[KernelSpec], op_only: frozenset[str] = frozenset()) -> str:
    """The target's source of `specs`, those named in `op_only` as device functions that the
    toolchain drops (op_only_kernels)."""
    # the tensor-core header only where a kernel uses it: HIP has no nvcuda::wmma
    mma = any(s.template in (MMA_TEMPLATE, MMA_ATTENTION_TEMPLATE) for s in specs)
    # the int8 one where a kernel uses it, for the target's instruction (Target.imma)
    imma = target.imma if any(s.template in (IMMA_TEMPLATE, BMMA_TEMPLATE) for s in specs) else False
    overlap = programmatic(target)
    prelude = {"wave": target.wave_size, "mma": mma, "imma": imma, "programmatic": overlap}
    if any(s.template == BMMA_TEMPLATE for s in specs):  # (a key only then: other sources stay as they were)
        prelude["bmma"] = True
    parts = [render(PRELUDE_TEMPLATE, {**prelude, **format_params(Kernels.GPU)})]
    for s in specs:
        kernel = render_kernel(s, overlap)
        parts.append(f"{OP_ONLY_BEGIN}\n{kernel}\n{OP_ONLY_END}" if s.name in op_only else kernel)
    return "\n".join(parts)


def render_kernel(spec: KernelSpec, overlap: bool) -> str:
    """One kernel's source; `overlap`: built for programmatic launches (gpu_overlap.py)."""
    return render(spec.template, {**spec.params, "programmatic": overlap})


def check_overlap(specs: list[KernelSpec], program: StepProgram, sample: KernelSpec) -> None:
    """Every kernel the program launches (and the sampling kernel after it) waits for the kernel
    before it before it touches an activation (gpu_overlap.check_grid_wait): free before the wait
    are its scalars and the parameters every launch of it binds to weights."""
    by_name = {s.name: s for s in specs}
    weights: dict[str, set[str]] = {}
    for launch in program.every_launch():
        spec = by_name[launch.kernel]
        bound = {name for (name, _t), slot in zip(spec.args, launch.args) if slot.kind is ArgKind.WEIGHT}
        weights[launch.kernel] = weights.get(launch.kernel, bound) & bound
    for name in [*weights, sample.name]:
        spec = by_name[name]
        scalars = {n for n, t in spec.args if t == I32}
        check_grid_wait(render_kernel(spec, True), name, scalars | weights.get(name, set()))


def kernels_in(target: Target, binary: bytes) -> dict[str, KernelInfo]:
    """Kernels and argument layouts of a built binary, read the way the runtime reads them."""
    try:
        return read_hsaco(binary, target.name) if target.family == "hip" else read_cubin(binary)
    except CodeObjectError as e:
        raise CompileError(f"{target.name}: cannot read the built code object: {e}") from e


def _checked_layout(spec: KernelSpec, kernels: dict[str, KernelInfo]) -> list[list]:
    """[[name, size, offset], ...] of the kernel, after checking the binary against the spec."""
    info = kernels.get(spec.name)
    if info is None:
        raise CompileError(f"kernel {spec.name} is missing from the built code object")
    if len(info.args) != len(spec.args):
        raise CompileError(
            f"kernel {spec.name}: the code object has {len(info.args)} arguments, the template declares "
            f"{len(spec.args)}"
        )
    layout = []
    for (name, kind), arg in zip(spec.args, info.args):
        if arg.name is not None and arg.name != name:
            raise CompileError(f"kernel {spec.name}: argument {arg.name!r} in the code object, {name!r} expected")
        if arg.size != ARG_SIZES[kind]:
            raise CompileError(f"kernel {spec.name}: argument {name} is {arg.size} bytes, {ARG_SIZES[kind]} expected")
        layout.append([name, arg.size, arg.offset])
    return layout


def toolchain_version(tc: Toolchain) -> str:
    """The toolchain's own version lines (part of the build cache key). Asked once a process for
    the same program file and the same variables that locate its parts (_TOOLCHAIN_VARIABLES):
    `hipcc --version` is a Perl script that starts clang, 0.2 s each time, and a compile asks
    once a target."""
    exe = _executable(tc)
    st = os.stat(exe)
    env = _env(tc)
    located = tuple(
        sorted((k, v) for k, v in env.items() if k in ("PATH", "LD_LIBRARY_PATH") or k.startswith(_TOOLCHAIN_VARIABLES))
    )
    key = (exe, st.st_ino, st.st_size, st.st_mtime_ns, located)
    if key not in _VERSIONS:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise CompileError(f"`{tc.program} --version` failed ({proc.returncode}): {proc.stderr.strip()}")
        lines = [ln.strip() for ln in proc.stdout.splitlines() if "version" in ln.lower() or "release" in ln.lower()]
        _VERSIONS[key] = f"{tc.program}: " + "; ".join(lines or [proc.stdout.strip()])
    return _VERSIONS[key]


_VERSIONS: dict[tuple, str] = {}  # toolchain_version's answers in this process
# The environment variables (by prefix) that hipcc and nvcc find their parts by, besides PATH and
# LD_LIBRARY_PATH: HIP_PATH, ROCM_PATH, HIP_CLANG_PATH, HIP_PLATFORM, CUDA_HOME, ...
_TOOLCHAIN_VARIABLES = ("HIP", "ROCM", "HSA", "CUDA", "NVCC", "LLVM", "CLANG")


def _executable(tc: Toolchain) -> str:
    exe = shutil.which(tc.program)
    if exe is None:
        raise CompileError(f"{tc.program} not found on PATH: needed to build {tc.binary_file} ({tc.install_hint})")
    return exe


def _env(tc: Toolchain) -> dict[str, str]:
    return {**os.environ, **dict(tc.env)}


def _compile(tc: Toolchain, target: Target, source: str) -> bytes:
    command = tc.command(target)
    exe = _executable(tc)
    # A fresh directory with fixed file names: the command line, and so the cache key and the
    # output, never depend on where the build ran.
    with tempfile.TemporaryDirectory(prefix="rfc-gpu-") as tmp:
        (Path(tmp) / tc.source_file).write_text(source)
        proc = subprocess.run([exe, *command[1:]], cwd=tmp, capture_output=True, text=True, env=_env(tc))
        out = Path(tmp) / tc.binary_file
        if proc.returncode != 0 or not out.is_file():
            output = (proc.stderr + proc.stdout).strip()
            raise CompileError(
                f"{target.name}: `{' '.join(command)}` failed with status {proc.returncode}:\n{output[-8000:]}"
            )
        return out.read_bytes()
