"""The decode lists' FFN hand-off: gate/up + SwiGLU rounds its output for the down matmul.

In the decode list an FFN's down projection reads the SwiGLU's float output and each of its
blocks rounds its tokens' rows to int8 itself (an 8B's 14336 columns, in each of its 512 blocks,
behind barriers): on an H100 the 8B's one-token down projections read their weights at 1.3-1.6
TB/s where its gate/up launch, which reads an input rounded once (gpu_fuse's q8 hand-off), read
2.5 TB/s (docs/benchmarks.md). Here the decode and one-token lists' gate/up + SwiGLU launch
also rounds its outputs per 32 rows, as the down matmul's blocks would round them
(rfc_quantize32_lanes: the same scale, integers and half sums), into an arena slot of its own
(GLU_Q8_SCRATCH, gpu_imma.q8_layout for the program's most tokens: Q8_SCRATCH still holds the
gate/up launch's own rounded input while it runs), and the down matmul's twin reads the int8
rows from there: the same bits, a lane's sums in the same order.

A block of an 8B's gate/up holds 8 rows (256 threads, 32 lanes a row), so a sub-block of 32 rows
is four blocks' outputs: each block counts its arrival (a device-scope atomic after a release
fence, in the arena's zeroed ATTENTION_ARRIVALS, as the split attention's last-block merge does)
and the last of the four rounds the 32 values of each of its tokens, then resets the count.

Only where the down matmul is the launch right after the run, reads its output as its input
and nothing later reads the float output. The batch list's gate/up twin rounds for its down twin
already (gpu_bmma); the prefill list's SwiGLU launch rounds for its tensor-core down matmul
(gpu_plan.GLU_Q8).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict, deque

from rfc.artifacts.ops import PTR
from rfc.artifacts.plan import Plan
from rfc.artifacts.program import ArgKind, ArgSlot, Launch, StepProgram
from rfc.compiler.codegen.gpu_imma import SUB_BLOCK, q8_layout
from rfc.compiler.codegen.gpu_kernel import KernelSpec
from rfc.compiler.codegen.gpu_plan import (
    ATTENTION_ARRIVALS,
    FUSED_MATMUL_TEMPLATE,
    MATMUL_TEMPLATE,
    arena_with,
    read_later,
)

# On by default; unmeasured on a card: an A/B switch (the next card call's variant VG). False:
# the down matmuls of the decode and one-token lists round their float input in every block.
GLU_Q8_DOWN = True
GLU_Q8_SCRATCH = "glu.q8"  # the arena slot of the rounded SwiGLU outputs (not a plan buffer)
PRODUCER_SUFFIX = "_q8out"
READER_SUFFIX = "_q8in"  # (not _q8: gpu_fuse's readers of matmul.q8 end so, in another layout)
# The down kernel's walk over a lane's sub-blocks is unrolled whole up to this many (as the other
# q8 readers': 4 at a 4096-wide row), else by a divisor near it: an 8B's 14336-wide row is 14 a
# lane, whose whole unroll spilled 28-32 bytes of loads on sm_90 under the one-token twins'
# 128-register cap (ONE_TOKEN_MIN_BLOCKS); by 7: 128 registers (Q6_K) and 93 (Q4_K), no spill.
Q8_WALK_UNROLL = 7
# The same for a block of several tokens (the decode list's 8), whose loads a sub-block serve them
# all: at an 8B's down on sm_90 by 7 took 135-141 registers (one block a multiprocessor), by 4 88-90,
# by 2 74-75 (three; the float-input kernel it replaces takes 64).
Q8_WALK_UNROLL_TOKENS = 2


def launch_fusions(launches, fusions) -> dict[int, object]:
    """The fusion (gpu_fuse.Fusion) each launch of a decode list runs, by launch index: a fused
    kernel's launches take its fusions in list order."""
    pending: dict[str, deque] = defaultdict(deque)
    for f in sorted(fusions, key=lambda f: f.first):
        pending[f.spec.name].append(f)
    return {i: pending[launch.kernel].popleft() for i, launch in enumerate(launches) if pending.get(launch.kernel)}


def glu_down(plan: Plan, launches, f, i: int, by_name: dict, op_kernels: list[str]) -> KernelSpec | None:
    """The kernel of the down matmul launched right after gate/up + SwiGLU run `f` (launch i of
    the decode list `launches`) over that run's float output, where nothing after it reads that
    output; None otherwise (another launch between, a rounded input, another reader)."""
    j = f.first + f.count
    if i + 1 >= len(launches) or j >= len(plan.ops):
        return None
    nxt, op, act = launches[i + 1], plan.ops[j], plan.ops[f.first + f.count - 1]
    spec = by_name[nxt.kernel]
    if (
        nxt.kernel != op_kernels[j]
        or spec.template != MATMUL_TEMPLATE
        or spec.params.get("q8in")
        or op.kind != "matmul"
        or op.inputs[0] != act.outputs[0]
        or read_later(plan, j, act.outputs[0])
        or nxt.args[1] != launches[i].args[0]
    ):
        return None
    return spec


