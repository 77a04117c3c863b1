"""Batch steps on int8 tensor cores (BATCH_MMA): the decode list's int8 matmuls, whose blocks of
MATMUL_TOKENS tokens decode each weight sub-block once per 8 tokens and dot it with dp4a (an 8B's
batch-16 graph step took 20.3 ms on an H100 where reading its weights twice takes ~3.3 ms:
docs/benchmarks.md), as launches of templates/gpu_matmul_bmma.hip.j2. A block there owns 16
tokens and 32 weight rows (16 where a matrix has too few rows for BMMA_MIN_BLOCKS blocks): it
decodes each sub-block of its rows once into shared memory, and its waves share out K, each
multiplying the 16 tokens' int8 sub-blocks with the rows' on the int8 matrix instructions
(rfc_gpu_imma.h). A step of up to 16 tokens reads each weight once.

The program gets a list of its own for them (StepProgram.batch_launches), which steps of
BATCH_MMA_MIN_TOKENS up to PREFILL_MIN_TOKENS - 1 tokens run: the decode list with these launches
on their batch twins. Smaller steps keep the decode list's blocks of 8 (a block of 16 multiplies
16 tokens whatever the step has: by instruction count the twins pay off from about 8), one-token
steps the one-token list, prompts the prefill list. Twinned are:
  - a matmul over rounded activations (the q8 hand-off: gpu_fuse's RMSNORM_Q8, ATTENTION_Q8, the
    add + rmsnorm's),
  - a segmented launch over several such weights (q, k and v) where the segments share a format,
    and where they do not (an 8B Q4_K_M's Q4_K q and k with a Q6_K v) one twin a run of segments
    of one format (_format_runs: two launches where the dp4a kernel had one),
  - a gate/up + SwiGLU launch, which also rounds its output per 32 rows into its output slot for
    the down matmul after it (that matmul's twin reads it there, not the float row).
Other launches stay. Another order of float sums than the dp4a kernels' (K shared out over waves,
added in wave order), deterministic; GPU targets are not batch invariant anyway
(docs/determinism.md). On: on an H100 an 8B's batch-16 graph step took 10.7 ms where the blocks of 8
took 18.3, its batch-8 step 9.3 where they took 10.0, with the same argmax in every row compared
(docs/benchmarks.md); MFMA (gfx90a) is checked on the emulator only."""

from __future__ import annotations

import dataclasses

from rfc.artifacts.program import GridDim, Launch, StepProgram
from rfc.compiler.codegen.gpu_imma import (
    _NO_MIN,
    IMMA_BIASED_SUMS,
    IMMA_FORMATS,
    IMMA_HALVES,
    IMMA_PAD,
    IMMA_SUM_BIAS,
    SIGNED_HALVES,
    SUB_BLOCK,
    q8_layout,
)
from rfc.artifacts.formats import PLANAR_FORMATS
from rfc.artifacts.ops import I32, PTR
from rfc.compiler.codegen.gpu_kernel import KernelSpec
from rfc.compiler.codegen.gpu_glu_handoff import glu_down, launch_fusions
from rfc.compiler.codegen.gpu_plan import FUSED_MATMUL_TEMPLATE, MATMUL_TEMPLATE, weight_geometry
from rfc.compiler.targets import Target

