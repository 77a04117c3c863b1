"""The int8 tensor-core prefill matmul (templates/gpu_matmul_imma.hip.j2, kernels/rfc_gpu_imma.h).

On targets with an int8 matrix instruction (`Target.imma`: mma.sync m16n8k32 on sm_80 and newer,
v_mfma_i32_16x16x16i8 on gfx908/gfx90a, v_wmma_i32_16x16x16_iu8 on gfx11) a prefill step's
matmul over a quantized weight whose 32-element sub-blocks are w = a * u + b with one (a, b) per
sub-block multiplies the weight's int8 quants as the block holds them with the activations
rounded to int8 per 32 elements (the dp4a kernels' rounding, rfc_quantize32): exact int32 dot
products per sub-block, scaled to float and summed in k order, as llama.cpp's MMQ kernels do.
Q6_K and Q3_K, whose 16-element halves have scales of their own (and offsets of -32 and -4 times
them), are multiplied half by half (SIGNED_HALVES). Other formats (Q2_K, whose halves have offsets
of their own; the i-quants; float weights) and other targets keep the half `wmma` kernel of
gpu_mma.mma_matmul_spec (sm_70 and newer) or the decode list's kernel.
"""

from dataclasses import dataclass

from rfc.artifacts.formats import PLANAR_FORMATS
from rfc.compiler.codegen.gpu_kernel import KernelSpec
from rfc.compiler.targets import Target

IMMA_TEMPLATE = "gpu_matmul_imma.hip.j2"
# Formats whose rfc_wsub decoder (kernels/rfc_gpu_q8.h, rfc_gpu_planar.h) gives both halves of
# a sub-block the same a and b; Q8_0 has b = 0 (no activation sums needed)
_SHARED_HALVES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K")
# Formats whose halves have their own a and b = -offset * a (Q6_K: w = d * scale * (q - 32)): the
# kernel shares u - offset as signed bytes and multiplies each half apart (the A fragment with the
# other half zeroed), adding xd * (a0 * dot0) then xd * (a1 * dot1). Q4_K_M's Q6_K matrices (its
# v and down projections in half the layers, its output) ran on half tensor cores before:
# 2.0 ms a down matmul of an 8B-shaped model's 512-token step where its Q4_K ones took 1.0 ms (an
# H200, docs/benchmarks-log.md "Where the GPU time goes").
SIGNED_HALVES = {"Q6_K": 32, "Q3_K": 4}  # Q3_K: w = d * scale * (q - 4), q of 3 bits
IMMA_HALVES = True  # False: those formats on half tensor cores, as before
_IMMA_BASES = _SHARED_HALVES + tuple(SIGNED_HALVES)
IMMA_FORMATS = _IMMA_BASES + tuple(name for name, f in PLANAR_FORMATS.items() if f.base in _IMMA_BASES)
_NO_MIN = ("Q8_0", "Q8_0p")
SUB_BLOCK = 32
IMMA_PAD = 16  # bytes after each shared int8 row (ImmaTiling)


@dataclass(frozen=True)
class ImmaTiling:
    """A block of waves_m x waves_n waves owns tile_m tokens x tile_n weight rows, each wave
    (tile_m / waves_m) x (tile_n / waves_n) of them as 16 x 16 fragments with float accumulators
    in registers. Chunks of k_chunk columns go into shared memory: int8 rows of k_chunk bytes
    padded by IMMA_PAD (16-byte aligned for the vector stores; rows k_chunk / 4 + 4 words apart,
    4 mod 8 for any k_chunk of whole sub-blocks, so an NVIDIA warp's fragment loads, 8 rows x 4
    consecutive words, hit 32 distinct banks), plus a float per token or row and sub-block
    (scale, and with offsets b the activation sums and the b's). `prefetch`: the next chunk's
    global loads (weights decoded to int8 sub-blocks, rounded activations) go into registers
    before this chunk's tensor-core loop and into shared memory after it, so memory and math
    overlap, at the price of the registers that hold a chunk; without, each thread loads and
    stores its items one by one between the two barriers of a chunk."""

    tile_m: int
    tile_n: int
    waves_m: int
    waves_n: int
    k_chunk: int
    prefetch: bool

    def shared_bytes(self, has_min: bool, halves: bool = False) -> int:
        """Its static shared memory: with offsets b a sum per token and a b per row besides the
        scales; with halves an a per row and half."""
        x_floats = (2 if has_min else 1) * self.tile_m
        w_floats = (2 if has_min or halves else 1) * self.tile_n
        return (self.tile_m + self.tile_n) * (self.k_chunk + IMMA_PAD) + 4 * (x_floats + w_floats) * (
            self.k_chunk // SUB_BLOCK
        )


