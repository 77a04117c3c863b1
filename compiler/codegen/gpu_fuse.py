"""Kernel fusion for GPU step programs: fewer launches per layer.

At batch 1 a decode step is bound by the number of launches as much as by bytes (every graph
node costs several microseconds however little it reads: docs/benchmarks.md). The step
program therefore launches one kernel where the plan has a run of ops that one kernel can do
with the same arithmetic, recognized by the op sequence alone (no architecture names):

- matmuls of one input (q, k and v): 2-3 consecutive int8 matmuls reading the same buffer,
  with weights of one format and width, become one launch over their rows, each segment of
  rows its own weight and output (the weights stay where the layout has them: one launch
  reads them all once, which is what a concatenated copy would buy);
- gate and up with their SwiGLU: two such matmuls followed by a silu `swiglu` of exactly
  their outputs become one launch that computes both dots of a row and writes silu(g) * u;
- an add and the rmsnorm of its sum (the residual add and the next norm): one launch that
  writes the sum and the normalized row;
- a rope and the kv_write of its k: one launch that rotates the token's q and k rows, then
  stores k and v in the cache.

A llama layer is then eight launches: q/k/v, rope + KV write, attention, output, add + rmsnorm,
gate/up/SwiGLU, down, add + rmsnorm. (Folding each rmsnorm into the matmuls after it and each
residual add into the matmul before it, six launches a layer, and running the add + rmsnorm in
the last blocks of the matmul before it were built and measured slower on an H100:
docs/benchmarks.md.)

And one hand-off between launches (DECODE_Q8): an add + rmsnorm whose normalized rows the next
int8 matmuls read also writes them rounded to int8 (the matmuls' own rounding, rfc_quantize32,
done by the 32 threads that hold a sub-block) into the arena slot Q8_SCRATCH, and those matmuls
read that instead of rounding the float rows again in every block behind two barriers. The
same for the attention's output and the output projection (ATTENTION_Q8): the attention block
that writes a row's outputs of its kv head (the row's only slice, or the last slice to arrive,
which merges them, or the block that ran a tile of a long step's rows) rounds them there too,
in a twin of its kernel. The scratch holds one
rounded input at a time: an attention whose output is rounded never lies between an add +
rmsnorm and one of its readers (a parallel block's FFN). The prefill list keeps the plain
kernels (its tensor-core matmuls round their input themselves).

The prefill list launches a run's ops one by one, each on its tensor-core kernel, but for the
matmuls of one input (q, k and v; gate and up, GLU_SEGMENTS): there one int8 tensor-core launch
over the segments of rows (gpu_imma.imma_segments_spec, gpu_imma.IMMA_SEGMENTS) where their
kernels differ in rows alone. Its SwiGLU then rounds its output for the down matmul itself
(gpu_plan.GLU_Q8).

Each fused kernel sums and rounds every value as the separate kernels do, so the step program
gives the per-op path's bits (tests/kernels/test_gpu_program.py). An op between the matmuls
(a bias, a scale), another activation, other formats or widths: no fusion there, the ops keep
their own launches. The per-op kernels stay in the bundle (op_kernels, the kernel tests).
"""

from dataclasses import dataclass, replace

from rfc.artifacts.plan import Op, Plan
from rfc.compiler.codegen import gpu_imma, gpu_plan
from rfc.compiler.codegen.gpu_plan import (
    ATTENTION_TEMPLATE,
    FUSED_MATMUL_TEMPLATE,
    MATMUL_TEMPLATE,
    I32,
    MATMUL_ROW_STEPS,
    PTR,
    KernelSpec,
    _renamed,
    buffer_uses,
    read_later,
)