BATCH_MMA = True
BATCH_MMA_MIN_TOKENS = 8
# A q/k/v launch of several formats on one twin a run of one format (_format_runs); False: it stays on
# the dp4a kernel. On since 2026-11-30, not yet timed on a card (the dp4a launch took 836 of the 8B's
# 7,352 us batch-16 step on the H200, 52 us a launch where the one-format layers' twin took 26).
BMMA_FORMAT_RUNS = True
# The instructions it takes (Target.imma): not gfx11's WMMA, whose 32-byte A and B fragments a lane
# spilled at an 8B's sizes: stack frames of 112-220 bytes, spills of up to 408 (hipcc keeps a lane to 128
# VGPRs; blocks of 4 waves instead of 8: 64-220 and up to 424).
BMMA_INSTRUCTIONS = ("mma_m16n8k32", "mfma_16x16x16")
BMMA_TEMPLATE = "gpu_matmul_bmma.hip.j2"
TILE_M = 16  # tokens a block
TILE_N = 32  # weight rows a block (a gate/up launch: of each); 32 lets its rounding see a whole sub-block
# A matrix whose 32-row tiles make fewer blocks than this (about two a multiprocessor of an H100's 132:
# an 8B's 4096-row projections make 128) takes tiles of 16 rows, twice the blocks, each reading its
# rows' K alone (a gate/up launch keeps 32: its rounding needs them).
BMMA_MIN_BLOCKS = 256
BMMA_THREADS = 256  # 8 waves of 32 (NVIDIA), 4 of 64 (CDNA)
# resident blocks a multiprocessor asked of the compiler (RFC_KERNEL_BLOCKS): 1 leaves registers to ptxas;
# a twin that stages its tokens (STAGE_TOKENS) asks for 2, the blocks the unstaged ones get: left free,
# ptxas took 138 registers for an 8B's staged gate/up twin (one block a multiprocessor), capped 128
# and no stack
MIN_BLOCKS = 1
STAGED_MIN_BLOCKS = 2
# sub-blocks a wave multiplies per chunk (a gate/up launch: half, for its two weights): the chunk a
# block decodes into shared memory and, a chunk ahead, holds in registers, so the bytes it has in
# flight (an 8B's Q4_K rows: 4.6 KB a block on 16-row tiles, 9.2 KB on gate/up's; two blocks a
# multiprocessor on sm_90)
WAVE_SUBS = 2
SHARED_LIMIT = 48 * 1024
# The tokens' int8 sub-blocks in the paired k order (one 8-byte load a row and lane) and a wave's token
# scales and sums in one vector load a row: on the H200 the 8B's twins were bound by L1 (80-91% of its
# throughput, DRAM 4-15% busy), their activations read with 4-byte loads over 8 rows each
# (docs/benchmarks.md). Off: the loads before, for a card's A/B.
VECTOR_LOADS = True
# A thread's decode of a chunk takes one sub-block of one row. Lanes along the rows (off) put each
# lane of a warp on its own row, so each of its weight loads (the scales' bytes, d and dmin, 16
# bytes of quants) touches as many cache lines as the warp has rows; on the H200 the 8B's twins
# ran with L1 91% busy and DRAM 4%. Lanes along a row's sub-blocks (on) touch a few lines an
# instruction; the shared rows then go a sub-block's stride plus 16 bytes apart (and the floats a
# stride that puts the lanes of a store on distinct banks). The same bits either way.
ROW_LOADS = True
# A wave read its sub-blocks' token rows (A) and their scales and sums straight from global memory:
# each load instruction 8 token rows, so 8 cache lines; with lanes along a row (ROW_LOADS) those were
# 64 of the 76 line lookups a wave made a chunk in an 8B's 4096 x 4096 twin (counted from the sm_90
# build's addresses). Staged (on): the block copies the chunk's token rows, scales and sums once, 16
# contiguous bytes a lane (a token's row of a chunk of 16 sub-blocks is 512 contiguous bytes), into
# shared memory with copies that hold no register (cp.async: rfc_gpu.h rfc_copy16_async), the next
# chunk's into a second buffer while this one's are read, and the waves read their fragments there:
# 96 lookups a block and chunk where its waves made 512. The same products and sums, so the same
# bits. Only on targets with such copies (ASYNC_COPY_INSTRUCTIONS: AMD's gfx90a has none, and a
# chunk ahead in registers took gate/up's twin from 92 to 128 VGPRs there, unmeasured), where the
# pieces tile the chunk (4 sub-blocks a scale piece, the offsets 16-byte aligned) and the shared
# memory holds both buffers.
STAGE_TOKENS = True
# The int8 instructions of targets that copy global to shared memory without registers: NVIDIA's
# mma.sync m16n8k32 is sm_80 and later, which have cp.async.
ASYNC_COPY_INSTRUCTIONS = ("mma_m16n8k32",)
# A block holds one chunk of its weights in flight, in registers (w_items sub-blocks a thread: an 8B's
# Q4_K rows 4.6 KB a block on 16-row tiles, 9.2 KB on gate/up's), and multiplies each in far less
# time than its loads take: on the H200 (2026-11-30) the 8B's 4096 x 4096 twin read its weights at
# 0.09 of the copy rate with DRAM 8% and L1 51% busy, and the gate/up twin at 0.19, so the chunks'
# round trips to memory, one after another, set its time. On (untimed on a card: the next call's
# variant VT): each block also asks its rows' bytes into L2 ahead (prefetch.global.L2, which holds no
# register; nothing on AMD), the first chunks' before it waits for the kernel before it (overlapped
# launches), then at each chunk the chunk some BMMA_PREFETCH_BYTES of its rows beyond the one it
# loads, so that a chunk's loads find their bytes in L2. Hints only: the same instructions otherwise, the same bits.
BMMA_PREFETCH_L2 = True
# Only on NVIDIA sm_90 and newer (Target.sm; AMD has no such hint): the card it is for, whose
# launches overlap; on sm_80 the gate/up twins' prefetch spilled 8 bytes at their 128 registers.
BMMA_PREFETCH_SM = 90
# Bytes of its rows a block asks ahead, in whole chunks (at least 1, at most BMMA_PREFETCH_CHUNKS): two
# blocks a multiprocessor of an H200's 132 then ask ahead some 10 MB, a fifth of an H100's 50 MB L2.
BMMA_PREFETCH_BYTES = 32 * 1024
BMMA_PREFETCH_CHUNKS = 8
# A plane of a row this small (a K-quant's d and scales: 64 and 192 bytes of an 8B's 4096-wide Q4_K row)
# is asked whole at the start, not a chunk's share at a time (the same line over and over)
BMMA_PREFETCH_WHOLE = 512