# 64 x 64, 4 waves of 2 x 2 fragments, 256 columns a chunk: 42 KiB of shared memory (38 KiB for
# Q8_0: no sums, no b), 32 accumulators a lane on a wave of 32. Small matrices keep it: it makes
# four times the blocks of the big tile. No prefetch: on sm_90 its ~125 registers a thread let
# four blocks share a multiprocessor, prefetching's ~230 two (and gfx1100 spills).
# 128 x 128, 8 waves (2 x 4) of 4 x 2 fragments, 128 columns a chunk: 44 KiB, 64 accumulators a
# lane; each weight row's decoded sub-block serves 128 tokens and each token's 128 rows, half the
# shared-memory and global traffic per multiply of the small tile. Prefetch: one block a
# multiprocessor with it (~200 registers) or without (~160).
# 128 x 128 over 16 waves (4 x 4) of 2 x 2 fragments, 512 threads, no prefetch: 32 accumulators a
# lane, 121-128 registers a thread on sm_90 with no stack (prefetching spilled 8 bytes), so a
# multiprocessor runs 16 warps of it where the 8-wave tile's 254 registers let it run 8: on an H100
# (Nsight Compute, docs/benchmarks.md) that tile's issue slots were 35% busy, 4.8 cycles between a
# warp's instructions, neither memory nor the tensor cores busy. Unmeasured on a card: chosen by
# IMMA_BIG_TILE.
IMMA_TILINGS = {
    "64x64": ImmaTiling(64, 64, 2, 2, 256, prefetch=False),
    "128x128": ImmaTiling(128, 128, 2, 4, 128, prefetch=True),
    "128x128w16": ImmaTiling(128, 128, 4, 4, 128, prefetch=False),
}
# "auto": the big tile where a prefill step of IMMA_PLAN_TOKENS tokens still makes at least
# IMMA_MIN_BLOCKS blocks of it (about one per multiprocessor of an H100/H200's 132: fewer
# leave multiprocessors idle), else the small one; a name of IMMA_TILINGS: every matmul that
# tile. The kernel is built before the step's token count is known, so the planner sizes for a
# typical prompt; any token count runs (partial tiles are zeros).
IMMA_TILING = "auto"
# The instructions that "auto" gives the big tile. Not gfx11's WMMA: its A and B fragments hold
# 32 bytes a lane, and with 64 accumulators hipcc spills past the 128 VGPRs it allots a lane.
IMMA_BIG_TILE_INSTRUCTIONS = ("mma_m16n8k32", "mfma_16x16x16")
# The big tile "auto" gives: "128x128", or "128x128w16" (16 waves; NVIDIA's mma.sync only, whose
# waves are 32 lanes: 512 threads; elsewhere the 8-wave tile).
IMMA_BIG_TILE = "128x128"
IMMA_W16_INSTRUCTIONS = ("mma_m16n8k32",)
IMMA_PLAN_TOKENS = 512
IMMA_MIN_BLOCKS = 128
# None: each tiling prefetches as it says (ImmaTiling.prefetch); True or False: every one.
IMMA_PREFETCH: bool | None = None
# Shared scales laid out [sub-block][token or row]: the fragment epilogue's reads (8 tokens and
# 4 rows a warp per element) fall on distinct banks. False: [token or row][sub-block], where 8
# tokens with 8 sub-blocks each 8 words apart share banks two by two.
IMMA_SCALES_BY_SUB = True
# With offsets b, a token's scale and int8 sum lie side by side, and a row's a and b (one 8-byte
# load each in the epilogue: 2 per element in place of 4); False: an array each. Not on gfx11's
# WMMA: there clang spilled 16 bytes past its 128 VGPRs with pairs (planar formats, K of one
# chunk), and none with an array each and B held.
IMMA_PAIRED_SCALES = True
IMMA_UNPAIRED_INSTRUCTIONS = ("wmma_16x16x16_w32",)
# A wave keeps the sub-block's B fragments (its rows) in registers across its A fragments
# (tokens): frags_m + frags_n shared loads per sub-block. False: B reloaded for each A
# (frags_m * (1 + frags_n) loads, one B live at a time).
IMMA_HOLD_B = True
# The tensor cores' int32 sums start at the bits of the float 1.5 * 2^23 (IMMA_SUM_BIAS) instead
# of 0, so the bits they end at are the float 1.5 * 2^23 + dot, and one float subtraction gives
# (float)dot exactly, for |dot| < 2^22 (32 products of at most 128 x 127 in magnitude: 520192):
# an int-to-float conversion issues at a quarter of the float rate or less on NVIDIA (16 a clock
# per multiprocessor against 64-128 additions), and the epilogue converts every sum of every
# sub-block. The same bits either way. False: (float)dot.
IMMA_BIASED_SUMS = True
IMMA_SUM_BIAS = 0x4B400000
# The first kernel's configuration, for A/B runs on a card (docs/benchmarks.md): IMMA_TILING
# "64x64", IMMA_SCALES_BY_SUB, IMMA_PAIRED_SCALES, IMMA_HOLD_B and IMMA_BIASED_SUMS False.
# The prefill list rounds a matmul input to int8 once per step (templates/gpu_quantize_q8.hip.j2,
# one launch for the matmuls of a run that read the same input: q, k and v; gate and up) into
# the arena slot Q8_SCRATCH, and each tile copies those bytes. Without it every 64 x 64 tile
# rounded its 64 tokens' float activations again, chunk after chunk: a 5632-row matrix rounded
# each activation 88 times (log: "Where the GPU time goes"; unmeasured on a card since).
IMMA_PREQUANT = True
Q8_SCRATCH = "matmul.q8"  # the arena slot of the rounded activations (not a plan buffer)
QUANTIZE_THREADS = 64
QUANTIZE_TEMPLATE = "gpu_quantize_q8.hip.j2"
# The prefill list launches the q, k and v matmuls of a fused run (gpu_fuse's segments: 2-3
# matmuls of one input) as one launch over the rows of all their weights where their kernels
# differ in rows alone and each weight's rows fill whole row tiles (imma_segments_spec): k and v
# of 4 kv heads of 64 are 256 rows each, 32 tiles of 64 x 64 at 512 tokens, a quarter of an
# H100's multiprocessors, and took as long as q's 2048 rows (docs/benchmarks.md). False: a
# launch per matmul, the kernels and prefill list byte for byte as before.
IMMA_SEGMENTS = True
# Split K: a matmul on the small tile (one that makes fewer than IMMA_MIN_BLOCKS big tiles at
# IMMA_PLAN_TOKENS tokens) whose K is at least IMMA_SPLIT_MIN_K launches up to IMMA_SPLIT_K
# blocks a tile (the most that share its chunks evenly), each over its share of the columns,
# each writing its sums to a partial row of its own in the arena slot SPLIT_SCRATCH; a launch
# after it adds the partials in order (templates/gpu_splitk_reduce.hip.j2). A TinyLlama's
# 5632-wide down projection makes 256 blocks of 64 x 64 at 512 tokens, two a multiprocessor of
# an H100 where four fit, and took 205 us of a 512-token step, 27% of it with 22 layers
# (docs/benchmarks.md), where its 5632-row gate took 134.7 us for as many multiplies on the big
# tile. Other sums than the unsplit kernel's (each split's own, then the splits' in order), so
# other bits, within the same bounds. 1: no split (the default: unmeasured on a card, an A/B
# switch).
IMMA_SPLIT_K = 1
IMMA_SPLIT_MIN_K = 4096
SPLIT_SCRATCH = "matmul.partials"  # the arena slot of the partial sums (not a plan buffer)
SPLIT_TEMPLATE = "gpu_splitk_reduce.hip.j2"
SPLIT_THREADS = 256


