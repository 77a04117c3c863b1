"""A GPU kernel as the planner specifies it (KernelSpec) and the argument lists of the ops'
kernels, shared by the planner (compiler/codegen/gpu_plan.py) and the family modules of
compiler/codegen/ops/ that lower ops to kernels.

Argument lists are part of the bundle contract: each op's is in its descriptor (artifacts/ops,
GpuPart.args), gathered here in KERNEL_ARGS.
"""

from dataclasses import dataclass

from rfc.artifacts.ops import I32, OP_DEFS, PTR, Args

ARG_SIZES = {PTR: 8, I32: 4}

# Declared kernel parameters per op kind, in order: each op's descriptor's (artifacts/ops,
# GpuPart.args; a lowering leaves out the optional ones an op lacks: rope's freq_factors, ...).
KERNEL_ARGS: dict[str, Args] = {kind: d.gpu.args for kind, d in OP_DEFS.items()}
MAX_THREADS = 256  # threads per block for row-wise kernels
GPU_MAX_CONV_KERNEL = 16  # ssm_conv taps whose window a thread keeps in registers (Qwen3.5: 4)


@dataclass(frozen=True)
class KernelSpec:
    name: str
    template: str
    params: dict  # every constant the template uses
    args: tuple[tuple[str, str], ...]  # (name, PTR | I32), as the kernel declares them
    threads: int  # threads per block (1-D)
    # per grid dimension (x, y): (count, tile) -> ceil(count / tile) blocks; count is a
    # constant or the name of an I32 argument of the kernel
    grid: tuple[tuple[int | str, int], ...]
    # the kernels the step program launches for this op in its place (split attention); the
    # per-op path launches this one
    steps: tuple["KernelSpec", ...] = ()
    # the kernel the program's prefill list launches in its place (the tensor-core matmul)
    prefill: "KernelSpec | None" = None

    def launch(self) -> dict:
        return {"threads": self.threads, "grid": [list(g) for g in self.grid]}
