"""Kernel planning for GPU targets: every plan op becomes a specialized kernel.

`plan_kernels` decides every constant the templates use (dimensions, weight format and block
geometry, wave size, threads per block, tiles, the launch grid) and the argument list each
kernel declares. Ops with the same specialization share one kernel. Templates only spell
the constants out.

Argument lists are part of the bundle contract: each op's is in its descriptor (artifacts/ops,
GpuPart.args), gathered in KERNEL_ARGS; the fused kernels' in STEP_KERNEL_ARGS. The step
program's launches name each argument's source (an ArgSlot); the runtime binds them at the
offsets the code object declares (rfc.runtime.devices.gpu_program), and the kernel tests run
an op's kernel alone as the launch `op_launch` lowers it to.
"""

import dataclasses
import math
import struct


from rfc.artifacts.formats import FORMATS, FormatError, Kernels, plane_offsets, row_nbytes, weight_format
from rfc.artifacts.kv_cache_type import BLOCK_VALUES, CacheType, KvCacheTypes
from rfc.artifacts.layout import TensorEntry, WeightLayout
from rfc.artifacts.limits import STEP_TOKENS
from rfc.artifacts.ops import I32, OP_DEFS, PTR
from rfc.artifacts.ops.core import alibi_slopes
from rfc.artifacts.plan import Op, Plan, rope_freqs
from rfc.artifacts.program import Arena, ArenaSlot, ArgKind, ArgSlot, GridDim, Launch, StepProgram
from rfc.compiler.codegen import weight_entries
from rfc.compiler.codegen.gpu_kernel import (  # noqa: F401 (ARG_SIZES, GPU_MAX_CONV_KERNEL: re-exported)
    ARG_SIZES,
    GPU_MAX_CONV_KERNEL,
    KERNEL_ARGS,
    MAX_THREADS,
    KernelSpec,
)
from rfc.compiler.codegen.ops import activations, altup, hc, moe, recurrent, rwkv
from rfc.compiler.errors import CompileError
from rfc.compiler.targets import Target


def _before_rows(args: tuple[tuple[str, str], ...], *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """The attention op's arguments with `extra` pointers before its scalars (from n_rows on)."""
    at = [name for name, _kind in args].index("n_rows")
    return (*args[:at], *extra, *args[at:])


# Kernels only the step program launches in an op's place (KernelSpec.steps; the op's own kernel,
# which the kernel tests run alone, is "attention"): split-KV attention (flash decoding), whose
# partials go to the arena's scratch, and its reduction; or (ATTENTION_LAST_BLOCK_MERGE) the split
# kernel alone, whose last block of each row and kv head merges the partials.
STEP_KERNEL_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "attention_split": _before_rows(KERNEL_ARGS["attention"], ("scratch", PTR)),
    "attention_split_merge": _before_rows(KERNEL_ARGS["attention"], ("scratch", PTR), ("arrivals", PTR)),
    "attention_reduce": (
        ("out", PTR),
        ("scratch", PTR),
        ("positions", PTR),
        ("sinks", PTR),
        ("n_rows", I32),
        ("v_type", I32),
    ),
}

ATTENTION_TEMPLATE = "gpu_attention.hip.j2"  # the attention kernels' (per-op, split)
GLU_TEMPLATE = "gpu_swiglu.hip.j2"
MATMUL_TEMPLATE = "gpu_matmul.hip.j2"  # the dp4a (int8) matmul over rows of sub-blocks
FUSED_MATMUL_TEMPLATE = "gpu_matmul_fused.hip.j2"  # its fused runs (gpu_fuse.py)
KV_DTYPES = ("f16", "f32")  # KV cache element types rfc_gpu.h stores (rfc_kv_<dtype>_t)
# kv_write stages a token's row through shared memory this many values at a time when it
# quantizes (double and float: 12 KiB), a multiple of every rotation and block it holds
KV_QUANT_CHUNK = 1024
MATMUL_WAVES = 4  # waves per float and MoE matmul block
# Threads per dp4a (int8) matmul block, whatever the wave: 8 waves of 32 on NVIDIA, 4 of 64 on
# CDNA. With one row group a block (MATMUL_ROW_STEPS) that is many small blocks, which keeps more
# weight loads in flight at batch 1 than few big ones. Measured on an H200 (graph replay of a
# batch-1 decode step, docs/benchmarks-log.md "Matmul blocks at batch 1"): the 1.1B Q4_0 at
# 1,414 us against 1,738 us with 4 waves x 4 row groups a block, the 8B Q4_K_M at 5,023 us
# (2 row groups: 5,193 us).
INT8_MATMUL_THREADS = 256
MATMUL_TOKENS = 8  # tokens that share one decoded weight block
# A step of exactly one token (a batch-1 decode step) runs a list of its own
# (StepProgram.single_launches): the decode list with every matmul kernel whose blocks take
# MATMUL_TOKENS tokens replaced by its twin taking one (ONE_TOKEN_SUFFIX). On an H100 a graph
# decode step of a TinyLlama-1.1B-shaped Q4_0 model took 1,028 us with blocks of one token and
# 1,396 us with blocks of 8 (docs/benchmarks.md): the loops over 8 tokens hold registers (fewer
# blocks a multiprocessor, fewer weight loads in flight) for tokens a batch-1 step does not have.
# Steps of several tokens keep blocks of 8: blocks of one would read every weight once per token.
SINGLE_TOKEN_LIST = True
ONE_TOKEN_SUFFIX = "_t1"
SUB_BLOCK = 32  # elements per activation scale and per lane step
# Columns of activations quantized into shared memory at a time: tokens x chunk bytes of
# int8, plus scales and sums, 22 KiB at 8 x 2048 (under CUDA's 48 KiB of static shared memory).
MATMUL_CHUNK = 2048
# Row groups a dense dp4a matmul block walks one after another, so that its quantized
# activations serve that many more weight rows (fewer blocks re-reading x from L2). One: more
# blocks beat the saved re-reads on the card (INT8_MATMUL_THREADS' measurement).
MATMUL_ROW_STEPS = 1
# The int8 matmuls of the decode list (and the fused ones, compiler/codegen/gpu_fuse.py) ask their
# block's weight rows into L2 before they round their activations (prefetch.global.L2 on NVIDIA,
# nothing on AMD): the rows' trip from memory overlaps the rounding (and a norm folded in)
# instead of following it, and no register holds them. The same sums either way.
MATMUL_PREFETCH_L2 = True
# Float blocks up to this many elements are decoded into registers (the dot loop unrolled).
MATMUL_UNROLL_MAX = 32
PREFILL_MIN_TOKENS = 64
# The prefill list's activation before an int8 tensor-core matmul that reads its output (an FFN's
# SwiGLU and down projection) launches a twin that also rounds each value per 32 into Q8_SCRATCH
# as the rounding launch after it would (templates/gpu_swiglu.hip.j2), and leaves the float row
# unwritten where nothing else reads it: a launch and a round trip of the row fewer (on an H100 an
# 8B's 512-token prefill spent 3.4% of its time in SwiGLU and 1.0% in rounding launches:
# docs/benchmarks.md). The same bits. False: activation, rounding launch, matmul.
GLU_Q8 = True
# A rope block's thread loads this many of its pairs before it stores any (templates/gpu_rope.hip.j2):
# one trip to memory for up to this many pairs, registers for twice as many floats.
ROPE_LOAD_BATCH = 8
ATTENTION_THREADS = 256
# Split-KV attention (flash decoding). Targets name an ISA, not a machine, so the split count
# is fixed: at most ATTENTION_SPLITS slices per row (a batch-1 decode over 8 kv heads runs 128
# blocks), each a multiple of ATTENTION_SPLIT_KEYS keys (short rows take fewer slices). Only
# steps of at most ATTENTION_SPLIT_ROWS rows split (bigger ones have blocks enough), so the
# partials' scratch is bounded by ATTENTION_SPLIT_ROWS x n_heads x ATTENTION_SPLITS x
# (head_dim + 2) floats whatever the context length: 17 MB at 32 heads of 128. Grids are static
# per row count, so in a bigger step the blocks of slices 1.. exit at once (a GridDim with a cap
# on its count would spare launching them).
ATTENTION_SPLITS = 16
ATTENTION_SPLIT_KEYS = 64
ATTENTION_SPLIT_ROWS = 64
ATTENTION_SCRATCH = "attention.scratch"  # the arena slot of the partials (not a plan buffer)
# One attention launch per layer in a decode step instead of two: the split kernel's blocks count
# their arrival per (row, kv head) in ATTENTION_ARRIVALS (ints, zeroed once by the runtime: the
# arena's `zeroed`), and the last block to arrive merges the partials with the reduce kernel's
# code (gpu_attention_merge.hip.j2: the same bits) and resets the count. False: the split and
# reduce launches, the kernels and program byte for byte as before (an A/B switch; the launch
# it saves is unmeasured on a card).
ATTENTION_LAST_BLOCK_MERGE = True
# The split kernel reduces a chunk's softmax max and sum of up to 8 query heads behind one barrier
# (each wave's values in shared memory, read back by lanes and by thread g for head g), not each
# head behind four (rfc_block_max, rfc_block_sum): a chunk of keys passes 4 barriers where it
# passed 34 with a TinyLlama's 8 query heads a kv head (18 with an 8B's 4), the same bits. False:
# the per-head reductions, the per-op kernel's (an A/B switch; unmeasured on a card).
ATTENTION_BATCHED_SOFTMAX = True
ATTENTION_ARRIVALS = "attention.arrivals"  # the arena slot of the counts (not a plan buffer)
# Tiled prefill attention: steps of more than ATTENTION_SPLIT_ROWS rows (the split kernels'
# bound, so every step takes exactly one of the two paths) run tiles of up to
# ATTENTION_TILE_ROWS rows of one sequence x a kv head's query heads, at most
# ATTENTION_TILE_QUERIES query vectors and ATTENTION_ACC_TILE output elements per thread, over
# chunks of 32, 16 or 8 keys (one lane group each in the softmax, so at most a wave of 32).
# Its shared arrays overlay the row path's in the one kernel, within ATTENTION_TILE_SHARED bytes
# (static shared memory stops at 48 KiB; slot and reduction arrays come on top). The tiled path
# lives in the row path's kernel, so its registers are the decode kernel's too: 16 outputs per
# thread keep both at most 128 on sm_90 (two 256-thread blocks per SM, as before it; 24 took
# 168). The shared overlay does cost decode occupancy where shared memory is 64 KiB per CU.
ATTENTION_TILE_ROWS = 32
ATTENTION_TILE_QUERIES = 64
ATTENTION_ACC_TILE = 16
ATTENTION_TILE_KEYS = (32, 16, 8)
# ...and chunks of 4 keys only where no tile of 8 fits: one row of 8 query heads of 512 (Gemma 4
# 31B's global layers) takes 48.4 KiB with 8 keys, 32.2 KiB with 4
ATTENTION_TILE_KEYS_LAST = 4
ATTENTION_TILE_SHARED = 44 * 1024
VECTOR_BYTES = 16  # widest load along head_dim (128 bits)
# Query heads x K elements per step of a thread's dot products (each element meets every query
# head's q_s value): a group of 8 or 16 query heads takes 4- or 2-element K loads, not 8 (with 8,
# gfx1100 spilled 60 bytes at 64 x 8 x 128 and 460 at 64 x 4 x 128)
ATTENTION_SCORE_MAX = 32
ATTENTION_ACC_MAX = 8  # V accumulators per thread (query heads x elements): registers, and 8 KB of shared to merge them