def _strides(chunk_subs: int, rows: int, lds: int) -> tuple[bool, int, int]:
    """(lanes along a row's sub-blocks, a sub-block's stride in wq_v's 16-byte units, in wa_s's
    floats). A 16-byte store phase is 8 lanes of one row, consecutive sub-blocks: an odd quants
    stride puts them on distinct 4-bank groups. A 4-byte store is 32 lanes, 32 / chunk_subs rows
    (L) of chunk_subs sub-blocks: a float stride of L times an odd number puts them on 32 banks."""
    row_loads = ROW_LOADS and 8 <= chunk_subs <= 32 and not 32 % chunk_subs
    if not row_loads:
        return False, rows * lds // 16, rows
    rows_a_store = 32 // chunk_subs
    q_stride = rows * lds // 16 | 1
    a_stride = -(-rows // rows_a_store) * rows_a_store
    if (a_stride // rows_a_store) % 2 == 0:
        a_stride += rows_a_store
    return True, q_stride, a_stride


def _staging(target: Target, chunk_subs: int, subs_k: int, x_layout: dict, has_min: bool, threads: int) -> dict | None:
    """The template parameters of a chunk's staged token rows, scales and sums (STAGE_TOKENS), or
    None where they do not tile: 16-byte pieces, a row's half sub-block (x_pieces_a of them), 4
    scales (x_pieces_d) or 2 sub-blocks' half sums (the rest), taken by threads tid, tid + threads,
    ... in that order, two buffers of them."""
    if not STAGE_TOKENS or target.imma not in ASYNC_COPY_INSTRUCTIONS or chunk_subs % 4 or subs_k % 4:
        return None
    if x_layout["xd_offset"] % 16 or x_layout["xs_offset"] % 16:
        return None
    pa, pd = TILE_M * chunk_subs * 2, TILE_M * chunk_subs // 4
    ps = TILE_M * chunk_subs // 2 if has_min else 0
    return {
        "stage": True,
        "x_pieces_a": pa,
        "x_pieces_d": pd,
        "x_pieces": pa + pd + ps,
        "x_items": -(-(pa + pd + ps) // threads),
        # row strides: a token's quants the chunk's bytes and 32 more, so a half wave's 8-byte fragment
        # loads (4 rows x 32 bytes) fall on 32 distinct banks; its scales and sums 4 words more than
        # theirs, so 8 tokens' fall on distinct banks, and 16-byte pieces stay aligned
        "x_pitch": chunk_subs * SUB_BLOCK + 32,
        "d_pitch": chunk_subs + 4,
        "s_pitch": 2 * chunk_subs + 4,
    }


def _staged_bytes(stage: dict | None, has_min: bool) -> int:
    if stage is None:
        return 0
    return 2 * TILE_M * (stage["x_pitch"] + 4 * stage["d_pitch"] + (4 * stage["s_pitch"] if has_min else 0))


def weight_of(spec: KernelSpec) -> dict:
    """The weight geometry (gpu_plan.weight_geometry) of a matmul kernel's weight."""
    p = spec.params
    return weight_geometry(p["fmt_upper"], p["n"], p["k"])


def bmma_spec(
    target: Target, weights: list[dict], x_layout: dict, *, glu: bool = False, q8out: dict | None = None
) -> KernelSpec | None:
    """The batch twin over `weights` (one; segments of one input; gate and up with `glu`), its
    input rounded in `x_layout` (q8_layout's offsets), or None where the target has no int8 matrix
    instruction or the weights do not fit the template (formats outside gpu_imma.IMMA_FORMATS,
    segments of several formats or not whole tiles). `q8out`: the q8_layout a gate/up twin rounds
    its output into (its output slot) instead of writing floats."""
    first = weights[0]
    fmt, k = first["fmt_upper"], first["cols"]
    if target.imma not in BMMA_INSTRUCTIONS or fmt not in IMMA_FORMATS or k % SUB_BLOCK:
        return None
    if any(w["fmt_upper"] != fmt or w["cols"] != k for w in weights):
        return None
    if glu and (len(weights) != 2 or weights[0]["rows"] != weights[1]["rows"]):
        return None
    total = sum(w["rows"] for w in weights) if not glu else first["rows"]
    tile_n = TILE_N if glu or -(-total // TILE_N) >= BMMA_MIN_BLOCKS else TILE_N // 2
    if len(weights) > 1 and not glu and any(w["rows"] % tile_n for w in weights):
        return None
    if q8out is not None and (not glu or tile_n != SUB_BLOCK or first["rows"] % SUB_BLOCK):
        return None
    base = PLANAR_FORMATS[fmt].base if fmt in PLANAR_FORMATS else fmt
    halves = SIGNED_HALVES.get(base, 0)
    if halves and not IMMA_HALVES:
        return None
    has_min = fmt not in _NO_MIN and not halves
    wave = target.wave_size
    threads = BMMA_THREADS
    waves = threads // wave
    rows = tile_n * (2 if glu else 1)  # row items a sub-block
    lds = SUB_BLOCK + IMMA_PAD

    def shared_bytes(wave_subs: int) -> int:  # unstaged
        chunk_subs = waves * wave_subs
        _, q_stride, a_stride = _strides(chunk_subs, rows, lds)
        floats = (2 if has_min or halves else 1) * chunk_subs * a_stride
        return chunk_subs * q_stride * 16 + 4 * (floats + TILE_M * rows)

    # sub-blocks a wave multiplies per chunk: WAVE_SUBS (a gate/up launch: half), at least a decode a
    # thread per chunk (16-row tiles on waves of 64 take 4), at most what the shared memory holds
    least = max(1, -(-threads // (waves * rows)))
    wave_subs = max(least, WAVE_SUBS // (2 if glu else 1))
    while wave_subs > least and (shared_bytes(wave_subs) > SHARED_LIMIT or waves * wave_subs * rows % threads):
        wave_subs -= 1
    chunk_subs = waves * wave_subs
    row_loads, q_stride, a_stride = _strides(chunk_subs, rows, lds)
    stage = _staging(target, chunk_subs, k // SUB_BLOCK, x_layout, has_min, threads)
    if stage is not None and shared_bytes(wave_subs) + _staged_bytes(stage, has_min) > SHARED_LIMIT:
        stage = None
    items, rem = divmod(chunk_subs * rows, threads)
    if rem or not items or shared_bytes(wave_subs) > SHARED_LIMIT:
        return None
    segs = []
    if len(weights) > 1 and not glu:
        start = 0
        for w in weights:
            segs.append({"start": start, "end": start + w["rows"], "rows": w["rows"]})
            start += w["rows"]
    # the tokens' scales and sums of a wave's sub-blocks in one load a row each (the template's
    # scale_vec): where they lie aligned for it
    vec = VECTOR_LOADS and stage is None and wave_subs in (1, 2) and not (k // SUB_BLOCK) % wave_subs
    vec = vec and not x_layout["xd_offset"] % (4 * wave_subs) and not x_layout["xs_offset"] % (8 * wave_subs)
    shape = "_".join(str(w["rows"]) for w in weights) if segs else str(total)
    kind = "_swiglu" if glu else "_segments" if segs else ""
    name = f"rfc_matmul_bmma_{first['fmt']}_{shape}x{k}{kind}" + ("_q8out" if q8out else "")
    params = {
        **first,
        "name": name,
        "threads": threads,
        "wave": wave,
        "waves": waves,
        "n": total,
        "k": k,
        "subs_k": k // SUB_BLOCK,
        "tile_m": TILE_M,
        "tile_n": tile_n,
        "lds": lds,
        "wave_subs": wave_subs,
        "chunk_subs": chunk_subs,
        "w_items": items,
        "row_loads": row_loads,
        "q_stride": q_stride,
        "a_stride": a_stride,
        "min_blocks": STAGED_MIN_BLOCKS if stage else MIN_BLOCKS,
        "has_min": has_min,
        "halves": halves,
        # the tokens' k order (rfc_gpu_bmma.h): paired, one 8-byte load a row and lane, where no
        # instruction runs on a k-half alone
        "paired": VECTOR_LOADS and not halves,
        "scale_vec": wave_subs if vec else 0,
        "stage": False,
        **(stage or {}),
        "sum_bias": IMMA_SUM_BIAS if IMMA_BIASED_SUMS else 0,
        "subs_per_block": max(1, first["qk"] // SUB_BLOCK),
        "xd_offset": x_layout["xd_offset"],
        "xs_offset": x_layout["xs_offset"],
        "segs": segs,
        "glu": glu,
        "q8out": q8out is not None,
    }
    params.update(_prefetch(target, first, rows, chunk_subs, k // SUB_BLOCK))
    if q8out is not None:
        params.update(out_xd_offset=q8out["xd_offset"], out_xs_offset=q8out["xs_offset"])
    if glu:
        args = (("out", PTR), ("q8", PTR), ("gate", PTR), ("up", PTR), ("n_rows", I32))
    elif segs:
        n = len(segs)
        args = (
            *((f"out{i}", PTR) for i in range(n)),
            ("q8", PTR),
            *((f"weight{i}", PTR) for i in range(n)),
            ("n_rows", I32),
        )
    else:
        args = (("out", PTR), ("q8", PTR), ("weight", PTR), ("n_rows", I32))
    return KernelSpec(name, BMMA_TEMPLATE, params, args, threads, ((total, tile_n), ("n_rows", TILE_M)))


def _prefetch(target: Target, weight: dict, rows: int, chunk_subs: int, subs_k: int) -> dict:
    """The template parameters of a twin's L2 prefetch (BMMA_PREFETCH_L2): the chunks it asks
    ahead (pf_ahead; 0: none) and its weight row's planes as (first byte, bytes, whether asked
    whole at the start) triples, each plane linear in the row's sub-blocks (a GGUF row of blocks
    is one such plane)."""
    if not BMMA_PREFETCH_L2 or target.sm < BMMA_PREFETCH_SM:
        return {"pf_ahead": 0, "pf_planes": []}
    row_bytes = weight["row_bytes"]
    starts = [0, *weight["plane_offsets"]] if weight["planar"] else [0]
    planes = [[a, b - a, b - a <= BMMA_PREFETCH_WHOLE] for a, b in zip(starts, [*starts[1:], row_bytes])]
    chunk_bytes = rows * row_bytes * chunk_subs // subs_k
    ahead = max(1, min(BMMA_PREFETCH_CHUNKS, BMMA_PREFETCH_BYTES // max(1, chunk_bytes)))
    return {"pf_ahead": ahead, "pf_planes": planes}


def _rounded_input(spec: KernelSpec) -> dict:
    """Where a q8-input matmul kernel's rounded input keeps its scales and sums (gpu_imma.q8_layout's)."""
    return {"xd_offset": spec.params["xd_offset"], "xs_offset": spec.params["xs_offset"]}


def _twin_launch(launch: Launch, spec: KernelSpec) -> Launch:
    """`launch` (a decode-list matmul's: the same arguments in the same places) on `spec`."""
    (rows, tile_n), (_count, tile_m) = spec.grid
    return Launch(spec.name, spec.threads, (GridDim(rows, tile_n), GridDim(launch.grid[1].count, tile_m)), launch.args)


def batch_list(
    target: Target, plan, program: StepProgram, by_name: dict, op_kernels: list[str], fusions
) -> tuple[StepProgram, list[KernelSpec]]:
    """`program` with a batch list (BATCH_MMA): its decode list with the int8 matmuls on their
    batch twins, from BATCH_MMA_MIN_TOKENS tokens on; and those twins' kernels. `program` as it
    is where the switch is off or nothing has a twin."""
    if not BATCH_MMA or target.imma not in BMMA_INSTRUCTIONS:
        return program, []
    fusion_at = launch_fusions(program.launches, fusions)
    launches = list(program.launches)
    built: dict[str, KernelSpec] = {}
    down_at: dict[int, KernelSpec] = {}  # launch index -> the twin reading a gate/up twin's rounding
    split: dict[int, tuple[Launch, ...]] = {}  # launch index -> the twins of its runs of one format

    def twin(i: int, spec: KernelSpec | None) -> None:
        if spec is not None:
            built.setdefault(spec.name, spec)
            launches[i] = _twin_launch(launches[i], spec)

    for i, launch in enumerate(program.launches):
        spec = by_name[launch.kernel]
        if i in down_at:
            twin(i, down_at.pop(i))
            continue
        f = fusion_at.get(i)
        if f is not None and spec.template == FUSED_MATMUL_TEMPLATE and spec.params.get("q8in"):
            own = [by_name[op_kernels[j]] for j in range(f.first, f.first + f.count)]
            x = _rounded_input(spec)
            if not spec.params.get("glu"):
                weights = [weight_of(s) for s in own[: len(spec.params["segs"])]]
                one = bmma_spec(target, weights, x)
                if one is not None:
                    twin(i, one)
                elif len(weights) > 1 and BMMA_FORMAT_RUNS:
                    runs = _format_runs(target, launch, weights, x)
                    if runs is not None:
                        split[i] = tuple(run for run, _ in runs)
                        for _, run_spec in runs:
                            built.setdefault(run_spec.name, run_spec)
                continue
            gate_up = [weight_of(own[0]), weight_of(own[1])]
            down = _down_twin(target, plan, program, f, launches, i, by_name, op_kernels)
            glu = bmma_spec(target, gate_up, x, glu=True, q8out=down[1] if down else None) if down else None
            if glu is not None and down is not None:
                down_at[i + 1] = down[0]
                twin(i, glu)
            else:
                twin(i, bmma_spec(target, gate_up, x, glu=True))
            continue
        if spec.template == MATMUL_TEMPLATE and spec.params.get("q8in"):
            twin(i, bmma_spec(target, [weight_of(spec)], _rounded_input(spec)))
    if not built:
        return program, []
    flat = tuple(run for i, launch in enumerate(launches) for run in split.get(i, (launch,)))
    batch = dataclasses.replace(program, batch_launches=flat, batch_min_tokens=BATCH_MMA_MIN_TOKENS)
    return batch, list(built.values())


def _format_runs(target: Target, launch: Launch, weights: list[dict], x: dict) -> list | None:
    """(launch, twin) for each run of consecutive segments of one format of a segmented launch
    whose segments differ in format (its arguments: each segment's output, the rounded input, each
    segment's weight, the row count), or None where a run has no twin. The runs' outputs are the
    launch's, each written by one of them; they read the same rounded input."""
    n = len(weights)
    outs, q8, ws, rest = launch.args[:n], launch.args[n], launch.args[n + 1 : 2 * n + 1], launch.args[2 * n + 1 :]
    runs, start = [], 0
    for end in range(1, n + 1):
        if end < n and weights[end]["fmt_upper"] == weights[start]["fmt_upper"]:
            continue
        spec = bmma_spec(target, weights[start:end], x)
        if spec is None:
            return None
        args = (*outs[start:end], q8, *ws[start:end], *rest)
        runs.append((_twin_launch(dataclasses.replace(launch, args=args), spec), spec))
        start = end
    return runs


def _down_twin(target, plan, program, f, launches, i, by_name, op_kernels):
    """(the batch twin of the down matmul launched right after gate/up + SwiGLU run `f` (launch i),
    reading that run's output rounded in its own slot, and that rounding's layout), or None: the
    next launch is not that matmul on float input, something later reads the float output, or the
    slot is too small for the rounding."""
    spec = glu_down(plan, launches, f, i, by_name, op_kernels)
    if spec is None:
        return None
    w = weight_of(spec)
    layout = q8_layout(w["cols"], program.arena.max_tokens)
    slot = next((s for s in program.arena.slots if s.buffer == launches[i].args[0].ref), None)
    if slot is None or slot.nbytes < layout["q8_bytes"]:
        return None
    down = bmma_spec(target, [w], layout)
    return (down, layout) if down is not None else None
