"""The half tensor-core prefill matmul (templates/gpu_matmul_mma.hip.j2, kernels/rfc_gpu_mma.h):
the prefill list's matmul where the int8 one (compiler/codegen/gpu_imma.py) does not take the
format or the target, on targets with half matrix instructions (`Target.wmma_f16`).
"""

from rfc.artifacts.formats import FORMATS, Kernels
from rfc.compiler.codegen.gpu_kernel import KERNEL_ARGS, KernelSpec
from rfc.compiler.targets import Target

# Tensor-core prefill matmul (templates/gpu_matmul_mma.hip.j2, targets with wmma_f16): a block
# of MMA_WAVES_M x MMA_WAVES_N waves owns MMA_TILE_M tokens x MMA_TILE_N weight rows, each wave
# a 2 x 2 of 16 x 16 fragments (4 float accumulators, 32 registers); chunks of MMA_K_CHUNK
# columns as halves in shared memory: 2 x 64 x 136 x 2 bytes + 4 KiB of staging = 38 KiB,
# under CUDA's 48 KiB of static shared memory. Only steps of at least gpu_plan.PREFILL_MIN_TOKENS
# tokens take it (one whole tile of tokens: below that the dp4a kernels, tiled by
# MATMUL_TOKENS, waste less; unmeasured, no GPU lent). Only matmuls over token rows take it:
# a logits matmul over the step's few wanted rows stays a dp4a GEMV.
MMA_TEMPLATE = "gpu_matmul_mma.hip.j2"
# Formats the tensor-core matmul takes. Not F32: its weights would be rounded to half, which no
# bound models (the quantized formats' halves are closer to their exact values than the dp4a
# kernels' int8 activations; F16 weights are exact in half, BF16 ones nearly so, and their
# half activations are what tests/oracle.py's "f16" kind measures). An F32 model is kept for
# its precision: its prefill list keeps the float kernel.
MMA_FORMATS = tuple(name for name, f in FORMATS.items() if Kernels.GPU in f.kernels and name != "F32")
MMA_TILE_M, MMA_TILE_N, MMA_K_CHUNK = 64, 64, 128
MMA_WAVES_M, MMA_WAVES_N = 2, 2
MMA_PAD = 8  # halves (16 bytes) after each shared row: 32-byte aligned fragments, fewer bank conflicts


def mma_matmul_spec(target: Target, w: dict) -> KernelSpec | None:
    """The tensor-core matmul over weight `w` (gpu_plan.weight_geometry), or None where it cannot tile it."""
    from rfc.compiler.codegen.gpu_plan import SUB_BLOCK, is_int8

    if not target.wmma_f16 or w["cols"] % SUB_BLOCK:  # shared rows are filled a 32-element sub-block at a time
        return None
    if w["fmt_upper"] not in MMA_FORMATS:
        return None
    wave = target.wave_size
    threads = MMA_WAVES_M * MMA_WAVES_N * wave
    frags_m, frags_n = MMA_TILE_M // (16 * MMA_WAVES_M), MMA_TILE_N // (16 * MMA_WAVES_N)
    name = f"rfc_matmul_mma_{w['fmt']}_{w['rows']}x{w['cols']}"
    params = {
        "name": name,
        "threads": threads,
        "wave": wave,
        "n": w["rows"],
        "k": w["cols"],
        "tile_m": MMA_TILE_M,
        "tile_n": MMA_TILE_N,
        "k_chunk": MMA_K_CHUNK,
        "ld": MMA_K_CHUNK + MMA_PAD,
        "waves_n": MMA_WAVES_N,
        "frags_m": frags_m,
        "frags_n": frags_n,
        "quantized": is_int8(w["fmt_upper"]),
        "subs_per_block": max(1, w["qk"] // SUB_BLOCK),
        **w,
    }
    grid = ((w["rows"], MMA_TILE_N), ("n_rows", MMA_TILE_M))
    return KernelSpec(name, MMA_TEMPLATE, params, KERNEL_ARGS["matmul"], threads, grid)
