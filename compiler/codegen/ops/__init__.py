"""Lowerings of the op families other than the core (compiler/codegen/cpu_step.py and
gpu_plan.py hold the core family's and the matmul-like ops'), one module per family of the op
registry (artifacts/ops): each module's CpuLowering and GpuLowering are mixins of the cpu step
program's lowering and of the GPU planner."""