def is_int8(fmt: str) -> bool:
    """Whether the GPU matmuls over `fmt` take int8 activations and dp4a over 32-element
    sub-blocks (rfc_gpu_q8.h): the GPU formats with an activation rounding (artifacts/formats.py).
    Float weights read float activations, as llama.cpp's kernels do."""
    f = FORMATS.get(fmt)
    return f is not None and Kernels.GPU in f.kernels and f.activation is not None


def weight_geometry(fmt: str, rows: int, cols: int) -> dict:
    """The template constants of a [rows, cols] weight in format `fmt` (artifacts/formats.py)."""
    try:
        f = weight_format(fmt)
    except FormatError:
        raise CompileError(f"unknown weight format {fmt}") from None
    qk, ts = f.block_elems, f.block_bytes
    return {
        "fmt": fmt.lower(),
        "fmt_upper": fmt,
        "qk": qk,
        "ts": ts,
        "rows": rows,
        "cols": cols,
        "blocks_per_row": cols // qk,
        "row_bytes": row_nbytes(f, cols),
        # planar layouts: decoders take the row and the sub-block, and the row offsets
        # of the planes after the first (artifacts/formats.py)
        "planar": f.is_planar,
        "plane_offsets": list(plane_offsets(f, cols)[1:]) if f.is_planar else [],
    }


def prefill_matmul_spec(target: Target, w: dict) -> KernelSpec | None:
    """The prefill list's kernel for a matmul over token rows: int8 tensor cores where the target
    has them and the format's sub-blocks allow (compiler/codegen/gpu_imma.py), else half wmma."""
    from rfc.compiler.codegen.gpu_imma import imma_matmul_spec
    from rfc.compiler.codegen.gpu_mma import mma_matmul_spec

    return imma_matmul_spec(target, w) or mma_matmul_spec(target, w)


def plan_kernels(
    target: Target, plan: Plan, layout: WeightLayout, weights: dict[str, str] | None = None
) -> tuple[list[KernelSpec], list[str]]:
    """The kernels of a plan (first-use order) and, per plan op, the kernel that runs it.
    `weights`: plan weight -> the layout entry this target reads, where not the plan's own
    name (the weight planner's map; none: the plan's own)."""
    planner = _Planner(target, plan, weight_entries(layout, weights or {}))
    specs: dict[str, KernelSpec] = {}
    op_kernels = []

    def add(spec: KernelSpec, rounded: bool = False) -> KernelSpec:
        if spec.steps:
            spec = dataclasses.replace(spec, steps=tuple(add(s) for s in spec.steps))
        if spec.prefill is not None:
            spec = dataclasses.replace(spec, prefill=add(spec.prefill, rounded))
        if spec.params.get("prequant") and not rounded:  # its input rounded once a step (gpu_imma.py)
            add(_quantize_spec(target, spec))
        if spec.params.get("split_k", 1) > 1:  # its partial sums added by a launch after it (gpu_imma.py)
            add(_split_reduce_spec(spec))
        if spec.name in specs and specs[spec.name] != spec:
            spec = _renamed(spec, specs)
        return specs.setdefault(spec.name, spec)

    op_specs, rounded = _glu_q8_twins(plan, [planner.spec(op) for op in plan.ops])
    for i, spec in enumerate(op_specs):
        op_kernels.append(add(spec, i in rounded).name)
    return list(specs.values()), op_kernels


def _glu_q8_twins(plan: Plan, op_specs: list[KernelSpec]) -> tuple[list[KernelSpec], set[int]]:
    """op_specs with each gated activation whose output the next op, an int8 tensor-core matmul
    with its input rounded once a step, reads given that matmul's rounding as its prefill kernel
    (GLU_Q8; gpu_imma.q8_layout), and the indices of those matmuls (no rounding launch)."""
    from rfc.compiler.codegen.gpu_imma import q8_layout

    rounded: set[int] = set()
    if not GLU_Q8:
        return op_specs, rounded
    out = list(op_specs)
    for i, (op, spec) in enumerate(zip(plan.ops[:-1], op_specs)):
        reader, matmul = plan.ops[i + 1], op_specs[i + 1].prefill
        if (
            op.kind != "swiglu"
            or spec.template != GLU_TEMPLATE
            or "row_gate" in spec.params
            or matmul is None
            or not matmul.params.get("prequant")
            or reader.kind != "matmul"
            or reader.inputs[0] != op.outputs[0]
            or matmul.params["k"] != spec.params["width"]
            or spec.params["width"] % SUB_BLOCK
            or spec.threads % SUB_BLOCK
        ):
            continue
        x = op.outputs[0]
        float_out = read_later(plan, i + 1, x)
        layout = q8_layout(spec.params["width"], matmul.params["max_tokens"])
        name = spec.name + "_q8"
        params = {**spec.params, "name": name, "q8": True, "float_out": float_out, **layout}
        args = (spec.args[0], ("q8", PTR), *spec.args[1:])
        out[i] = dataclasses.replace(spec, prefill=dataclasses.replace(spec, name=name, params=params, args=args))
        rounded.add(i + 1)
    return out, rounded


def _renamed(spec: KernelSpec, taken: dict[str, KernelSpec]) -> KernelSpec:
    """Two specializations the readable name does not tell apart: number the later ones."""
    i = 2
    while f"{spec.name}_{i}" in taken and taken[f"{spec.name}_{i}"] != _named(spec, f"{spec.name}_{i}"):
        i += 1
    return _named(spec, f"{spec.name}_{i}")


def _named(spec: KernelSpec, name: str) -> KernelSpec:
    return dataclasses.replace(spec, name=name, params=dict(spec.params, name=name))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