def glu_q8_handoffs(
    plan: Plan, program: StepProgram, by_name: dict, op_kernels: list[str], fusions
) -> tuple[StepProgram, list[KernelSpec]]:
    """`program` with each gate/up + SwiGLU launch of its decode and one-token lists whose down
    matmul qualifies (the module doc) on its rounding twin and that down matmul on its q8 twin,
    the arena grown by GLU_Q8_SCRATCH and the counts; and the twins' kernels. `program` as it
    is where none does."""
    if not GLU_Q8_DOWN:
        return program, []
    lists = {name: list(getattr(program, name)) for name in ("launches", "single_launches")}
    max_tokens = program.arena.max_tokens
    built: dict[str, KernelSpec] = {}
    q8_bytes = arrival_ints = 0
    for i, f in launch_fusions(program.launches, fusions).items():
        if not by_name[program.launches[i].kernel].params.get("glu") or f.spec.template != FUSED_MATMUL_TEMPLATE:
            continue
        if glu_down(plan, program.launches, f, i, by_name, op_kernels) is None:
            continue
        for launches in lists.values():
            if not launches:
                continue  # (no one-token list)
            glu, down = by_name[launches[i].kernel], by_name[launches[i + 1].kernel]
            pair = _twins(glu, down, max_tokens)
            if pair is None:
                continue
            producer, reader, layout = pair
            built.setdefault(producer.name, producer)
            built.setdefault(reader.name, reader)
            launches[i] = _producer_launch(launches[i], glu, producer)
            launches[i + 1] = _reader_launch(launches[i + 1], down, reader)
            q8_bytes = max(q8_bytes, layout["q8_bytes"])
            if producer.params["per_group"] > 1:
                token_blocks = -(-max_tokens // glu.params["tokens_per_block"])
                arrival_ints = max(arrival_ints, token_blocks * glu.params["n"] // SUB_BLOCK)
    if not built:
        return program, []
    arena = arena_with(program.arena, GLU_Q8_SCRATCH, q8_bytes, arrival_ints)
    lists = {name: tuple(launches) for name, launches in lists.items()}
    return dataclasses.replace(program, arena=arena, **lists), list(built.values())


def _twins(glu: KernelSpec, down: KernelSpec, max_tokens: int) -> tuple[KernelSpec, KernelSpec, dict] | None:
    """(the gate/up kernel rounding its output, the down kernel reading it, the rounding's layout)
    for the launches of kernels `glu` and `down` (the same tokens a block), or None: rows that do
    not make whole sub-blocks, or a down whose lanes walk the row's sub-blocks in another order
    than its q8 walk would."""
    p, d = glu.params, down.params
    n, rows = p["n"], p["rows_per_block"]
    if p.get("tokens_per_block") != d.get("tokens_per_block") or d["k"] != n:
        return None
    if n % SUB_BLOCK or glu.threads % SUB_BLOCK or (SUB_BLOCK % rows and rows % SUB_BLOCK):
        return None
    if d["chunk"] < d["k"] and (d["chunk"] // SUB_BLOCK) % d["lanes_per_row"]:
        return None
    layout = q8_layout(n, max_tokens)
    at = [a for a, _k in glu.args].index("n_rows")
    producer = KernelSpec(
        glu.name + PRODUCER_SUFFIX,
        glu.template,
        {
            **p,
            "name": glu.name + PRODUCER_SUFFIX,
            "rounded": True,
            "per_group": max(1, SUB_BLOCK // rows),
            "out_xd_offset": layout["xd_offset"],
            "out_xs_offset": layout["xs_offset"],
        },
        (*glu.args[:at], ("rounded", PTR), ("arrivals", PTR), *glu.args[at:]),
        glu.threads,
        glu.grid,
    )
    steps = -(-(n // SUB_BLOCK) // d["lanes_per_row"])
    most = Q8_WALK_UNROLL if d["tokens_per_block"] == 1 else Q8_WALK_UNROLL_TOKENS
    unroll = {"q8_unroll": _walk_unroll(steps, most)} if steps > most else {}
    reader = KernelSpec(
        down.name + READER_SUFFIX,
        down.template,
        {
            **d,
            "name": down.name + READER_SUFFIX,
            "q8in": True,
            "q8_steps": steps,
            "xd_offset": layout["xd_offset"],
            "xs_offset": layout["xs_offset"],
            **unroll,
        },
        tuple(("q8", k) if a == "x" else (a, k) for a, k in down.args),
        down.threads,
        down.grid,
    )
    return producer, reader, layout


def _walk_unroll(steps: int, most: int) -> int:
    """The unroll of a q8 walk of `steps` sub-blocks a lane: the largest divisor up to `most`
    where there is one of at least half that, else `most`."""
    best = max(d for d in range(1, most + 1) if steps % d == 0)
    return best if 2 * best >= most else most


def _producer_launch(launch: Launch, glu: KernelSpec, producer: KernelSpec) -> Launch:
    """`launch` on `producer`: its arguments, and the slot and the counts where the kernel takes them."""
    own = dict(zip((a for a, _k in glu.args), launch.args))
    own["rounded"], own["arrivals"] = ArgSlot(ArgKind.ARENA, GLU_Q8_SCRATCH), ArgSlot(ArgKind.ARENA, ATTENTION_ARRIVALS)
    return dataclasses.replace(launch, kernel=producer.name, args=tuple(own[a] for a, _k in producer.args))


def _reader_launch(launch: Launch, down: KernelSpec, reader: KernelSpec) -> Launch:
    at = [a for a, _k in down.args].index("x")
    args = list(launch.args)
    args[at] = ArgSlot(ArgKind.ARENA, GLU_Q8_SCRATCH)
    return dataclasses.replace(launch, kernel=reader.name, args=tuple(args))