ROPE_KV_TEMPLATE = "gpu_rope_kv_write.hip.j2"
ADD_RMSNORM_TEMPLATE = "gpu_add_rmsnorm.hip.j2"
MAX_SEGMENTS = 3  # q, k, v
# The prefill list launches gate and up (the decode list's gate/up/SwiGLU run) as one segmented
# int8 tensor-core launch, as it does q, k and v (gpu_imma.IMMA_SEGMENTS): twice the blocks of
# one, where an 8B's 14336-row gate took 448 blocks of 128 x 128 on an H100's 132
# multiprocessors, one block each, 3.39 waves with the last a quarter full (docs/benchmarks.md).
# Unmeasured on a card: an A/B switch. The same bits. False: gate, then up.
GLU_SEGMENTS = True
# The decode list's int8 matmuls after an add + rmsnorm read its output rounded once (module doc);
# False: each matmul block rounds its activations itself (the kernels before the hand-off).
DECODE_Q8 = True
# The attention's output rounded once for the output projection (module doc): the block that writes
# a row's outputs of its kv head (the row's only slice, the last-arriving slice that merges them,
# or a long step's tile) rounds them into Q8_SCRATCH as the output matmul's blocks round them, and that matmul reads the
# int8 rows. False: each of the output matmul's blocks rounds the float row itself. On an H100
# (docs/benchmarks.md, 2026-11-27) an 8B's one-token output projection, rounding its float
# input in each of its 512 blocks, took 12.3 us at 771 GB/s, a third of its stalls at the barriers
# around the rounding, where the gate/up matmul reading a rounded input ran at 2.0 TB/s.
# Unmeasured on a card as a whole: an A/B switch. The same bits either way. Only on targets of
# 32-lane waves: on gfx90a (64) the attention kernels' tiled path already takes 148 registers a
# thread at gpt-oss's 4 x 2 x 64 heads, and the twin's rounding after it spilled 24-40 bytes
# (tests/kernels/test_gpu_resources.py).
ATTENTION_Q8 = True
# A plain rmsnorm (one segment a row, with a weight) whose output int8 matmuls read leaves it
# rounded too, as the add + rmsnorm does: the first layer's norm of the embeddings before its
# q/k/v, and the final norm before the LM head. That head is the biggest matmul of a step (an
# 8B's 128256 x 4096 Q6_K: 431 MB, 9% of its weights), and its 16032 blocks each rounded the same
# 4096 floats behind two barriers (16 KB from L2 each, 263 MB in all). The same bits;
# unmeasured on a card: an A/B switch (docs/benchmarks.md). False: those matmuls round it.
RMSNORM_Q8 = True
RMSNORM_TEMPLATE = "gpu_rmsnorm.hip.j2"
# The decode list's gate/up + SwiGLU reading the rounded row, 8 tokens a block, over the formats
# whose decode looks values up in a 16-entry table (IQ4_NL, IQ4_XS): its walk over the row's
# sub-blocks, unrolled whole (4 steps at an 8B's 4096 columns), took 255 registers on sm_80 and
# sm_90 and spilled 104-144 bytes (tests/kernels/test_gpu_resources.py); unrolled by this much, it
# does not. (family, format) -> unroll; hipcc kept the whole walk in 60-77 registers.
GLU_Q8_UNROLL: dict[tuple[str, str], int] = {("cuda", "iq4_nl"): 2, ("cuda", "iq4_xs"): 2}


@dataclass(frozen=True)
class Fusion:
    """Plan ops first .. first + count - 1 run as one launch of `spec`; its argument i is
    argument sources[i] = (op offset in the run, that op's kernel argument name)."""

    first: int
    count: int
    spec: KernelSpec
    sources: tuple[tuple[int, str], ...]
    # what the prefill list launches in its place where it differs (the q8 hand-off's kernels
    # have their plain twins there); a source named "q8" is the arena slot Q8_SCRATCH
    plain: "Fusion | None" = None
    # where the run's ops have prefill kernels (KernelSpec.prefill): the one launch the prefill
    # list makes in place of the first `count` of theirs (segments of tensor-core matmuls), its
    # sources those kernels' arguments, the others one by one; None: all one by one
    prefill: "Fusion | None" = None