class _Planner(
    activations.GpuLowering, moe.GpuLowering, recurrent.GpuLowering, altup.GpuLowering, hc.GpuLowering, rwkv.GpuLowering
):
    def __init__(self, target: Target, plan: Plan, tensors: dict[str, TensorEntry]):
        self.target = target
        self.wave = target.wave_size
        self.plan = plan
        self.tensors = tensors  # plan weights: the entries this target reads

    def spec(self, op: Op) -> KernelSpec:
        gpu = OP_DEFS[op.kind].gpu
        spec = getattr(self, gpu.lower)(op)  # the descriptor's lowering, with one of its templates
        if spec.template not in gpu.templates:
            raise CompileError(f"internal: {op.kind}'s GPU kernel {spec.name} uses {spec.template}, not its own")
        return spec

    # -- helpers ---------------------------------------------------------------------------
    def _width(self, buffer: str) -> int:
        width = self.plan.buffer(buffer).shape[-1]
        assert isinstance(width, int), f"buffer {buffer} has a symbolic row width"
        return width

    def _row_threads(self, items: int) -> int:
        """Threads for a block that walks `items` per row: whole waves, at most MAX_THREADS."""
        return min(MAX_THREADS, _round_up(items, self.wave))

    def _f32_vector(self, op: Op, name: str) -> None:
        fmt = self.tensors[name].format
        if fmt != "F32":
            raise CompileError(f"GPU {op.kind} reads {name} as F32, but it is stored as {fmt}")

    def _rowwise(self, op: Op, template: str, name: str, width: int, **params) -> KernelSpec:
        threads = self._row_threads(width)
        return KernelSpec(
            name=name,
            template=template,
            params={"name": name, "threads": threads, "width": width, **params},
            args=KERNEL_ARGS[op.kind],
            threads=threads,
            grid=(("n_rows", 1),),
        )

    def _weight(self, op: Op, name: str) -> dict:
        """Block geometry of a [rows, cols] weight, or of one expert of an [experts, rows, cols] one."""
        entry = self.tensors[name]
        if entry.format not in FORMATS or Kernels.GPU not in FORMATS[entry.format].kernels:
            raise CompileError(f"no GPU kernel for {op.kind} with {name} in format {entry.format}")
        return weight_geometry(entry.format, *entry.shape[-2:])

    # -- one method per op kind --------------------------------------------------------------
    def _embed(self, op: Op) -> KernelSpec:
        w = self._weight(op, op.weights[0])
        if w["planar"]:
            raise CompileError(f"the GPU embed kernel gathers GGUF rows; {op.weights[0]} is {w['fmt_upper']}")
        scale, column = float(op.attr("scale")), int(op.attr("column"))
        width = int(self.plan.buffer(op.outputs[0]).shape[1])  # < cols: a slice of each row (Gemma 4's per-layer table)
        if column % w["qk"] or width % w["qk"] or column + width > w["cols"]:
            raise CompileError(
                f"the GPU embed kernel reads whole blocks: columns {column}..{column + width} of {op.weights[0]}"
            )
        blocks = width // w["qk"]
        threads = self._row_threads(blocks)
        sliced = "" if (column, width) == (0, w["cols"]) else f"_c{column}_w{width}"
        name = f"rfc_embed_{w['fmt']}_{w['cols']}{sliced}" + ("" if scale == 1.0 else "_scaled")
        params = {
            **w,
            "name": name,
            "threads": threads,
            "width": width,
            "scale": scale,
            "blocks_per_row": blocks,
            "column_bytes": column // w["qk"] * w["ts"],
        }
        return KernelSpec(name, "gpu_embed.hip.j2", params, KERNEL_ARGS["embed"], threads, (("n_rows", 1),))

    def _pos_embed(self, op: Op) -> KernelSpec:
        w = self._weight(op, op.weights[0])
        if w["planar"]:
            raise CompileError(f"the GPU position kernel gathers GGUF rows; {op.weights[0]} is {w['fmt_upper']}")
        blocks = w["cols"] // w["qk"]
        threads = self._row_threads(blocks)
        name = f"rfc_pos_embed_{w['fmt']}_{w['cols']}"
        params = {**w, "name": name, "threads": threads, "blocks_per_row": blocks}
        return KernelSpec(name, "gpu_pos_embed.hip.j2", params, KERNEL_ARGS["pos_embed"], threads, (("n_rows", 1),))

    def _matmul(self, op: Op) -> KernelSpec:
        spec = self._matmul_simt(op)
        if self.plan.buffer(op.outputs[0]).shape[0] == "T":  # logit rows (R) are few in a prefill step
            return dataclasses.replace(spec, prefill=prefill_matmul_spec(self.target, self._weight(op, op.weights[0])))
        return spec

    def _matmul_simt(self, op: Op) -> KernelSpec:
        w = self._weight(op, op.weights[0])
        name = f"rfc_matmul_{w['fmt']}_{w['rows']}x{w['cols']}"
        if not is_int8(w["fmt_upper"]):
            threads = MATMUL_WAVES * self.wave
            lanes_per_row = min(self.wave, _pow2_at_least(w["blocks_per_row"]))
            rows_per_block = threads // lanes_per_row
            params = {
                "name": name,
                "threads": threads,
                "n": w["rows"],
                "k": w["cols"],
                "lanes_per_row": lanes_per_row,
                "rows_per_block": rows_per_block,
                "tokens_per_block": MATMUL_TOKENS,
                "block_unroll": w["qk"] if w["qk"] <= MATMUL_UNROLL_MAX else 1,
                **w,
            }
            grid = ((w["rows"], rows_per_block), ("n_rows", MATMUL_TOKENS))
            return KernelSpec(name, "gpu_matmul_float.hip.j2", params, KERNEL_ARGS["matmul"], threads, grid)
        q8 = self._int8_tiling(w)
        threads = INT8_MATMUL_THREADS
        rows_per_step = threads // q8["lanes_per_row"]
        # no more row steps than the matrix has row groups (tiny models: one block of rows)
        row_steps = max(1, min(MATMUL_ROW_STEPS, -(-w["rows"] // rows_per_step)))
        rows_per_block = rows_per_step * row_steps
        params = {
            "name": name,
            "threads": threads,
            "n": w["rows"],
            "k": w["cols"],
            "rows_per_step": rows_per_step,
            "row_steps": row_steps,
            "rows_per_block": rows_per_block,
            "tokens_per_block": MATMUL_TOKENS,
            "prefetch_l2": MATMUL_PREFETCH_L2,
            **q8,
            **w,
        }
        grid = ((w["rows"], rows_per_block), ("n_rows", MATMUL_TOKENS))
        return KernelSpec(name, MATMUL_TEMPLATE, params, KERNEL_ARGS["matmul"], threads, grid)

    def _int8_tiling(self, w: dict) -> dict:
        """Lanes per row and activation chunk of an int8 matmul over a quantized weight."""
        if w["cols"] % SUB_BLOCK or w["qk"] % SUB_BLOCK:
            raise CompileError(
                f"an int8 GPU matmul needs rows of whole {SUB_BLOCK}-element sub-blocks, not {w['cols']}"
            )
        subs = w["cols"] // SUB_BLOCK
        return {
            "lanes_per_row": min(self.wave, _pow2_at_least(subs)),
            "chunk": min(MATMUL_CHUNK, w["cols"]),
            "subs_per_block": w["qk"] // SUB_BLOCK,
        }

    def _rmsnorm(self, op: Op) -> KernelSpec:
        has_weight = bool(op.weights)  # none: the norm alone (gemma4's V)
        if has_weight:
            self._f32_vector(op, op.weights[0])
        width, heads = self._width(op.inputs[0]), int(op.attr("heads"))
        seg = width // heads
        threads = self._row_threads(seg)
        per_seg = has_weight and heads > 1 and tuple(self.tensors[op.weights[0]].shape) == (width,)  # Mamba2's groups
        name = (f"rfc_rmsnorm_{width}" if heads == 1 else f"rfc_rmsnorm_{heads}x{seg}") + (
            "" if has_weight else "_unit"
        )
        name += "_segw" if per_seg else ""
        params = {"name": name, "threads": threads, "width": width, "heads": heads, "seg": seg, "eps": float(op.attrs["eps"]),
                  "has_weight": has_weight, "per_seg": per_seg}  # fmt: skip
        args = tuple(a for a in KERNEL_ARGS["rmsnorm"] if has_weight or a[0] != "weight")
        return KernelSpec(name, "gpu_rmsnorm.hip.j2", params, args, threads, (("n_rows", 1), (heads, 1)))

    def _add_bias(self, op: Op) -> KernelSpec:
        self._f32_vector(op, op.weights[0])
        width = self._width(op.inputs[0])
        return self._rowwise(op, "gpu_add_bias.hip.j2", f"rfc_add_bias_{width}", width)

    def _add(self, op: Op) -> KernelSpec:
        width = self._width(op.inputs[0])
        return self._rowwise(op, "gpu_add.hip.j2", f"rfc_add_{width}", width)

    def _swiglu(self, op: Op) -> KernelSpec:
        width, activation = self._width(op.inputs[1]), op.attr("activation")
        gates = self._width(op.inputs[0])
        if gates != width:  # sigmoid/softplus with k gates per row, one per segment (validate.py allows nothing else)
            if gates == 1:
                return self._rowwise(op, GLU_TEMPLATE, f"rfc_glu_{activation}_row_{width}", width,
                                     activation=activation, row_gate=True)  # fmt: skip
            return self._rowwise(op, GLU_TEMPLATE, f"rfc_glu_{activation}_rows{gates}_{width}", width,
                                 activation=activation, row_gate=True, gates=gates)  # fmt: skip
        name = f"rfc_swiglu_{width}" if activation == "silu" else f"rfc_glu_{activation}_{width}"
        oai = {}
        if activation in ("silu_clamp", "silu_cap"):  # the limit, in the kernel's name too (one kernel per limit)
            limit = float(op.attr("limit"))
            if not (math.isfinite(limit) and 0.0 < limit <= 1e6):
                raise CompileError(f"{activation} limit {limit} is out of range")
            name += f"_l{struct.unpack('<I', struct.pack('<f', limit))[0]:08x}"
            return self._rowwise(op, GLU_TEMPLATE, name, width, activation=activation, limit=limit)
        if activation == "situ":  # its constants, in the kernel's name too (one kernel per pair)
            situ = {"alpha": float(op.attr("alpha")), "limit": float(op.attr("limit"))}
            if not (math.isfinite(situ["alpha"]) and 1e-6 <= situ["alpha"] <= 1e6 and 0.0 <= situ["limit"] <= 1e6):
                raise CompileError(f"situ alpha/limit {situ} are out of range")
            name += "_a{}_l{}".format(*(f"{struct.unpack('<I', struct.pack('<f', v))[0]:08x}" for v in situ.values()))
            return self._rowwise(op, GLU_TEMPLATE, name, width, activation=activation, **situ)
        if activation == "swiglu_oai":  # its constants, in the kernel's name too (one kernel per pair)
            oai = {"alpha": float(op.attr("alpha")), "limit": float(op.attr("limit"))}
            if not all(math.isfinite(v) and 0.0 < v <= 1e6 for v in oai.values()):
                raise CompileError(f"swiglu_oai alpha/limit {oai} are out of range")
            name += "_a{}_l{}".format(
                *(f"{v:.9g}".replace(".", "p").replace("-", "m").replace("+", "") for v in oai.values())
            )
        return self._rowwise(op, GLU_TEMPLATE, name, width, activation=activation, **oai)

    def _moe_matmul(self, op: Op) -> KernelSpec:
        w = self._weight(op, op.weights[0])
        n_expert = self.tensors[op.weights[0]].shape[0]
        n_used = self._width(op.inputs[1])
        per_slot = self._width(op.inputs[0]) == n_used * w["cols"]
        threads = MATMUL_WAVES * self.wave
        name = f"rfc_moe_matmul_{w['fmt']}_{n_expert}x{w['rows']}x{w['cols']}_{n_used}" + ("_slots" if per_slot else "")
        params = {
            "name": name,
            "threads": threads,
            "n": w["rows"],
            "k": w["cols"],
            "n_expert": n_expert,
            "n_used": n_used,
            "per_slot": per_slot,
            "expert_bytes": w["rows"] * w["row_bytes"],
            "tokens_per_block": MATMUL_TOKENS,
            **w,
        }
        if is_int8(w["fmt_upper"]):
            template = "gpu_moe_matmul.hip.j2"
            params.update(self._int8_tiling(w))
        else:
            template = "gpu_moe_matmul_float.hip.j2"
            params["lanes_per_row"] = min(self.wave, _pow2_at_least(w["blocks_per_row"]))
            params["block_unroll"] = w["qk"] if w["qk"] <= MATMUL_UNROLL_MAX else 1
        params["rows_per_block"] = rows_per_block = threads // params["lanes_per_row"]
        grid = ((w["rows"], rows_per_block), (n_expert, 1))
        return KernelSpec(name, template, params, KERNEL_ARGS["moe_matmul"], threads, grid)

    # -- multi-head latent attention (deepseek2) ---------------------------------------------
    def _head_matmul(self, op: Op) -> KernelSpec:
        """A block per (token, head), a thread per output row decoding its blocks into registers:
        formats of blocks up to MATMUL_UNROLL_MAX elements (a k-quant's 256 would go to the stack)."""
        entry = self.tensors[op.weights[0]]
        heads, n, k = entry.shape
        w = self._weight(op, op.weights[0])
        if w["planar"] or w["qk"] > MATMUL_UNROLL_MAX:
            raise CompileError(
                f"no GPU head_matmul for {op.weights[0]} in {entry.format}: its blocks of {w['qk']} are "
                f"more than the {MATMUL_UNROLL_MAX} a thread decodes into registers"
            )
        stride = int(op.attr("stride")) or k
        threads = self._row_threads(n)
        name = f"rfc_head_matmul_{w['fmt']}_{heads}x{n}x{k}" + (f"_s{stride}" if stride != k else "")
        params = {"name": name, "threads": threads, "heads": heads, "n": n, "k": k, "stride": stride, **w}
        return KernelSpec(
            name, "gpu_head_matmul.hip.j2", params, KERNEL_ARGS["head_matmul"], threads, (("n_rows", 1), (heads, 1))
        )

    def _concat_heads(self, op: Op) -> KernelSpec:
        heads = int(op.attrs["heads"])
        wa, wb = self._width(op.inputs[0]) // heads, self._width(op.inputs[1]) // heads
        return self._rowwise(
            op,
            "gpu_concat_heads.hip.j2",
            f"rfc_concat_heads_{heads}x{wa}x{wb}",
            heads * (wa + wb),
            heads=heads,
            wa=wa,
            wb=wb,
        )

    def _slice_heads(self, op: Op) -> KernelSpec:
        heads, width = int(op.attrs["heads"]), int(op.attrs["width"])
        stride = self._width(op.inputs[0]) // heads
        return self._rowwise(
            op,
            "gpu_slice_heads.hip.j2",
            f"rfc_slice_heads_{heads}x{stride}x{width}",
            heads * width,
            heads=heads,
            stride=stride,
            part=width,
        )

    def _gather_rows(self, op: Op) -> KernelSpec:
        width = self._width(op.inputs[0])
        return self._rowwise(op, "gpu_gather_rows.hip.j2", f"rfc_gather_rows_{width}", width)

    def _kv_dtype(self) -> str:
        dtype = self.plan.kv.dtype
        if dtype not in KV_DTYPES:
            raise CompileError(f"no GPU kernels for a KV cache of {dtype} (supported: {', '.join(KV_DTYPES)})")
        return dtype

    def _kv_write(self, op: Op) -> KernelSpec:
        """The first `width` (the op's k / v width) values of the cache rows of KVSpec.row."""
        width, row = self._width(op.inputs[0]), self.plan.kv.row
        dtype = self._kv_dtype()
        name = f"rfc_kv_write_{dtype}_{width}" + (f"_r{row}" if row != width else "")
        quant = _kv_quant(self.plan, self.plan.kv.head_dim)
        chunk = min(
            width, max(KV_QUANT_CHUNK // max(quant["k_rot"], BLOCK_VALUES), 1) * max(quant["k_rot"], BLOCK_VALUES)
        )
        return self._rowwise(op, "gpu_kv_write.hip.j2", name, width, kv_dtype=dtype, kv_row=row, chunk=chunk, **quant)

    def _rope(self, op: Op) -> KernelSpec:
        a = op.attrs
        n_rot, style = a["n_rot"], a["style"]
        half = n_rot // 2
        if style not in ("adjacent", "neox"):
            raise CompileError(f"no GPU kernel for rope style {style!r}")
        has_factors = bool(op.weights)
        if has_factors:
            self._f32_vector(op, op.weights[0])
        inv_freq = rope_freqs(a)  # float64, YaRN's ramp included
        if not all(math.isfinite(f) for f in inv_freq):
            raise CompileError("rope frequencies are not finite")
        n_pairs = (a["n_heads"] + a["n_kv_heads"]) * half
        threads = self._row_threads(n_pairs)
        name = f"rfc_rope_{style}_{a['n_heads']}x{a['n_kv_heads']}x{a['head_dim']}_{n_rot}" + (
            "_ff" if has_factors else ""
        )
        params = {
            "name": name,
            "threads": threads,
            "style": style,
            "n_heads": a["n_heads"],
            "n_kv_heads": a["n_kv_heads"],
            "head_dim": a["head_dim"],
            "half": half,
            "n_pairs": n_pairs,
            "batch": ROPE_LOAD_BATCH,
            # adjacent pairs (2i, 2i+1); neox pairs (i, i + n_rot/2)
            "pair_stride": 2 if style == "adjacent" else 1,
            "pair_offset": 1 if style == "adjacent" else half,
            "inv_freq": inv_freq,
            "has_freq_factors": has_factors,
            "attn_factor": float(op.attr("attn_factor")),
            "temp_scale": float(op.attr("temp_scale")),  # validate_plan: finite, and with it n_rot == head_dim
            "temp_floor": int(op.attr("temp_floor")),
        }
        args = tuple(arg for arg in KERNEL_ARGS["rope"] if has_factors or arg[0] != "freq_factors")
        return KernelSpec(name, "gpu_rope.hip.j2", params, args, threads, (("n_rows", 1),))

    def _attention(self, op: Op) -> KernelSpec:
        """The per-op kernel (grid rows x kv heads, every slice in turn) and, when rows split
        into more than one slice, the step program's split and reduce kernels (or the split
        kernel alone, merging in its last block: ATTENTION_LAST_BLOCK_MERGE). The per-op and
        split kernels both hold the tiled prefill path (gpu_attention_tile.hip.j2) that steps
        of more than ATTENTION_SPLIT_ROWS rows take, in their z = 0 blocks: one code for both
        paths, so they agree bit for bit, and no launch more in the program."""
        a = op.attrs
        causal = op.attr("causal")
        head_dim, n_heads, n_kv_heads = a["head_dim"], a["n_heads"], a["n_kv_heads"]
        threads = max(ATTENTION_THREADS, _round_up(head_dim, self.wave))
        dtype = self._kv_dtype()
        window, softcap = op.attr("window"), op.attr("softcap")
        group = n_heads // n_kv_heads
        # no more slices than the longest row (the context, or the window) can fill
        keys = min(self.plan.context_length, int(window)) if window is not None else self.plan.context_length
        splits = max(1, min(ATTENTION_SPLITS, -(-keys // ATTENTION_SPLIT_KEYS)))
        if not causal:  # an encoder's rows run in prefill steps, never split: one slice (no reduce kernel)
            splits = 1
        item = 2 if dtype == "f16" else 4
        widths = [n for n in (8, 4, 2, 1) if n * item <= VECTOR_BYTES and head_dim % n == 0]
        k_vec = next(n for n in widths if n * group <= ATTENTION_SCORE_MAX or n == 1)  # one thread reads a key's row
        v_vec = next(n for n in widths if n * group <= ATTENTION_ACC_MAX or n == 1)
        lanes = head_dim // v_vec  # threads per value row
        dim_groups = threads // lanes
        row = self.plan.kv.row  # the cache row: this layer's values come first (KVSpec)
        name = f"rfc_attention_{dtype}_{n_heads}x{n_kv_heads}x{head_dim}" + (
            f"_r{row}" if row != n_kv_heads * head_dim else ""
        )
        name += (f"_w{window}" if window is not None else "") + ("_capped" if softcap is not None else "")
        name += "" if causal else "_bidir"
        alibi = op.attr("alibi")
        if alibi is not None:  # the slopes are compiled in: the maximum bias's bits in the name
            name += f"_alibi{struct.unpack('<I', struct.pack('<f', alibi))[0]:08x}"
        pos_bias = op.attr("pos_bias")  # T5: the weight is a bias table, not sinks
        has_sinks = bool(op.weights) and pos_bias is None  # gpt-oss: a logit per query head, F32
        table = ("sinks" if has_sinks else "pos_bias") if op.weights else None  # the weight's kernel argument
        if op.weights:
            self._f32_vector(op, op.weights[0])
            name += "_sinks" if has_sinks else f"_pb{pos_bias}"
        params = {
            "name": name,
            "threads": threads,
            "n_heads": n_heads,
            "n_kv_heads": n_kv_heads,
            "head_dim": head_dim,
            "group": group,
            "k_vec": k_vec,
            "v_vec": v_vec,
            "lanes": lanes,
            "dim_groups": dim_groups,
            # shared: p of a chunk [group][threads], then the accumulators [dim_groups][group][head_dim]
            "p_floats": max(group * threads, dim_groups * group * head_dim),
            "splits": splits,
            "split_keys": ATTENTION_SPLIT_KEYS,
            "split_rows": ATTENTION_SPLIT_ROWS,
            "part_floats": head_dim + 2,  # max, sum, weighted values
            "scale": float(a["scale"]),
            "kv_dtype": dtype,
            "kv_row": row,
            **_kv_quant(self.plan, head_dim),
            "has_window": window is not None,
            "window": int(window or 0),
            "has_softcap": softcap is not None,
            "softcap": float(softcap or 0.0),
            "has_sinks": has_sinks,
            "split": False,
            "batched_softmax": ATTENTION_BATCHED_SOFTMAX,
            "wave": self.wave,  # (the template reads RFC_WAVE; gpu_fuse.ATTENTION_Q8 reads this)
        }
        if alibi is not None:  # only then: the other kernels' parameters (and so their cache keys) stay as they were
            params.update(has_alibi=True, alibi=alibi_slopes(n_heads, alibi))
        if pos_bias is not None:  # likewise
            params.update(has_pos_bias=True, pos_bias=int(pos_bias))
        if not causal:  # likewise: each row attends its sequence's last position in the step (rfc_attention_seq_last)
            params["noncausal"] = True
        tile = _attention_tile(head_dim, group, threads)
        params.update(tile)
        params["smem_floats"] = max(group * head_dim + params["p_floats"], _tile_floats(tile, head_dim))
        steps = ()
        if splits > 1 and ATTENTION_LAST_BLOCK_MERGE:
            split = KernelSpec(
                f"{name}_split",
                ATTENTION_TEMPLATE,
                dict(params, name=f"{name}_split", split=True, merge=True),
                _args("attention_split_merge", table),
                threads,
                (("n_rows", 1), (n_kv_heads, 1), (splits, 1)),
            )
            steps = (split,)
        elif splits > 1:
            split = KernelSpec(
                f"{name}_split",
                ATTENTION_TEMPLATE,
                dict(params, name=f"{name}_split", split=True),
                _args("attention_split", table),
                threads,
                (("n_rows", 1), (n_kv_heads, 1), (splits, 1)),
            )
            reduce_threads = self._row_threads(group * head_dim)
            reduce = KernelSpec(
                f"{name}_reduce",
                "gpu_attention_reduce.hip.j2",
                dict(params, name=f"{name}_reduce", threads=reduce_threads),
                _args("attention_reduce", table),
                reduce_threads,
                (("n_rows", 1), (n_kv_heads, 1)),
            )
            steps = (split, reduce)
        grid = (("n_rows", 1), (n_kv_heads, 1))  # one block per kv head and its query heads
        spec = KernelSpec(name, ATTENTION_TEMPLATE, params, _args("attention", table), threads, grid, steps)
        from rfc.compiler.codegen.gpu_attention import mma_attention_spec  # the prefill list's, on tensor cores

        return dataclasses.replace(spec, prefill=mma_attention_spec(self.target, spec))


def _kv_quant(plan: Plan, head_dim: int) -> dict:
    """The constants of quantized KV caches (the type is the runtime's k_type / v_type):
    whether the runtime can serve this plan with q8_0 / q4_0 rows at all (what KvCacheTypes.check
    asks: head_dim whole blocks, and one KV geometry in every layer; where not, the kernels are
    compiled for f16 alone, without the quantized loops' registers: Gemma 4 31B's global layers
    122 -> 90 on sm_90, of the 128 its 512 threads allow), and the Hadamard rotations of
    quantized K and V rows (KvCacheTypes.rotations) with their 1 / sqrt(size), the double
    runtime/model/kv_quant.py multiplies by (rendered by repr: the literal reads back exactly)."""
    geometries = {(op.attrs["n_kv_heads"], op.attrs["head_dim"]) for op in plan.ops if op.kind == "attention"}
    quantizable = head_dim % BLOCK_VALUES == 0 and len(geometries) <= 1
    k_rot, v_rot = KvCacheTypes(CacheType.Q8_0, CacheType.Q8_0).rotations(head_dim) if quantizable else (0, 0)
    return {
        "quantizable": quantizable,
        "k_rot": k_rot,
        "v_rot": v_rot,
        "k_norm": 1.0 / math.sqrt(k_rot) if k_rot else 0.0,
        "v_norm": 1.0 / math.sqrt(v_rot) if v_rot else 0.0,
    }


def _args(kernel: str, table: str | None) -> tuple[tuple[str, str], ...]:
    """An attention kernel's arguments, its weight's where the op has one: named `table`, "sinks"
    (gpt-oss) or "pos_bias" (T5's position-bias table, in the sinks' place)."""
    args = KERNEL_ARGS[kernel] if kernel in KERNEL_ARGS else STEP_KERNEL_ARGS[kernel]
    return tuple((table, kind) if name == "sinks" else (name, kind) for name, kind in args if table or name != "sinks")


def _tile_floats(tile: dict, head_dim: int) -> int:
    """Shared floats of the tiled path: q, K (padded rows), V, p, and max / sum / rescale per query."""
    queries, keys = tile["tile_queries"], tile["tile_keys"]
    return queries * (head_dim + keys + 3) + keys * (tile["tile_kstride"] + head_dim)


def _attention_tile(head_dim: int, group: int, threads: int) -> dict:
    """The prefill tile: for each key chunk, the most rows that fit the shared budget; of
    those, the tile whose chunk does the most dot products per element it holds
    (queries x keys / (queries + keys)), ties to the bigger chunk (fewer barriers per key)."""
    kstride = head_dim if head_dim % 2 else head_dim + 1  # odd: lanes of a key chunk hit distinct banks
    cap = max(
        1, min(ATTENTION_TILE_ROWS, ATTENTION_TILE_QUERIES // group, ATTENTION_ACC_TILE * threads // (group * head_dim))
    )
    best, best_score = None, -1.0
    for keys in (*ATTENTION_TILE_KEYS, ATTENTION_TILE_KEYS_LAST):
        if keys == ATTENTION_TILE_KEYS_LAST and best is not None:
            break
        for rows in range(cap, 0, -1):
            tile = {
                "tile_rows": rows,
                "tile_queries": rows * group,
                "tile_keys": keys,
                "tile_kstride": kstride,
                "tile_acc": -(-rows * group * head_dim // threads),
            }
            if 4 * _tile_floats(tile, head_dim) <= ATTENTION_TILE_SHARED:
                score = rows * group * keys / (rows * group + keys)
                if score > best_score:
                    best, best_score = tile, score
                break
    if best is None:
        raise CompileError(
            f"no prefill attention tile of {group} query heads x {head_dim} fits {ATTENTION_TILE_SHARED} bytes"
        )
    return best


def attention_scratch_floats(spec: KernelSpec) -> int:
    """Floats of the partials a split attention kernel writes: rows up to the split bound."""
    p = spec.params
    return ATTENTION_SPLIT_ROWS * p["n_heads"] * p["splits"] * p["part_floats"]


def attention_arrival_ints(spec: KernelSpec) -> int:
    """Counts a merging split attention kernel keeps: one per (row up to the split bound, kv head)."""
    return ATTENTION_SPLIT_ROWS * spec.params["n_kv_heads"]


# -- the step program (artifacts/program.py): the launch list over a static arena ------------------

# Largest step a program accepts; the runtime refuses bigger batches (the engine's chunked
# prefill keeps steps below it).
PROGRAM_MAX_TOKENS = 2048
PROGRAM_MAX_ROWS = STEP_TOKENS  # the scheduler's default step budget (max_batch_tokens), all rows wanted
PROGRAM_MAX_SEQS = 256
ARENA_ALIGNMENT = 256  # bytes: every buffer 16-byte (128-bit load) aligned and more


def _row_count(plan: Plan, buffer: str) -> str:
    """The STEP_ARGS scalar that counts a buffer's rows ("T" tokens or "R" logit rows)."""
    dim = plan.buffer(buffer).shape[0]
    return {"T": "n_tokens", "R": "n_rows"}[dim]


def _arg_slot(plan: Plan, op: Op, name: str, kind: str) -> ArgSlot:
    """Where kernel argument `name` of `op` comes from (the runtime binds it)."""
    size = ARG_SIZES[kind]
    rows_of = (op.outputs or op.inputs)[0]
    names = [n for n, _k in KERNEL_ARGS[op.kind]]
    if name in ("n_rows",):
        return ArgSlot(ArgKind.SCALAR, _row_count(plan, rows_of), size=size)
    if name == "n_seqs":
        return ArgSlot(ArgKind.SCALAR, "n_seqs", size=size)
    if name == "state":
        return ArgSlot(ArgKind.STATE, "")
    if name == "state_offset":
        return ArgSlot(ArgKind.SCALAR, "", value=plan.state.offset(int(op.attrs["state"])), size=size)
    if name in ("state_slots", "seq_start"):
        return ArgSlot(ArgKind.BATCH, name)
    if name in ("table_width", "block_size", "k_type", "v_type"):
        return ArgSlot(ArgKind.SCALAR, name, size=size)
    if name in ("positions", "seq_of_token", "block_tables", "slots", "tokens", "rows"):
        if name == "tokens" and op.inputs[0] != plan.input_tokens:
            return ArgSlot(ArgKind.ARENA, op.inputs[0])
        return ArgSlot(ArgKind.BATCH, "logit_rows" if name == "rows" else name)
    if name in ("k_cache", "v_cache"):
        return ArgSlot(ArgKind.KV, name[0], value=int(op.attrs.get("layer", 0)))
    # the rest are the op's buffers and weights: the parameters its descriptor names for its outputs and
    # weights (GpuPart.outputs, .weights), its inputs the other buffers in declaration order
    gpu = OP_DEFS[op.kind].gpu
    outs, weights = gpu.outputs, gpu.weights
    if op.kind == "wkv6" and op.attr("mode") == "gla":  # gla: no bonus u
        weights = ("decay",)
    if op.kind == "attention" and op.attr("pos_bias") is not None:  # T5's table in the sinks' place
        weights = ("pos_bias",)
    if op.kind == "moe_route":  # the experts' output scales only with expert_scale: the last weight
        weights = ("bias", "escale")[2 - len(op.weights) :] if op.attr("expert_scale") else ("bias",)
    if name in outs:
        return ArgSlot(ArgKind.ARENA, op.outputs[outs.index(name)])
    if name in weights:
        return ArgSlot(ArgKind.WEIGHT, op.weights[weights.index(name)])
    ins = [
        n
        for n in names
        if n not in outs
        and n not in weights
        and n
        not in (
            "n_rows",
            "table_width",
            "block_size",
            "positions",
            "seq_of_token",
            "block_tables",
            "slots",
            "tokens",
            "rows",
            "k_cache",
            "v_cache",
        )
    ]
    return ArgSlot(ArgKind.ARENA, op.inputs[ins.index(name)])


def buffer_uses(plan: Plan) -> tuple[dict[str, int], dict[str, int]]:
    """Each buffer's first and last op (by index) that reads or writes it."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, op in enumerate(plan.ops):
        for b in (*op.inputs, *op.outputs):
            first.setdefault(b, i)
            last[b] = i
    return first, last


def read_later(plan: Plan, after: int, buffer: str) -> bool:
    """Whether an op after `after` reads `buffer` before one writes it (or it is a step output)."""
    if buffer in (plan.output_logits, plan.output_hidden, plan.output_scores):
        return True
    for op in plan.ops[after + 1 :]:
        if buffer in op.inputs:
            return True
        if buffer in op.outputs:
            return False
    return False


def plan_step_arena(
    plan: Plan,
    scratch_floats: int = 0,
    q8_bytes: int = 0,
    arrival_ints: int = 0,
    split_bytes: int = 0,
) -> Arena:
    """Plan buffers packed by liveness: a buffer's bytes are reused once its last reader has
    run. The outputs (logits, hidden) stay live to the end; the input tokens are a batch array.
    The split attention's partials (ATTENTION_SCRATCH, `scratch_floats`, bounded by
    ATTENTION_SPLIT_ROWS rows, not by the context) follow, overlapping nothing: every layer's
    attention reuses them between its split and reduce launches. The merging split kernels'
    counts (ATTENTION_ARRIVALS, `arrival_ints`) come last, in the arena's `zeroed`."""
    sizes = {"T": PROGRAM_MAX_TOKENS, "R": PROGRAM_MAX_ROWS}
    first, last = buffer_uses(plan)
    end = len(plan.ops)
    for b in (plan.output_logits, plan.output_hidden, plan.output_scores):
        if b:  # "": an encoder's absent logits, a plan without scores
            last[b] = end
    live: list[tuple[int, int, int]] = []  # (offset, nbytes, last use)
    slots, total = [], 0
    for b in sorted(
        (b for b in plan.buffers if b.name in first and b.name != plan.input_tokens), key=lambda b: first[b.name]
    ):
        n = 4
        for d in b.shape:
            n *= sizes[d] if isinstance(d, str) else d
        nbytes = _round_up(n, ARENA_ALIGNMENT)
        start = first[b.name]
        live = [s for s in live if s[2] >= start]
        offset = 0
        for o, size, _ in sorted(live):  # first gap that fits
            if offset + nbytes <= o:
                break
            offset = max(offset, o + size)
        live.append((offset, nbytes, last[b.name]))
        slots.append(ArenaSlot(b.name, offset, n))
        total = max(total, offset + nbytes)
    if scratch_floats:
        slots.append(ArenaSlot(ATTENTION_SCRATCH, total, 4 * scratch_floats))
        total += _round_up(4 * scratch_floats, ARENA_ALIGNMENT)
    if q8_bytes:  # the prefill list's rounded matmul inputs (compiler/codegen/gpu_imma.py Q8_SCRATCH)
        from rfc.compiler.codegen.gpu_imma import Q8_SCRATCH

        slots.append(ArenaSlot(Q8_SCRATCH, total, q8_bytes))
        total += _round_up(q8_bytes, ARENA_ALIGNMENT)
    if split_bytes:  # the split-K matmuls' partial sums (gpu_imma.SPLIT_SCRATCH)
        from rfc.compiler.codegen.gpu_imma import SPLIT_SCRATCH

        slots.append(ArenaSlot(SPLIT_SCRATCH, total, split_bytes))
        total += _round_up(split_bytes, ARENA_ALIGNMENT)
    zeroed: tuple[str, ...] = ()
    if arrival_ints:
        slots.append(ArenaSlot(ATTENTION_ARRIVALS, total, 4 * arrival_ints))
        total += _round_up(4 * arrival_ints, ARENA_ALIGNMENT)
        zeroed += (ATTENTION_ARRIVALS,)
    return Arena(PROGRAM_MAX_TOKENS, PROGRAM_MAX_ROWS, PROGRAM_MAX_SEQS, ARENA_ALIGNMENT, tuple(slots), total, zeroed)


def arena_with(arena: Arena, name: str, nbytes: int, arrival_ints: int) -> Arena:
    """`arena` with a slot `name` of `nbytes` after its others, and its ATTENTION_ARRIVALS (the
    last slot, zeroed once) holding at least `arrival_ints` counts."""
    counts = next((s for s in arena.slots if s.buffer == ATTENTION_ARRIVALS), None)
    slots = [s for s in arena.slots if s is not counts]
    total = counts.offset if counts is not None else arena.total_bytes
    slots.append(ArenaSlot(name, total, nbytes))
    total += _round_up(nbytes, ARENA_ALIGNMENT)
    ints = max(arrival_ints, counts.nbytes // 4 if counts is not None else 0)
    zeroed = arena.zeroed
    if ints:
        slots.append(ArenaSlot(ATTENTION_ARRIVALS, total, 4 * ints))
        total += _round_up(4 * ints, ARENA_ALIGNMENT)
        zeroed = zeroed if ATTENTION_ARRIVALS in zeroed else (*zeroed, ATTENTION_ARRIVALS)
    return dataclasses.replace(arena, slots=tuple(slots), total_bytes=total, zeroed=zeroed)


def plan_program(target: Target, plan: Plan, specs: list[KernelSpec], op_kernels: list[str], fusions=()) -> StepProgram:
    """The launch list: one launch per plan op, grids counted in STEP_ARGS scalars, but one
    launch for each run of ops in `fusions` (compiler/codegen/gpu_fuse.py). Where an op has a
    prefill kernel (tensor-core matmuls), a second list for steps of at least
    PREFILL_MIN_TOKENS tokens: that kernel in its place, every other launch the same (a fused
    run holding such an op launches its ops one by one there, or its Fusion.prefill: the
    segmented tensor-core matmul)."""
    launches, prefill, sizes = _launch_lists(target, plan, specs, op_kernels, fusions)
    scratch, arrivals, q8_bytes, split_bytes = sizes
    # a list of its own where an op has a prefill kernel (the q8 hand-off's plain twins alone make
    # no second list: without one, the decode list takes every step)
    by_name = {s.name: s for s in specs}
    has_prefill = any(by_name[k].prefill is not None for k in op_kernels) and prefill != launches
    return StepProgram(
        target.name,
        plan_step_arena(plan, scratch, q8_bytes, arrivals, split_bytes),
        launches=tuple(launches),
        prefill_launches=tuple(prefill) if has_prefill else (),
        prefill_min_tokens=PREFILL_MIN_TOKENS if has_prefill else 0,
        single_launches=_single_list(launches, by_name),
    )


def one_token_twin(spec: KernelSpec, target: Target | None = None) -> KernelSpec | None:
    """The twin of a matmul kernel whose blocks take MATMUL_TOKENS tokens (its grid's token
    dimension tiled by them) with blocks of one token, for the one-token list of `target`'s
    program (its resident blocks: _one_token_blocks); None for other kernels."""
    tokens = spec.params.get("tokens_per_block")
    if not SINGLE_TOKEN_LIST or not tokens or tokens == 1 or ("n_rows", tokens) not in spec.grid:
        return None
    name = spec.name + ONE_TOKEN_SUFFIX
    grid = tuple((c, 1) if c == "n_rows" else (c, t) for c, t in spec.grid)
    params = {**spec.params, "name": name, "tokens_per_block": 1, **_one_token_chunk(spec.params, tokens)}
    if ONE_TOKEN_LOADS_AHEAD and spec.template in INT8_ROW_TEMPLATES and _planar(params):
        params.update(_loads_ahead(params, target))
    return dataclasses.replace(spec, name=name, params=params, grid=grid, steps=(), prefill=None)


# A one-token int8 twin (the dp4a templates below) is written so that a lane's weight loads go out
# together: its token is known to be there (no test of it around every sub-block's loads, which
# kept the compiler from issuing the next sub-block's before the last one's dot: one load in
# flight a lane, each waiting out its round trip), and the loop over a lane's sub-blocks of a
# chunk of float activations is unrolled ONE_TOKEN_LANE_LOADS at a time (as many as a 4096-wide
# row's q8 loop has a lane; the q8 loop is unrolled whole). Those loads take registers, which
# RFC_KERNEL_BLOCKS caps for ONE_TOKEN_MIN_BLOCKS resident blocks a multiprocessor: two (128
# registers) leave the planar formats' twins at an 8B's sizes without spills (the 8B's Q4_K gate/up
# twin takes 127). On Hopper (sm_90 and newer) three (80 registers), ONE_TOKEN_HOPPER_BLOCKS, took
# the 8B's batch-1 graph step from 2,869 to 2,732 us on an H200 (2026-11-30, every twin at three,
# its Q4_K gate/up spilling 8 bytes); at an 8B's sizes three spill 8 bytes on sm_90 in the gate/up
# twins of Q4_K and Q5_K, the Q5_K output projection and the Q8_0 q/k/v, so there the gate/up
# twins and any twin of ONE_TOKEN_TWO_BLOCKS' formats keep two (sm_80 spilled in the Q4_K output
# and q/k/v at three too: it keeps two). Only weights in planar layouts: the i-quants' decodes
# (grids, tables) spilled at 128 (IQ4_NL, IQ4_XS, IQ3_S gate/up at an 8B's sizes), so they keep
# the walk of the blocks of 8. The same sums in the same order.
ONE_TOKEN_LOADS_AHEAD = True
ONE_TOKEN_MIN_BLOCKS = 2
ONE_TOKEN_HOPPER_BLOCKS = 3
ONE_TOKEN_HOPPER_SM = 90
ONE_TOKEN_TWO_BLOCKS = ("Q5_K", "Q8_0")  # weight formats (by base) whose twins keep two blocks
ONE_TOKEN_LANE_LOADS = 4
INT8_ROW_TEMPLATES = (MATMUL_TEMPLATE, FUSED_MATMUL_TEMPLATE)


def _planar(params: dict) -> bool:
    """Whether every weight a matmul kernel walks is in a planar layout (the weight planner's)."""
    return all(g.get("planar") for g in params.get("fmt_groups") or [params])


def _one_token_blocks(params: dict, target: Target | None) -> int:
    """The resident blocks a multiprocessor a one-token twin asks for: ONE_TOKEN_HOPPER_BLOCKS on
    sm_90 and newer but for the gate/up twins (two weight rows a lane) and those of
    ONE_TOKEN_TWO_BLOCKS' formats, ONE_TOKEN_MIN_BLOCKS elsewhere."""
    if target is None or target.sm < ONE_TOKEN_HOPPER_SM:
        return ONE_TOKEN_MIN_BLOCKS
    groups = params.get("fmt_groups") or [params]
    bases = {FORMATS[g["fmt_upper"]].base for g in groups if g.get("fmt_upper") in FORMATS}
    if params.get("glu") or bases & set(ONE_TOKEN_TWO_BLOCKS):
        return ONE_TOKEN_MIN_BLOCKS
    return ONE_TOKEN_HOPPER_BLOCKS


def _loads_ahead(params: dict, target: Target | None) -> dict:
    """The loads-ahead parameters of a one-token int8 twin's template (ONE_TOKEN_LOADS_AHEAD)."""
    out = {"loads_ahead": True, "min_blocks": _one_token_blocks(params, target)}
    chunk, lanes = params.get("chunk"), params.get("lanes_per_row")
    if params.get("q8in") or not chunk or not lanes:
        return out  # the q8 walk is unrolled whole
    per_lane = -(-chunk // SUB_BLOCK // lanes)  # a lane's most sub-blocks in a chunk
    if per_lane > 1:
        out["lane_loads"] = min(per_lane, ONE_TOKEN_LANE_LOADS)  # the chunked loop over them, unrolled
    return out


# A one-token twin (above) rounds up to MATMUL_CHUNK x MATMUL_TOKENS columns of its float
# activations in one pass (_one_token_chunk). False: its blocks of 8's chunks (an A/B switch; the
# same bits either way; unmeasured on a card).
ONE_TOKEN_WIDE_CHUNK = True


def _one_token_chunk(params: dict, tokens: int) -> dict:
    """The chunk of an int8 twin that rounds its float activations in shared memory: the shared
    memory of `tokens` tokens' chunks holds that many times the columns of one token's, so a
    row of up to MATMUL_CHUNK x MATMUL_TOKENS columns (an 8B's 14336-wide FFN down) is rounded in
    one pass behind two barriers, where blocks of 8 took 7 passes of 2048 columns, each behind
    two barriers and by 64 of the block's threads. A lane still walks its row's sub-blocks
    lane, lane + lanes_per_row, ...: the chunks' sub-blocks were shared out evenly, so the same
    sums in the same order. {} where the twin keeps its chunk."""
    chunk, k, lanes = params.get("chunk"), params.get("k"), params.get("lanes_per_row")
    if not ONE_TOKEN_WIDE_CHUNK or not chunk or not k or not lanes or chunk >= k or (chunk // SUB_BLOCK) % lanes:
        return {}
    return {"chunk": min(k, chunk * tokens)}  # a multiple of the chunk where short of k: shared out evenly too


def _single_list(launches: list[Launch], by_name: dict[str, KernelSpec]) -> tuple[Launch, ...]:
    """The one-token list: the decode list with each launch whose kernel has a one-token twin
    among `by_name` launching that twin over blocks of one token; () where no kernel has one."""
    single, twinned = [], False
    for launch in launches:
        twin = by_name.get(launch.kernel + ONE_TOKEN_SUFFIX)
        if twin is None:
            single.append(launch)
            continue
        own = by_name[launch.kernel].grid
        grid = tuple(GridDim(g.count, 1) if c == "n_rows" else g for (c, _t), g in zip(own, launch.grid))
        single.append(dataclasses.replace(launch, kernel=twin.name, grid=grid))
        twinned = True
    return tuple(single) if twinned else ()


def _launch_lists(target: Target, plan: Plan, specs: list[KernelSpec], op_kernels: list[str], fusions):
    """(decode list, prefill list, (attention scratch floats, arrival ints, q8 bytes, norm arrival
    ints)) for the runs `fusions`."""
    by_name = {s.name: s for s in specs}
    fused = {f.first: f for f in fusions}
    launches: list[Launch] = []
    prefill: list[Launch] = []
    scratch = 0
    arrivals = 0
    q8_bytes = 0
    split_bytes = 0
    rounded = None  # (input buffer, k) whose int8 rounding Q8_SCRATCH holds at this point of the prefill list

    def prefill_launch(op: Op, spec: KernelSpec, launch: Launch | None = None) -> None:
        """Appends op's prefill launch (`launch`: the one of a fused run that starts with op, and
        `spec` its kernel); an int8 tensor-core matmul over a prequantized input first gets the
        launch that rounds it, unless the launch before rounded the same input."""
        nonlocal q8_bytes, rounded, split_bytes
        if spec.template == GLU_TEMPLATE and spec.params.get("q8"):  # (GLU_Q8) leaves its output rounded
            prefill.append(launch or op_launch(plan, op, spec))
            rounded = (op.outputs[0], spec.params["width"])
            q8_bytes = max(q8_bytes, spec.params["q8_bytes"])
            return
        if spec.params.get("prequant"):
            key = (op.inputs[0], spec.params["k"])
            if rounded != key:
                prefill.append(_quantize_launch(plan, op, by_name[_quantize_spec(target, spec).name]))
                rounded = key
            q8_bytes = max(q8_bytes, spec.params["q8_bytes"])
        else:
            rounded = None  # another launch may write that input
        prefill.append(launch or op_launch(plan, op, spec))
        if spec.params.get("split_k", 1) > 1:  # (gpu_imma.IMMA_SPLIT_K) its partials added into its output
            prefill.append(op_launch(plan, op, by_name[_split_reduce_spec(spec).name]))
            split_bytes = max(split_bytes, spec.params["split_bytes"])

    i = 0
    while i < len(plan.ops):
        if i in fused:
            f = fused[i]
            ops = plan.ops[i : i + f.count]
            own = [by_name[k] for k in op_kernels[i : i + f.count]]
            launch = fused_launch(plan, ops, f.spec, f.sources, own)
            launches.append(launch)
            if f.spec.params.get("q8"):  # the decode list's rounded hand-off (gpu_fuse.DECODE_Q8)
                q8_bytes = max(q8_bytes, f.spec.params["q8_bytes"])
            if f.spec.template == ATTENTION_TEMPLATE:  # its split kernel's twin rounding its output (ATTENTION_Q8)
                if any(n == "scratch" for n, _k in f.spec.args):
                    scratch = max(scratch, attention_scratch_floats(f.spec))
                if any(n == "arrivals" for n, _k in f.spec.args):
                    arrivals = max(arrivals, attention_arrival_ints(f.spec))
            if f.prefill is not None:  # one launch over the first ops' prefill kernels, the rest one by one
                pre, n = f.prefill.spec, f.prefill.count
                own_prefill = [s.prefill for s in own[:n]]
                prefill_launch(ops[0], pre, fused_launch(plan, ops[:n], pre, f.prefill.sources, own_prefill))
                for op, spec in zip(ops[n:], own[n:]):
                    prefill_launch(op, spec.prefill or spec)
            elif any(s.prefill is not None for s in own):
                for op, spec in zip(ops, own):
                    prefill_launch(op, spec.prefill or spec)
            elif f.spec.params.get("q8") and f.spec.template != ATTENTION_TEMPLATE:  # (its twin: plain below)
                # an add + rmsnorm that also leaves its output rounded (the q8 hand-off): in the layout the
                # prefill list's int8 matmuls read (gpu_imma.q8_layout), so they need no rounding launch
                prefill.append(launch)
                rounded = (ops[-1].outputs[0], f.spec.params["width"])
            else:
                plain = f.plain
                prefill.append(launch if plain is None else fused_launch(plan, ops, plain.spec, plain.sources, own))
                rounded = None
            i += f.count
            continue
        op, spec = plan.ops[i], by_name[op_kernels[i]]
        ours = [op_launch(plan, op, s) for s in spec.steps or (spec,)]
        launches += ours
        if spec.prefill is not None:
            prefill_launch(op, spec.prefill)
        else:
            prefill += ours
            rounded = None
        for s in spec.steps or (spec,):
            if any(n == "scratch" for n, _k in s.args):
                scratch = max(scratch, attention_scratch_floats(s))
            if any(n == "arrivals" for n, _k in s.args):
                arrivals = max(arrivals, attention_arrival_ints(s))
        i += 1
    return launches, prefill, (scratch, arrivals, q8_bytes, split_bytes)


def fused_launch(plan: Plan, ops, spec: KernelSpec, sources, op_specs: list[KernelSpec]) -> Launch:
    """One launch of fused kernel `spec` for the run `ops`: argument i is the slot its source
    op's own launch passes for that argument (sources named q8, scratch and arrivals: the
    arena's Q8_SCRATCH, ATTENTION_SCRATCH and ATTENTION_ARRIVALS slots: an attention's split
    kernel takes the last two, its own kernel not); the grid counts the first op's rows."""
    own = [dict(zip((n for n, _k in s.args), op_launch(plan, op, s).args)) for op, s in zip(ops, op_specs)]
    rows = _row_count(plan, (ops[0].outputs or ops[0].inputs)[0])
    grid = tuple(GridDim(rows if c == "n_rows" else c, t) for c, t in spec.grid)
    return Launch(
        spec.name,
        spec.threads,
        grid,
        tuple(
            _q8_slot()
            if n == "q8"
            else ArgSlot(ArgKind.ARENA, ATTENTION_SCRATCH)
            if n == "scratch"
            else ArgSlot(ArgKind.ARENA, ATTENTION_ARRIVALS)
            if n == "arrivals"
            else own[o][n]
            for o, n in sources
        ),
    )


def op_launch(plan: Plan, op: Op, spec: KernelSpec) -> Launch:
    """The launch of kernel `spec` for `op`: its grid and argument slots (the kernel tests run
    an op's own kernel alone as this one launch: tests/kernels/kit/gpu.py)."""
    rows = _row_count(plan, (op.outputs or op.inputs)[0])
    grid = tuple(GridDim(rows if c == "n_rows" else c, t) for c, t in spec.grid)
    args = tuple(
        ArgSlot(ArgKind.ARENA, ATTENTION_SCRATCH)
        if n == "scratch"
        else ArgSlot(ArgKind.ARENA, ATTENTION_ARRIVALS)
        if n == "arrivals"
        else _q8_slot()
        if n == "q8"
        else _split_slot()
        if n == "partials"
        else _arg_slot(plan, op, n, k)
        for n, k in spec.args
    )
    return Launch(spec.name, spec.threads, grid, args)


def _q8_slot() -> ArgSlot:
    from rfc.compiler.codegen.gpu_imma import Q8_SCRATCH

    return ArgSlot(ArgKind.ARENA, Q8_SCRATCH)


def _quantize_spec(target: Target, spec: KernelSpec) -> KernelSpec:
    """The kernel that rounds the input of prequant int8 matmul `spec` (gpu_imma.quantize_q8_spec)."""
    from rfc.compiler.codegen.gpu_imma import quantize_q8_spec

    return quantize_q8_spec(target, spec.params["k"], spec.params["max_tokens"])


def _split_reduce_spec(spec: KernelSpec) -> KernelSpec:
    """The launch after split-K matmul `spec` that adds its partials (gpu_imma.split_reduce_spec)."""
    from rfc.compiler.codegen.gpu_imma import split_reduce_spec

    return split_reduce_spec(spec)


def _split_slot() -> ArgSlot:
    from rfc.compiler.codegen.gpu_imma import SPLIT_SCRATCH

    return ArgSlot(ArgKind.ARENA, SPLIT_SCRATCH)


def _quantize_launch(plan: Plan, op: Op, spec: KernelSpec) -> Launch:
    """The launch that rounds matmul `op`'s input into Q8_SCRATCH (its rows: the op's)."""
    rows = _row_count(plan, (op.outputs or op.inputs)[0])
    grid = tuple(GridDim(rows if c == "n_rows" else c, t) for c, t in spec.grid)
    args = (_q8_slot(), _arg_slot(plan, op, "x", PTR), _arg_slot(plan, op, "n_rows", I32))
    return Launch(spec.name, spec.threads, grid, args)
