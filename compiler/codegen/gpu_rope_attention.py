"""The one-token list's rope + KV write inside its attention launch: one launch a layer fewer.

A batch-1 decode step is a chain of short launches (docs/benchmarks.md: an 8B's step is 261 of
them, 3.0 ms where its weights take 1.15 ms at the card's copy rate): each costs its start and
its dependent round trips however little it does. The rope + KV write launch (gpu_fuse's fusion of
a rope and the KV write of its k) is one block a token that rotates the token's q and k rows in
place and stores k and v in the cache, and the attention launch after it reads them back.

In the one-token list (StepProgram.single_launches: a step of exactly one token) the attention
launch does that work itself, in a twin of its kernel (gpu_attention.hip.j2 with `rope_kv`):
each block rotates its kv head's group of q rows into its shared memory as the rope kernel
rotates them (the rope template's `_angles` and `_heads_to`: the same arithmetic, so the same
floats), and the block whose slice of keys ends with the token's own (the row's only block
where it has one slice) rotates the kv head's k row and stores it and the v row in the cache as
the KV write kernel stores them (`_head`: the bytes of that head of the row) before it reads its
first key. No other block reads that key or those rows: the step's one row is its sequence's
only, and a block reads its own kv head. q and k stay unrotated in the arena, so only where no
later op reads them; the arena's q, k and v keep bytes apart from the attention's outputs (its
blocks write while others still read). Steps of several tokens keep the two launches (a row may
read a key another row's block writes), and so do targets of 64-lane waves (WAVE).
"""

from __future__ import annotations

import dataclasses

from rfc.artifacts.ops import PTR
from rfc.artifacts.plan import Plan
from rfc.artifacts.program import ArgKind, Launch, StepProgram
from rfc.compiler.codegen.gpu_fuse import ROPE_KV_TEMPLATE
from rfc.compiler.codegen.gpu_glu_handoff import launch_fusions
from rfc.compiler.codegen.gpu_kernel import KernelSpec
from rfc.compiler.codegen.gpu_plan import ATTENTION_TEMPLATE, read_later

# On by default; unmeasured on a card: an A/B switch (the next card call's variant VQ). False:
# the one-token list launches the rope + KV write before its attention, as the decode list does.
ROPE_IN_ATTENTION = True
SUFFIX = "_rope"
# Only on targets of 32-lane waves (NVIDIA, gfx11): on gfx90a (64) the twin of an 8B's attention
# (32 x 8 x 128 heads) took 118 registers and spilled 136 bytes, where sm_90's took 116 and gfx1100's
# 96 without spilling (the kernel alone: 96, 118 and 94).
WAVE = 32


def rope_in_attention(
    plan: Plan, program: StepProgram, by_name: dict[str, KernelSpec], fusions
) -> tuple[StepProgram, list[KernelSpec]]:
    """`program` with each rope + KV write launch of its one-token list that qualifies (the module
    doc) folded into the attention launch right after it, on that kernel's twin; and the twins.
    `program` as it is where none does."""
    single = program.single_launches
    if not ROPE_IN_ATTENTION or not single:
        return program, []
    fused_at = launch_fusions(program.launches, fusions)  # the single list's launches are the decode list's, 1:1
    built: dict[str, KernelSpec] = {}
    out: list[Launch] = []
    i = 0
    while i < len(single):
        f = fused_at.get(i)
        pair = _twin(plan, program, single, i, f, by_name) if f is not None and i + 1 < len(single) else None
        if pair is None:
            out.append(single[i])
            i += 1
            continue
        twin, launch = pair
        built.setdefault(twin.name, twin)
        out.append(launch)
        i += 2
    if not built:
        return program, []
    return dataclasses.replace(program, single_launches=tuple(out)), list(built.values())


def _twin(plan: Plan, program: StepProgram, single, i: int, f, by_name) -> tuple[KernelSpec, Launch] | None:
    """(the attention twin, its launch) for the rope + KV write launch i of the one-token list
    (fusion `f` of the decode list) and the attention launch after it, or None."""
    rk, att_launch = by_name[single[i].kernel], single[i + 1]
    if rk.template != ROPE_KV_TEMPLATE:
        return None
    att = by_name[att_launch.kernel]
    if att.template != ATTENTION_TEMPLATE or att.params.get("rope_kv") or att.params.get("wave") != WAVE:
        return None
    j = f.first + f.count  # the attention op
    if j >= len(plan.ops) or plan.ops[j].kind != "attention":
        return None
    rope, kv, op = plan.ops[f.first], plan.ops[f.first + 1], plan.ops[j]
    q, k = rope.outputs
    v = kv.inputs[1]
    if op.inputs[0] != q or read_later(plan, j, q) or read_later(plan, j, k):
        return None
    rope_p, kv_p, p = by_name[rk.params["rope"]].params, by_name[rk.params["kv_write"]].params, att.params
    head_dim = p["head_dim"]
    if (rope_p["n_heads"], rope_p["n_kv_heads"], rope_p["head_dim"]) != (p["n_heads"], p["n_kv_heads"], head_dim):
        return None
    if (
        kv_p["width"] != p["n_kv_heads"] * head_dim
        or kv_p["kv_row"] != p["kv_row"]
        or kv_p["kv_dtype"] != p["kv_dtype"]
    ):
        return None
    if kv_p["quantizable"] and any(r and head_dim % r for r in (kv_p["k_rot"], kv_p["v_rot"])):
        return None  # a rotation across heads: a head's bytes are not its own
    rk_args = dict(zip((a for a, _k in rk.args), single[i].args))
    at_args = dict(zip((a for a, _k in att.args), att_launch.args))
    if any(rk_args[a] != at_args[a] for a in ("q", "k_cache", "v_cache", "positions", "k_type", "v_type")):
        return None
    if not _apart(program, (q, k, v), [s.ref for s in att_launch.args if s.kind is ArgKind.ARENA and s.ref != q]):
        return None
    half = rope_p["half"]
    has_ff = rope_p["has_freq_factors"]
    name = att.name + SUFFIX
    # shared floats before the keys: the angles, the rotated k row and the store's staging row
    p_floats = max(p["p_floats"], 2 * half + 2 * head_dim)
    params = {
        **p,
        "name": name,
        "rope_kv": {
            "rope": rk.params["rope"],
            "kv_write": rk.params["kv_write"],
            "has_freq_factors": has_ff,
            "half": half,
        },
        "p_floats": p_floats,
        "smem_floats": max(p["smem_floats"], p["group"] * head_dim + p_floats),
    }
    extra = (("rope_k", PTR), ("rope_v", PTR), ("slots", PTR), *((("freq_factors", PTR),) if has_ff else ()))
    twin = dataclasses.replace(att, name=name, params=params, args=(*att.args, *extra), steps=(), prefill=None)
    rk_args["rope_k"], rk_args["rope_v"] = rk_args["k"], rk_args["v"]
    launch = dataclasses.replace(att_launch, kernel=name, args=(*att_launch.args, *(rk_args[a] for a, _k in extra)))
    return twin, launch


def _apart(program: StepProgram, read: tuple[str, ...], written: list[str]) -> bool:
    """Whether the arena bytes of the buffers `read` and `written` do not meet."""
    slots = {s.buffer: s for s in program.arena.slots}
    for r in read:
        a = slots[r]
        for w in written:
            b = slots[w]
            if a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes:
                return False
    return True