def step_fusions(plan: Plan, specs: list[KernelSpec], op_kernels: list[str], family: str = "") -> list[Fusion]:
    """The runs of the step program's decode list (the prefill list launches the same runs, or
    their ops one by one on their tensor-core kernels: gpu_plan.plan_program); `family`: the
    target's ("cuda", "hip")."""
    return plan_fusions(plan, specs, op_kernels, {s.name: s for s in specs}, family)


def plan_fusions(
    plan: Plan,
    specs: list[KernelSpec],
    op_kernels: list[str],
    taken: dict[str, KernelSpec] | None = None,
    family: str = "",
) -> list[Fusion]:
    """The runs of plan ops the decode list launches as one kernel, in op order, not overlapping
    (`taken`: the kernel names given out already; `family`: the target's, for GLU_Q8_UNROLL)."""
    by_name = {s.name: s for s in specs}
    op_specs = [by_name[k] for k in op_kernels]
    fusions: list[Fusion] = []
    taken = dict(by_name) if taken is None else taken
    i = 0
    while i < len(plan.ops):
        fusion = (
            _glu(plan, op_specs, i)
            or _segments(plan, op_specs, i)
            or _add_rmsnorm(plan, op_specs, i)
            or _rope_kv_write(plan, op_specs, i)
        )
        if fusion is None or not _apart_in_the_arena(plan, fusion):
            i += 1
            continue
        fusions.append(_names_taken(fusion, taken))
        i += fusion.count
    return _q8_hand_offs(plan, op_specs, fusions, taken, family) if DECODE_Q8 else fusions


def _names_taken(f: Fusion, taken: dict[str, KernelSpec]) -> Fusion:
    """f with its kernel (and its prefill launch's) under names of their own."""
    return replace(f, spec=_taken(f.spec, taken), prefill=None if f.prefill is None else _names_taken(f.prefill, taken))


def fused_specs(fusions: list[Fusion]) -> list[KernelSpec]:
    """The fused kernels to build, each once, in first-use order (the prefill list's plain
    twins of fused runs and its segmented matmuls too; a lone op's plain kernel is its own,
    built already)."""
    specs = {}
    for f in fusions:
        specs.setdefault(f.spec.name, f.spec)
        if f.plain is not None and f.plain.count > 1:
            specs.setdefault(f.plain.spec.name, f.plain.spec)
        if f.prefill is not None:
            specs.setdefault(f.prefill.spec.name, f.prefill.spec)
    return list(specs.values())


def _taken(spec: KernelSpec, taken: dict[str, KernelSpec]) -> KernelSpec:
    """`spec` under a name no other specialization has (two one name does not tell apart: the
    later numbered), recorded in `taken`."""
    if spec.name in taken and taken[spec.name] != spec:
        spec = _renamed(spec, taken)
    return taken.setdefault(spec.name, spec)


# -- conditions -------------------------------------------------------------------------------


def _apart_in_the_arena(plan: Plan, fusion: Fusion) -> bool:
    """Whether every buffer the fused kernel writes keeps bytes of its own while it reads its
    inputs. The arena (gpu_plan.plan_step_arena) lets a buffer first written by op j reuse the
    bytes of one last read before j: separate launches may, but one kernel whose blocks still
    read an input while others write would read another row's output."""
    first, last = buffer_uses(plan)
    ops = plan.ops[fusion.first : fusion.first + fusion.count]
    read = {b for op in ops for b in op.inputs if b != plan.input_tokens}
    written = {b for op in ops for b in op.outputs}
    return all(first[w] <= last[r] for w in written for r in read)


def _int8_matmul(plan: Plan, op_specs: list[KernelSpec], i: int) -> KernelSpec | None:
    """The spec of op i if it is a dp4a matmul over token rows, or the rows gathered for the
    logits (what the fused matmuls take)."""
    if i >= len(plan.ops) or plan.ops[i].kind != "matmul":
        return None
    spec = op_specs[i]
    if spec.template != MATMUL_TEMPLATE or plan.buffer(plan.ops[i].outputs[0]).shape[0] not in ("T", "R"):
        return None
    return spec


