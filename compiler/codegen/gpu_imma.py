"""The int8 tensor-core prefill matmul (templates/gpu_matmul_imma.hip.j2, kernels/rfc_gpu_imma.h).

On targets with an int8 matrix instruction (`Target.imma`: mma.sync m16n8k32 on sm_80 and newer,
v_mfma_i32_16x16x16i8 on gfx908/gfx90a, v_wmma_i32_16x16x16_iu8 on gfx11) a prefill step's
matmul over a quantized weight whose 32-element sub-blocks are w = a * u + b with one (a, b) per
sub-block multiplies the weight's int8 quants as the block holds them with the activations
rounded to int8 per 32 elements (the dp4a kernels' rounding, rfc_quantize32): exact int32 dot
products per sub-block, scaled to float and summed in k order, as llama.cpp's MMQ kernels do.
Other formats (k-quants whose 16-element halves have their own scales: Q2_K, Q3_K, Q6_K; the
i-quants; float weights) and other targets keep the half `wmma` kernel of
gpu_plan.mma_matmul_spec (sm_70 and newer) or the decode list's kernel.
"""

from rfc.artifacts.formats import PLANAR_FORMATS
from rfc.compiler.targets import Target

IMMA_TEMPLATE = "gpu_matmul_imma.hip.j2"
# Formats whose rfc_wsub decoder (kernels/rfc_gpu_q8.h, rfc_gpu_planar.h) gives both halves of
# a sub-block the same a and b; Q8_0 has b = 0 (no activation sums needed)
_SHARED_HALVES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K")
IMMA_FORMATS = _SHARED_HALVES + tuple(name for name, f in PLANAR_FORMATS.items() if f.base in _SHARED_HALVES)
_NO_MIN = ("Q8_0", "Q8_0p")
# A block of IMMA_WAVES_M x IMMA_WAVES_N waves owns IMMA_TILE_M tokens x IMMA_TILE_N weight rows,
# each wave 2 x 2 tiles of 16 x 16 (1024 float accumulators a wave, in registers: 32 a lane on a
# wave of 32, 16 on a wave of 64). Chunks of IMMA_K_CHUNK columns go into shared memory as int8
# rows padded by IMMA_PAD bytes (rows 68 words apart: an NVIDIA warp's fragment loads hit 32
# distinct banks), plus a float per token or row and sub-block: 2 x 64 x 272 + 4 x 64 x 8 x 4
# bytes = 42 KiB, under CUDA's 48 KiB of static shared memory (38 KiB for Q8_0: no sums, no b).
IMMA_TILE_M, IMMA_TILE_N, IMMA_K_CHUNK = 64, 64, 256
IMMA_WAVES_M, IMMA_WAVES_N = 2, 2
IMMA_PAD = 16
SUB_BLOCK = 32
# The prefill list rounds a matmul input to int8 once per step (templates/gpu_quantize_q8.hip.j2,
# one launch for the matmuls of a run that read the same input: q, k and v; gate and up) into
# the arena slot Q8_SCRATCH, and each tile copies those bytes. Without it every 64 x 64 tile
# rounded its 64 tokens' float activations again, chunk after chunk: a 5632-row matrix rounded
# each activation 88 times (log: "Where the GPU time goes"; unmeasured on a card since).
IMMA_PREQUANT = True
Q8_SCRATCH = "matmul.q8"  # the arena slot of the rounded activations (not a plan buffer)
QUANTIZE_THREADS = 64
QUANTIZE_TEMPLATE = "gpu_quantize_q8.hip.j2"


def q8_layout(k: int, max_tokens: int) -> dict:
    """Where a [max_tokens, k] input's int8 quants, float scales and float sums lie in Q8_SCRATCH."""
    subs = k // SUB_BLOCK
    return {
        "subs_k": subs,
        "xd_offset": max_tokens * k,
        "xs_offset": max_tokens * k + 4 * max_tokens * subs,
        "q8_bytes": max_tokens * k + 8 * max_tokens * subs,
    }


def quantize_q8_spec(target: Target, k: int, max_tokens: int):
    """The kernel that rounds a [n_rows, k] float input into Q8_SCRATCH for the int8 matmuls."""
    from rfc.compiler.codegen.gpu_plan import I32, PTR, KernelSpec

    layout = q8_layout(k, max_tokens)
    params = {
        "name": f"rfc_quantize_q8_{k}",
        "threads": QUANTIZE_THREADS,
        "k": k,
        "subs": layout["subs_k"],
        "max_tokens": max_tokens,
        "xd_offset": layout["xd_offset"],
        "xs_offset": layout["xs_offset"],
    }
    args = (("q8", PTR), ("x", PTR), ("n_rows", I32))
    grid = ((layout["subs_k"], QUANTIZE_THREADS), ("n_rows", 1))
    return KernelSpec(params["name"], QUANTIZE_TEMPLATE, params, args, QUANTIZE_THREADS, grid)


def imma_matmul_spec(target: Target, w: dict):
    """The int8 tensor-core matmul over weight `w` (gpu_plan.weight_geometry), or None where the
    target has no int8 matrix instruction or the format is not one of IMMA_FORMATS."""
    from rfc.compiler.codegen.gpu_plan import I32, KERNEL_ARGS, PROGRAM_MAX_TOKENS, PTR, KernelSpec

    if not target.imma or w["fmt_upper"] not in IMMA_FORMATS or w["cols"] % SUB_BLOCK:
        return None
    wave = target.wave_size
    threads = IMMA_WAVES_M * IMMA_WAVES_N * wave
    name = f"rfc_matmul_imma_{w['fmt']}_{w['rows']}x{w['cols']}"
    params = {
        "name": name,
        "threads": threads,
        "wave": wave,
        "n": w["rows"],
        "k": w["cols"],
        "tile_m": IMMA_TILE_M,
        "tile_n": IMMA_TILE_N,
        "k_chunk": IMMA_K_CHUNK,
        "lds": IMMA_K_CHUNK + IMMA_PAD,
        "subs": IMMA_K_CHUNK // SUB_BLOCK,
        "waves_n": IMMA_WAVES_N,
        "frags_m": IMMA_TILE_M // (16 * IMMA_WAVES_M),
        "frags_n": IMMA_TILE_N // (16 * IMMA_WAVES_N),
        "has_min": w["fmt_upper"] not in _NO_MIN,
        "subs_per_block": max(1, w["qk"] // SUB_BLOCK),
        "prequant": IMMA_PREQUANT,
        "max_tokens": PROGRAM_MAX_TOKENS,
        **q8_layout(w["cols"], PROGRAM_MAX_TOKENS),
        **w,
    }
    grid = ((w["rows"], IMMA_TILE_N), ("n_rows", IMMA_TILE_M))
    # prequant: the input comes as Q8_SCRATCH (gpu_plan.plan_program launches quantize_q8_spec first)
    args = (("out", PTR), ("q8", PTR), ("weight", PTR), ("n_rows", I32)) if IMMA_PREQUANT else KERNEL_ARGS["matmul"]
    return KernelSpec(name, IMMA_TEMPLATE, params, args, threads, grid)