def q8_layout(k: int, max_tokens: int) -> dict:
    """Where a [max_tokens, k] input's rounding lies in Q8_SCRATCH: int8 quants [token][k], then a
    float scale per token and 32-element sub-block, then its two int half sums (what the decode
    list's rfc_wsub_dot takes; the tensor-core matmuls add them). One layout for both lists, so
    the prefill list's add + rmsnorm can leave it as the decode list's does (gpu_fuse's q8
    hand-off) instead of a rounding launch after it."""
    subs = k // SUB_BLOCK
    return {
        "subs_k": subs,
        "xd_offset": max_tokens * k,
        "xs_offset": max_tokens * k + 4 * max_tokens * subs,
        "q8_bytes": max_tokens * k + 12 * max_tokens * subs,
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


def imma_tiling(target: Target, rows: int) -> ImmaTiling:
    """The block tile of a matmul over a weight of `rows` rows (IMMA_TILING)."""
    if IMMA_TILING != "auto":
        return IMMA_TILINGS[IMMA_TILING]
    big = IMMA_TILINGS[IMMA_BIG_TILE if target.imma in IMMA_W16_INSTRUCTIONS else "128x128"]
    if target.imma not in IMMA_BIG_TILE_INSTRUCTIONS:
        return IMMA_TILINGS["64x64"]
    blocks = -(-rows // big.tile_n) * -(-IMMA_PLAN_TOKENS // big.tile_m)
    return big if blocks >= IMMA_MIN_BLOCKS else IMMA_TILINGS["64x64"]


def imma_matmul_spec(target: Target, w: dict, tiling: ImmaTiling | None = None):
    """The int8 tensor-core matmul over weight `w` (gpu_plan.weight_geometry), or None where the
    target has no int8 matrix instruction or the format is not one of IMMA_FORMATS. `tiling`:
    the block tile (default imma_tiling's choice)."""
    from rfc.compiler.codegen.gpu_plan import I32, KERNEL_ARGS, PROGRAM_MAX_TOKENS, PTR, KernelSpec

    if not target.imma or w["fmt_upper"] not in IMMA_FORMATS or w["cols"] % SUB_BLOCK:
        return None
    base = PLANAR_FORMATS[w["fmt_upper"]].base if w["fmt_upper"] in PLANAR_FORMATS else w["fmt_upper"]
    halves = SIGNED_HALVES.get(base, 0)
    if halves and not IMMA_HALVES:
        return None
    t = tiling or imma_tiling(target, w["rows"])
    has_min = w["fmt_upper"] not in _NO_MIN and not halves
    wave = target.wave_size
    threads = t.waves_m * t.waves_n * wave
    subs = t.k_chunk // SUB_BLOCK
    pieces = t.tile_m * t.k_chunk // 16  # 16-byte pieces of a chunk's activations
    if (
        t.tile_m % (16 * t.waves_m)
        or t.tile_n % (16 * t.waves_n)
        or t.k_chunk % SUB_BLOCK
        or (pieces % threads, t.tile_m * subs % threads, t.tile_n * subs % threads) != (0, 0, 0)
        or t.shared_bytes(has_min, bool(halves)) > 48 * 1024
    ):
        raise ValueError(f"imma tiling {t} does not fit {threads} threads and 48 KiB of static shared memory")
    split = _split_k(t, w["cols"])
    name = f"rfc_matmul_imma_{w['fmt']}_{w['rows']}x{w['cols']}" + (f"_k{split}" if split > 1 else "")
    params = {
        "name": name,
        "threads": threads,
        "wave": wave,
        "n": w["rows"],
        "k": w["cols"],
        "tile_m": t.tile_m,
        "tile_n": t.tile_n,
        "k_chunk": t.k_chunk,
        "lds": t.k_chunk + IMMA_PAD,
        "subs": subs,
        "waves_n": t.waves_n,
        "frags_m": t.tile_m // (16 * t.waves_m),
        "frags_n": t.tile_n // (16 * t.waves_n),
        # per thread and chunk: 16-byte activation pieces, token and row sub-blocks it moves
        "x_pieces": pieces // threads,
        "x_subs": t.tile_m * subs // threads,
        "w_subs": t.tile_n * subs // threads,
        # shared scale of token (row) j, sub-block sb: [j * stride + sb * sub_stride]
        "x_stride": 1 if IMMA_SCALES_BY_SUB else subs,
        "x_sub_stride": t.tile_m if IMMA_SCALES_BY_SUB else 1,
        "w_stride": 1 if IMMA_SCALES_BY_SUB else subs,
        "w_sub_stride": t.tile_n if IMMA_SCALES_BY_SUB else 1,
        "prefetch": t.prefetch if IMMA_PREFETCH is None else IMMA_PREFETCH,
        "hold_b": IMMA_HOLD_B,
        "paired": IMMA_PAIRED_SCALES and has_min and target.imma not in IMMA_UNPAIRED_INSTRUCTIONS,
        "sum_bias": IMMA_SUM_BIAS if IMMA_BIASED_SUMS else 0,
        "has_min": has_min,
        "halves": halves,
        "subs_per_block": max(1, w["qk"] // SUB_BLOCK),
        "prequant": IMMA_PREQUANT,
        "max_tokens": PROGRAM_MAX_TOKENS,
        **q8_layout(w["cols"], PROGRAM_MAX_TOKENS),
        **w,
    }
    grid = ((w["rows"], t.tile_n), ("n_rows", t.tile_m))
    # prequant: the input comes as Q8_SCRATCH (gpu_plan.plan_program launches quantize_q8_spec first)
    args = (("out", PTR), ("q8", PTR), ("weight", PTR), ("n_rows", I32)) if IMMA_PREQUANT else KERNEL_ARGS["matmul"]
    if split > 1:  # its sums into SPLIT_SCRATCH, then split_reduce_spec's launch into out
        params.update(split_k=split, k_split=w["cols"] // split, split_bytes=4 * split * PROGRAM_MAX_TOKENS * w["rows"])
        grid += ((split, 1),)
        args = (("partials", PTR), *args[1:])
    return KernelSpec(name, IMMA_TEMPLATE, params, args, threads, grid)


def _split_k(t: ImmaTiling, k: int) -> int:
    """The blocks a tile of `t` splits its K of `k` columns over: the most, up to IMMA_SPLIT_K,
    that share its chunks evenly (a TinyLlama's 22 chunks of 256: 2), or 1."""
    if IMMA_SPLIT_K <= 1 or t.tile_n >= IMMA_TILINGS["128x128"].tile_n or k < IMMA_SPLIT_MIN_K or k % t.k_chunk:
        return 1
    chunks = k // t.k_chunk
    return max(s for s in range(1, IMMA_SPLIT_K + 1) if chunks % s == 0)


def split_reduce_spec(spec):
    """The launch after split-K matmul `spec` that adds its partial sums into its output."""
    from rfc.compiler.codegen.gpu_plan import I32, PTR, KernelSpec

    p = spec.params
    name = f"rfc_splitk_reduce_{p['n']}_k{p['split_k']}"
    params = {"name": name, "threads": SPLIT_THREADS, "n": p["n"], "parts": p["split_k"], "max_tokens": p["max_tokens"]}
    args = (("out", PTR), ("partials", PTR), ("n_rows", I32))
    return KernelSpec(name, SPLIT_TEMPLATE, params, args, SPLIT_THREADS, (("n_rows", 1),))


# params that tell the kernels of a segmented launch's matmuls apart (their rows) or name them
_ROW_PARAMS = ("name", "n", "rows")


def imma_segments_spec(specs: list[KernelSpec]) -> KernelSpec | None:
    """One int8 tensor-core launch over the rows of the matmuls whose kernels are `specs` (their
    imma_matmul_spec kernels, one input), each segment of rows its own weight and output, or
    None: a kernel that is not this template's, kernels that differ but in rows, or a weight
    whose rows do not fill whole row tiles (every tile must lie in one segment). Each output is
    summed by the same tile, in the same order, as its matmul's own kernel sums it: the same
    bits."""
    if len(specs) < 2 or any(s.template != IMMA_TEMPLATE or s.params.get("split_k", 1) > 1 for s in specs):
        return None
    first = specs[0]
    like = {k: v for k, v in first.params.items() if k not in _ROW_PARAMS}
    if any({k: v for k, v in s.params.items() if k not in _ROW_PARAMS} != like for s in specs):
        return None
    if any(s.args != first.args or s.threads != first.threads for s in specs):
        return None
    if any(s.params["n"] % first.params["tile_n"] for s in specs):
        return None
    segs, start = [], 0
    for s in specs:
        segs.append({"start": start, "end": start + s.params["n"], "rows": s.params["n"]})
        start += s.params["n"]
    rows = "_".join(str(s["rows"]) for s in segs)
    name = f"rfc_matmul_imma_{first.params['fmt']}_{rows}x{first.params['k']}_segments"
    params = {**first.params, "name": name, "n": start, "rows": start, "segs": segs}
    args = []
    for arg, kind in first.args:  # out and weight once a segment, in their place
        args += [(f"{arg}{i}", kind) for i in range(len(specs))] if arg in ("out", "weight") else [(arg, kind)]
    grid = ((start, first.params["tile_n"]), ("n_rows", first.params["tile_m"]))
    return KernelSpec(name, IMMA_TEMPLATE, params, tuple(args), first.threads, grid)