# what a weight row's format decides in an int8 matmul's walk (a segment's own in a fused kernel)
_FORMAT_KEYS = ("fmt", "fmt_upper", "qk", "ts", "row_bytes", "planar", "plane_offsets", "subs_per_block")


def _same_walk(a: KernelSpec, b: KernelSpec) -> bool:
    """Two matmul kernels whose lanes walk rows alike (width and tiling), whatever the format:
    a row's format only decides how a lane decodes its sub-blocks."""
    keys = ("k", "lanes_per_row", "chunk", "threads", "rows_per_step", "tokens_per_block")
    return all(a.params[k] == b.params[k] for k in keys)


def _same_weights(a: KernelSpec, b: KernelSpec) -> bool:
    """Two matmul kernels that walk their rows alike: the same format, width and tiling."""
    return _same_walk(a, b) and all(a.params[k] == b.params[k] for k in _FORMAT_KEYS)


def _matmul_run(plan: Plan, op_specs: list[KernelSpec], i: int, most: int, alike=_same_weights) -> list[KernelSpec]:
    """Up to `most` consecutive int8 matmuls from op i over one input with like weights (`alike`:
    of one format; _same_walk: of any)."""
    first = _int8_matmul(plan, op_specs, i)
    if first is None:
        return []
    run = [first]
    x = plan.ops[i].inputs[0]
    outs = {plan.ops[i].outputs[0]}
    while len(run) < most:
        j = i + len(run)
        spec = _int8_matmul(plan, op_specs, j)
        if spec is None or plan.ops[j].inputs[0] != x or not alike(first, spec):
            break
        out = plan.ops[j].outputs[0]
        if out in outs or out == x:
            break
        outs.add(out)
        run.append(spec)
    if x in outs:
        return []
    return run


def _row_tiling(first: KernelSpec, rows: int, max_steps: int) -> dict:
    rows_per_step = first.params["rows_per_step"]
    row_steps = max(1, min(max_steps, -(-rows // rows_per_step)))
    return {"rows_per_step": rows_per_step, "row_steps": row_steps, "rows_per_block": rows_per_step * row_steps}


_MATMUL_KEYS = (
    "threads",
    "k",
    "lanes_per_row",
    "chunk",
    "subs_per_block",
    "tokens_per_block",
    "fmt",
    "fmt_upper",
    "qk",
    "ts",
    "cols",
    "blocks_per_row",
    "row_bytes",
    "planar",
    "plane_offsets",
)


# -- the fusions ------------------------------------------------------------------------------


def _segments(plan: Plan, op_specs: list[KernelSpec], i: int) -> Fusion | None:
    run = _matmul_run(plan, op_specs, i, MAX_SEGMENTS, _same_walk)
    if len(run) < 2:
        return None
    return _segmented(run, i)


def _segmented(run: list[KernelSpec], i: int) -> Fusion:
    """The fused kernel over the rows of matmul run `run` (from op i), each its own segment (one
    matmul: the plain matmul's sums, for a fusion to extend)."""
    first = run[0]
    segs, start = [], 0
    for spec in run:
        segs.append({"start": start, "end": start + spec.params["n"], "rows": spec.params["n"]})
        start += spec.params["n"]
    tiling = _row_tiling(first, start, MATMUL_ROW_STEPS)
    # runs of segments of one format, each walked by its own code
    groups: list[dict] = []
    for s, (seg, spec) in enumerate(zip(segs, run)):
        fmt = {k: spec.params[k] for k in _FORMAT_KEYS}
        if groups and all(groups[-1][k] == v for k, v in fmt.items()):
            groups[-1].update(end=seg["end"], segs=[*groups[-1]["segs"], s])
        else:
            groups.append({**fmt, "end": seg["end"], "segs": [s]})
    if len(groups) == 1:
        rows = "_".join(str(s["rows"]) for s in segs)
        name = f"rfc_matmul_{first.params['fmt']}_{rows}x{first.params['k']}_fused"
    else:  # each segment's format in the name
        rows = "_".join(f"{spec.params['fmt']}_{s['rows']}" for s, spec in zip(segs, run))
        name = f"rfc_matmul_{rows}x{first.params['k']}_fused"
    params = {
        **{k: first.params[k] for k in _MATMUL_KEYS},
        "name": name,
        "n": start,
        "segs": segs,
        "glu": False,
        "prefetch_l2": gpu_plan.MATMUL_PREFETCH_L2,
        **tiling,
        **({"fmt_groups": groups} if len(groups) > 1 else {}),
    }
    n = len(run)
    args = (
        *((f"out{s}", PTR) for s in range(n)),
        ("x", PTR),
        *((f"weight{s}", PTR) for s in range(n)),
        ("n_rows", I32),
    )
    sources = (*((s, "out") for s in range(n)), (0, "x"), *((s, "weight") for s in range(n)), (0, "n_rows"))
    grid = ((start, tiling["rows_per_block"]), ("n_rows", first.params["tokens_per_block"]))
    spec = KernelSpec(name, FUSED_MATMUL_TEMPLATE, params, args, first.threads, grid)
    return Fusion(i, n, spec, sources, prefill=_imma_segments(run, i))


def _imma_segments(run: list[KernelSpec], i: int) -> Fusion | None:
    """The prefill list's one launch for the first matmuls of run `run` (from op i): the
    segmented tensor-core matmul over the longest prefix of at least two whose prefill kernels
    it takes (gpu_imma.imma_segments_spec: one format), or None. The run's matmuls after that
    prefix launch one by one there."""
    if not gpu_imma.IMMA_SEGMENTS or any(s.prefill is None for s in run):
        return None
    for n in range(len(run), 1, -1):
        spec = gpu_imma.imma_segments_spec([s.prefill for s in run[:n]])
        if spec is not None:
            break
    else:
        return None
    sources = []
    for name, _kind in run[0].prefill.args:
        sources += [(s, name) for s in range(n)] if name in ("out", "weight") else [(0, name)]
    return Fusion(i, n, spec, tuple(sources))


def _glu(plan: Plan, op_specs: list[KernelSpec], i: int) -> Fusion | None:
    run = _matmul_run(plan, op_specs, i, 2)
    if len(run) != 2 or i + 2 >= len(plan.ops):
        return None
    act = plan.ops[i + 2]
    gate, up = plan.ops[i].outputs[0], plan.ops[i + 1].outputs[0]
    if act.kind != "swiglu" or act.attr("activation") != "silu" or tuple(act.inputs) != (gate, up):
        return None
    if run[0].params["n"] != run[1].params["n"]:
        return None
    out = act.outputs[0]
    if any(b != out and read_later(plan, i + 2, b) for b in (gate, up)):
        return None  # a pre-activation the fused kernel does not write is read later
    first, rows = run[0], run[0].params["n"]
    # two accumulators a row: half the row steps keep the registers of the plain matmul
    tiling = _row_tiling(first, rows, max(1, MATMUL_ROW_STEPS // 2))
    name = f"rfc_matmul_swiglu_{first.params['fmt']}_{rows}x{first.params['k']}"
    params = {
        **{k: first.params[k] for k in _MATMUL_KEYS},
        "name": name,
        "n": rows,
        "segs": [],
        "glu": True,
        "prefetch_l2": gpu_plan.MATMUL_PREFETCH_L2,
        **tiling,
    }
    args = (("out", PTR), ("x", PTR), ("gate", PTR), ("up", PTR), ("n_rows", I32))
    sources = ((2, "out"), (0, "x"), (0, "weight"), (1, "weight"), (0, "n_rows"))
    grid = ((rows, tiling["rows_per_block"]), ("n_rows", first.params["tokens_per_block"]))
    spec = KernelSpec(name, FUSED_MATMUL_TEMPLATE, params, args, first.threads, grid)
    # the prefill list: gate and up as one segmented tensor-core launch, then the SwiGLU's own
    return Fusion(i, 3, spec, sources, prefill=_imma_segments(run, i) if GLU_SEGMENTS else None)


def _add_rmsnorm(plan: Plan, op_specs: list[KernelSpec], i: int) -> Fusion | None:
    if i + 1 >= len(plan.ops):
        return None
    add, norm = plan.ops[i], plan.ops[i + 1]
    if add.kind != "add" or norm.kind != "rmsnorm" or norm.inputs[0] != add.outputs[0]:
        return None
    a, n = op_specs[i], op_specs[i + 1]
    p = n.params
    if (
        p["heads"] != 1
        or not p["has_weight"]
        or p["per_seg"]
        or p["width"] != a.params["width"]
        or n.threads != a.threads
    ):
        return None
    if plan.buffer(add.outputs[0]).shape[0] != plan.buffer(norm.outputs[0]).shape[0]:
        return None
    name = f"rfc_add_rmsnorm_{p['width']}"
    params = {"name": name, "threads": n.threads, "width": p["width"], "eps": p["eps"], "add": a.name, "norm": n.name}
    args = (("sum", PTR), ("out", PTR), ("a", PTR), ("b", PTR), ("weight", PTR), ("n_rows", I32))
    sources = ((0, "out"), (1, "out"), (0, "a"), (0, "b"), (1, "weight"), (0, "n_rows"))
    spec = KernelSpec(name, ADD_RMSNORM_TEMPLATE, params, args, n.threads, (("n_rows", 1),))
    return Fusion(i, 2, spec, sources)


def _rope_kv_write(plan: Plan, op_specs: list[KernelSpec], i: int) -> Fusion | None:
    if i + 1 >= len(plan.ops):
        return None
    rope, kv = plan.ops[i], plan.ops[i + 1]
    if rope.kind != "rope" or kv.kind != "kv_write" or kv.inputs[0] != rope.outputs[1]:
        return None
    r, w = op_specs[i], op_specs[i + 1]
    threads = max(r.threads, w.threads)
    has_ff = r.params["has_freq_factors"]
    name = f"{r.name}_{w.name.removeprefix('rfc_')}"
    params = {
        "name": name,
        "threads": threads,
        "rope": r.name,
        "kv_write": w.name,
        "has_freq_factors": has_ff,
        "kv_dtype": w.params["kv_dtype"],
    }
    rope_args = tuple((0, n) for n, _k in r.args if n != "n_rows")
    kv_args = tuple((1, n) for n, _k in w.args if n != "k")
    kinds = {**{n: k for n, k in w.args}, **{n: k for n, k in r.args}}
    sources = (*rope_args, *kv_args)
    args = tuple((n, kinds[n]) for _o, n in sources)
    spec = KernelSpec(name, ROPE_KV_TEMPLATE, params, args, threads, (("n_rows", 1),))
    return Fusion(i, 2, spec, sources)


# -- the q8 hand-off --------------------------------------------------------------------------


def q8_decode_layout(k: int) -> dict:
    """Where the rounded rows [PROGRAM_MAX_TOKENS, k] lie in Q8_SCRATCH: int8 quants, then a float
    scale per 32-element sub-block, then its two int half sums (gpu_imma.q8_layout: the prefill
    list's layout too)."""
    from rfc.compiler.codegen.gpu_imma import q8_layout
    from rfc.compiler.codegen.gpu_plan import PROGRAM_MAX_TOKENS

    layout = q8_layout(k, PROGRAM_MAX_TOKENS)
    return {key: layout[key] for key in ("xd_offset", "xs_offset", "q8_bytes")}


def _q8_reader(spec: KernelSpec, x: str, width: int, ops) -> bool:
    """Whether a launch (a lone int8 matmul, or a fused run of them) reads `x` as a [T, width]
    input and walks each row's sub-blocks as the q8 variant does: in one chunk, or in chunks
    whose sub-blocks a row's lanes share out evenly (the same order of sums)."""
    if spec.template not in (MATMUL_TEMPLATE, FUSED_MATMUL_TEMPLATE) or ops[0].inputs[0] != x:
        return False
    p = spec.params
    return p["k"] == width and (p["chunk"] >= p["k"] or (p["chunk"] // 32) % p["lanes_per_row"] == 0)


def _q8_variant(f: Fusion, extra: dict, suffix: str = "_q8", reads_q8: bool = True) -> Fusion:
    """Fusion f with its kernel's q8 twin: a reader's argument x (if any) becomes q8, the slot; a
    producer (no such x, or reads_q8 False: a norm whose input is x) takes q8 after its outputs."""
    spec = f.spec
    rename = "x" if reads_q8 else None
    args = tuple(("q8", k) if n == rename else (n, k) for n, k in spec.args)
    sources = tuple((o, "q8") if n == rename else (o, n) for o, n in f.sources)
    if not any(n == "q8" for n, _k in args):  # the producer: q8 after its float outputs
        at = [n for n, _k in args].index("out") + 1
        args = (*args[:at], ("q8", PTR), *args[at:])
        sources = (*sources[:at], (0, "q8"), *sources[at:])
    q8 = KernelSpec(
        spec.name + suffix,
        spec.template,
        {**spec.params, "name": spec.name + suffix, **extra},
        args,
        spec.threads,
        spec.grid,
    )
    return Fusion(f.first, f.count, q8, sources, plain=f, prefill=f.prefill)


def _q8_hand_offs(
    plan: Plan, op_specs: list[KernelSpec], fusions: list[Fusion], taken: dict, family: str = ""
) -> list[Fusion]:
    """Each add + rmsnorm whose output later int8 matmuls read (before anything writes it again
    or another add + rmsnorm runs) becomes its q8 twin, and those matmuls theirs; likewise each
    attention launch whose output the output projection reads (ATTENTION_Q8), where no earlier
    hand-off's reader comes after it (the scratch holds one rounded input at a time)."""
    by_first = {f.first: f for f in fusions}
    changed: dict[int, Fusion] = {}
    spans: list[tuple[int, int]] = []  # (producer, its last reader): Q8_SCRATCH is taken in between
    for f in fusions:
        if f.spec.template != ADD_RMSNORM_TEMPLATE:
            continue
        x, width = plan.ops[f.first + 1].outputs[0], f.spec.params["width"]
        if width % 32 or f.spec.threads % 32:
            continue
        # past an attention: a parallel block's FFN reads the norm the attention's q/k/v read
        readers = _q8_readers(plan, op_specs, by_first, f.first + f.count, x, width, (ADD_RMSNORM_TEMPLATE,))
        if not readers:
            continue
        layout = q8_decode_layout(width)
        changed[f.first] = _q8_variant(f, {"q8": True, **layout})
        _q8_readers_take(readers, layout, changed, family)
        spans.append((f.first, readers[-1].first))
    covered = {j for f in fusions for j in range(f.first, f.first + f.count)}  # ops in runs of several
    if ATTENTION_Q8:
        for i, spec in enumerate(op_specs):
            kernel = _attention_writer(spec)
            if i in covered or kernel is None or kernel.params["head_dim"] % 32 or kernel.threads % 32:
                continue
            if kernel.params["wave"] != 32:  # (ATTENTION_Q8's comment: wave-64 targets keep the plain launch)
                continue
            if any(p < i < last for p, last in spans):
                continue
            x, width = plan.ops[i].outputs[0], kernel.params["n_heads"] * kernel.params["head_dim"]
            readers = _q8_readers(plan, op_specs, by_first, i + 1, x, width, (ADD_RMSNORM_TEMPLATE, ATTENTION_TEMPLATE))
            if not readers:
                continue
            layout = q8_decode_layout(width)
            own = Fusion(i, 1, kernel, tuple((0, n) for n, _k in kernel.args))
            changed[i] = _q8_variant(own, {"q8": True, "q8_width": width, **layout})
            _q8_readers_take(readers, layout, changed, family)
            spans.append((i, readers[-1].first))
    if RMSNORM_Q8:
        for i, spec in enumerate(op_specs):
            p = spec.params
            if i in covered or i in changed or spec.template != RMSNORM_TEMPLATE:
                continue
            if p["heads"] != 1 or not p["has_weight"] or p["width"] % 32 or spec.threads % 32:
                continue
            if any(prod < i < last for prod, last in spans):
                continue
            x, width = plan.ops[i].outputs[0], p["width"]
            stops = (ADD_RMSNORM_TEMPLATE, ATTENTION_TEMPLATE, RMSNORM_TEMPLATE)
            readers = _q8_readers(plan, op_specs, by_first, i + 1, x, width, stops)
            if not readers:
                continue
            layout = q8_decode_layout(width)
            own = Fusion(i, 1, spec, tuple((0, n) for n, _k in spec.args))
            changed[i] = _q8_variant(own, {"q8": True, **layout}, reads_q8=False)
            _q8_readers_take(readers, layout, changed, family)
            spans.append((i, readers[-1].first))
    out = [changed.pop(f.first, f) for f in fusions]
    out += changed.values()  # lone ops: fusions of one op
    out = [replace(f, spec=_taken(f.spec, taken)) if f.plain is not None else f for f in out]
    return sorted(out, key=lambda f: f.first)


def _q8_readers(
    plan: Plan, op_specs: list[KernelSpec], by_first: dict, j: int, x: str, width: int, stops: tuple[str, ...]
) -> list[Fusion]:
    """The int8 matmul launches from op j on that read `x` ([T, width]) as a q8 twin can: up to
    the next launch of a template in `stops` (a hand-off of its own) or the next write of x."""
    readers = []
    while j < len(plan.ops):
        unit = by_first.get(j) or Fusion(j, 1, op_specs[j], tuple((0, n) for n, _k in op_specs[j].args))
        ops = plan.ops[j : j + unit.count]
        if unit.spec.template in stops or any(x in op.outputs for op in ops):
            break
        if _q8_reader(unit.spec, x, width, ops):
            readers.append(unit)
        j += unit.count
    return readers


def _q8_readers_take(readers: list[Fusion], layout: dict, changed: dict[int, Fusion], family: str = "") -> None:
    """Each reader's q8 twin into `changed`: its input read rounded from Q8_SCRATCH."""
    for r in readers:
        p = r.spec.params
        steps = -(-(p["k"] // 32) // p["lanes_per_row"])
        unroll = GLU_Q8_UNROLL.get((family, p["fmt"])) if p.get("glu") and p["tokens_per_block"] > 1 else None
        extra = {"q8_unroll": unroll} if unroll and unroll < steps else {}
        changed[r.first] = _q8_variant(r, {"q8in": True, "q8_steps": steps, **layout, **extra})


def _attention_writer(spec: KernelSpec) -> KernelSpec | None:
    """The kernel of an attention op's step-program launch that writes the op's output rows:
    its own kernel (one slice a row, or every slice in turn), or its split kernel that merges
    the slices in its last block; None for other ops, and where a reduce kernel writes them
    (gpu_plan.ATTENTION_LAST_BLOCK_MERGE off)."""
    if spec.template != ATTENTION_TEMPLATE:
        return None
    if not spec.steps:
        return spec
    if len(spec.steps) == 1 and spec.steps[0].params.get("merge"):
        return spec.steps[0]
    return None
