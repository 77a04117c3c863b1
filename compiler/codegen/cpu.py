"""CPU codegen: render the cpu_* templates for one model and build them into a shared library.

The planner here computes every constant the templates use (model sizes, the weight formats
that occur, tile sizes, RoPE frequencies) and renders one self-contained C source; the build
runs `cc` in a temporary directory with fixed relative file names so that the library is
byte-identical for the same source, flags and compiler.
"""

import math
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rfc.artifacts.formats import FORMATS, Kernels
from rfc.artifacts.hashing import sha256_bytes
from rfc.artifacts.limits import MAX_CONV_KERNEL, MAX_DELTA_STATE, MAX_EXPERTS, MAX_RES_STREAMS, STEP_SEQS, STEP_TOKENS
from rfc.artifacts.ops import OP_DEFS, OPS
from rfc.artifacts.ops import altup as altup_ops
from rfc.artifacts.ops import hc as hc_ops
from rfc.artifacts.ops import rwkv as rwkv_ops
from rfc.artifacts.ops.core import alibi_slopes
from rfc.artifacts.plan import Plan, rope_inv_freq
from rfc.artifacts.program import PROGRAM_FILE, STEP_ABI_VERSION, STEP_ARGS, StepProgram, pack_program, plan_arena
from rfc.compiler.codegen import CodegenInput
from rfc.compiler.codegen import cpu_step
from rfc.compiler.codegen.cache import cached_build
from rfc.compiler.codegen.format_table import format_params
from rfc.compiler.codegen.render import render
from rfc.compiler.errors import CompileError
from rfc.compiler.targets import Target

ABI_VERSION = 2  # bump with any change to an exported function's signature
STEP_ENTRY = "rfc_step"  # the step program's entry: logits for the logit rows
HIDDEN_ENTRY = "rfc_step_hidden"  # the same step up to the final norm (embeddings)
SCORES_ENTRY = "rfc_step_scores"  # a reranker's: the same step up to its classifier's output
ARENA_ALIGNMENT = 256
# The arena the program records (what the engine's default step budget needs); the entry
# computes the same layout for any T and R, and the runtime sizes the arena per step.
ARENA_MAX_TOKENS, ARENA_MAX_ROWS, ARENA_MAX_SEQS = STEP_TOKENS, STEP_TOKENS, STEP_SEQS
CC = "cc"
SOURCE = "rfc_cpu.c"
LIBRARY = "librfc_cpu.so"
# A bundle's library is two translation units: the model's kernels and step (SOURCE) and the
# host sampler (cpu_sampler.c.j2), which is the same for every model of a target: its object is
# built once per target and toolchain (the build cache) and linked in, the same bytes as
# `library_command` building both sources at once. It was a quarter of a tiny model's C compile.
SAMPLER_SOURCE = "rfc_sample.c"
SAMPLER_OBJECT = "rfc_sample.o"
BASE_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-math-errno")

# gemma3n's AltUp ops and activation sparsity: row functions of kernels/cpu_altup.h (cpu_step.py's row_op phase)
ALTUP_OPS = tuple(d.kind for d in altup_ops.DEFS)
RWKV_OPS = tuple(d.kind for d in rwkv_ops.DEFS)
# hy_v4's hyper-connection ops: row functions of kernels/cpu_hc.h
HC_OPS = tuple(d.kind for d in hc_ops.DEFS)


@dataclass(frozen=True)
class CpuTuning:
    row_tile: int = 4  # weight rows per matmul tile (prefill)
    token_tile: int = 2  # tokens per matmul tile (prefill)
    decode_row_tile: int = 1  # weight rows per single-token tile: one sequential stream, which
    # the hardware prefetcher follows on its own
    act_budget_bytes: int = 256 * 1024  # activations kept in cache while sweeping the rows
    gemm_min_tokens: int = 8  # from this many tokens on, int8 formats pack 8 rows (cpu_gemm.h)
    dotn_gemm_min_tokens: int = 32  # the same for formats with a multi-token dot (cpu_dot.h rfc_wdotn_*)
    gemm_token_tile: int = 8  # tokens per packed-matmul tile
    # from this many tokens on, the cpu-amx build dots Q8_0x8 (the 4-bit x8 layouts: from
    # amx_min_tokens_4bit, they unpack their tiles first) on the tile unit (kernels/cpu_amx.h; bit
    # for bit the VNNI sums). One thread, 576 x 1536 and 2048 x 5632, against the 16-row VNNI
    # kernels (cpu_gemm.h rfc_x16dot_*; tools/amx/bench_kquant.py --formats Q4_0x8,Q4_1x8,Q8_0x8):
    # Q8_0x8 0.91-0.95x at 8 tokens, 1.12-1.14x at 12, 1.26-1.40x at 16, 1.26-1.49x at 32-128;
    # Q4_0x8 0.82-0.86x at 8, 1.20-1.26x at 16, 1.13-1.30x at 32-128; Q4_1x8 0.84-0.88x at 8,
    # 1.11-1.15x at 16, 1.00-1.15x at 32-128
    amx_min_tokens: int = 12
    amx_min_tokens_4bit: int = 16
    # Q4_Kx8 / Q5_Kx8 (cpu_amx.h rfc_amx_k_tile; tools/amx/bench_kquant.py, 576 x 1536 and
    # 2048 x 5632): 0.7-0.8x at 4 tokens, 0.8-0.9x at 8, 1.26-1.47x at 16, 1.2-1.45x at 64-128
    amx_min_tokens_kquant: int = 16
    attention_chunk: int = 32  # cache positions per online-softmax step
    # cache positions per attention segment (a multiple of the chunk): a query's segments are
    # folded in order, and a step of few work items spreads them over the team
    # (templates/cpu_attention.c.j2), their states in at most attention_part_bytes of the arena
    attention_segment: int = 256
    attention_part_bytes: int = 4 << 20
    attention_query_block: int = 16  # query tokens of one sequence that share K/V conversions
    # the step program loops over repeated layers (cpu_step.loop_layers) instead of unrolling
    # them: the same bits, a C compile several times shorter (SmolLM2's 30 layers on cpu-avx512:
    # 20.8 s -> 4.5 s); False: unrolled (the test that compares the two)
    loop_layers: bool = True


def build(inp: CodegenInput, tuning: CpuTuning = CpuTuning()) -> dict:
    check_host_machine(inp.target)
    source = render_source(inp, tuning, sampler=False)
    sampler = render("cpu_sampler.c.j2", {"abi_version": ABI_VERSION})
    command = library_command(inp.target)
    version = toolchain_version()
    obj_command = object_command(inp.target)
    sampler_object = cached_build(
        inp.cache,
        [sampler, " ".join(obj_command), version],
        lambda: compile_files({SAMPLER_SOURCE: sampler.encode()}, obj_command, SAMPLER_OBJECT),
    )
    link = [*compile_command(inp.target), SAMPLER_OBJECT]
    # keyed by the object's bytes, not by how it was made: a library never links a stale object
    library = cached_build(
        inp.cache,
        [source, sha256_bytes(sampler_object), " ".join(link), version],
        lambda: compile_files({SOURCE: source.encode(), SAMPLER_OBJECT: sampler_object}, link, LIBRARY),
    )
    inp.writer.write_bytes(f"{inp.bundle_dir}/{SOURCE}", source.encode())
    inp.writer.write_bytes(f"{inp.bundle_dir}/{SAMPLER_SOURCE}", sampler.encode())
    inp.writer.write_bytes(f"{inp.bundle_dir}/{LIBRARY}", library)
    inp.writer.write_bytes(f"{inp.bundle_dir}/{PROGRAM_FILE}", pack_program(step_program(inp)))
    return {
        "kernels": f"{inp.bundle_dir}/{LIBRARY}",
        "program": f"{inp.bundle_dir}/{PROGRAM_FILE}",
        "sources": [f"{inp.bundle_dir}/{SOURCE}", f"{inp.bundle_dir}/{SAMPLER_SOURCE}"],
        "isa": list(inp.target.isa),
        "machine": inp.target.machine,
        "toolchain": version.splitlines()[0],
        "compile_command": " ".join(command),
        "abi_version": ABI_VERSION,
    }


# -- the toolchain -------------------------------------------------------------------------


def check_host_machine(target: Target) -> None:
    """The cpu targets are native code for one architecture; `cc` here must produce it."""
    machine = platform.machine().lower().replace("amd64", "x86_64")
    if target.machine and machine != target.machine:
        raise CompileError(f"target {target.name} is {target.machine} code; this machine's C compiler builds {machine}")


def compile_command(target: Target) -> list[str]:
    """The build command of a one-unit library (SOURCE -> LIBRARY): its ISA flags come from the
    target, never from this machine."""
    return [CC, *BASE_FLAGS, *target.cflags, "-o", LIBRARY, SOURCE]


def library_command(target: Target) -> list[str]:
    """The command that builds a bundle's library from its two sources (what the manifest records)."""
    return [*compile_command(target), SAMPLER_SOURCE]


def object_command(target: Target) -> list[str]:
    """The sampler's object, compiled with the library's flags."""
    flags = [f for f in BASE_FLAGS if f != "-shared"]
    return [CC, *flags, *target.cflags, "-c", "-o", SAMPLER_OBJECT, SAMPLER_SOURCE]


def toolchain_version() -> str:
    try:
        proc = subprocess.run([CC, "--version"], capture_output=True, text=True, check=False)
    except OSError as e:
        raise CompileError(f"the cpu target needs a C compiler, and '{CC}' could not be run: {e}") from e
    if proc.returncode != 0 or not proc.stdout.strip():
        raise CompileError(f"'{CC} --version' failed (exit {proc.returncode}): {_head(proc.stderr)}")
    return proc.stdout.strip()


def compile_source(source: str, command: list[str]) -> bytes:
    """Builds `source` with `command` (relative names SOURCE -> LIBRARY) in a scratch folder."""
    return compile_files({SOURCE: source.encode()}, command, LIBRARY)


def compile_files(files: dict[str, bytes], command: list[str], output: str) -> bytes:
    """Runs `command` in a scratch folder holding `files` (by relative name); returns `output`."""
    with tempfile.TemporaryDirectory(prefix="rfc-cpu-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            proc = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
        except OSError as e:
            raise CompileError(f"could not run the C compiler ({' '.join(command)}): {e}") from e
        if proc.returncode != 0:
            raise CompileError(
                f"C compiler failed (exit {proc.returncode}) on the generated cpu kernels\n"
                f"command: {' '.join(command)}\n{_head(proc.stderr or proc.stdout)}"
            )
        return (Path(tmp) / output).read_bytes()


def _head(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[:lines])


# -- the planner ---------------------------------------------------------------------------


def kv_piece(plan) -> int:
    """The values a block of the KV cache keeps together per slot (cpu_attention.c.j2 rfc_kv):
    what every attention layer's head_dim is a multiple of, so that a kv head is whole pieces."""
    dims = {int(op.attrs["head_dim"]) for op in plan.ops if op.kind == "attention"}
    return math.gcd(*dims) if dims else plan.kv.row


def render_source(inp: CodegenInput, tuning: CpuTuning = CpuTuning(), step: bool = True, sampler: bool = True) -> str:
    """The whole library: the prelude, one rendering of a template per op (per format), then
    the step program (`step`: the kernel tests build the kernels of a plan that is not a model);
    without `sampler`, the prelude leaves the sampler to its own unit (a bundle's build)."""
    hp, plan = inp.hparams, inp.plan
    check_ops(plan, hp.architecture)
    # the plan's weights, as this target reads them (the weight planner's map)
    used = {w for op in plan.ops for w in op.weights}
    entries = {name: e for name, e in inp.weight_entries().items() if name in used}
    ops: dict[str, list] = {}
    for op in plan.ops:
        ops.setdefault(op.kind, []).append(op)
    _check_supported(hp, entries, ops)
    moe = _moe_params(plan, entries, ops)
    matmul_formats = sorted({entries[op.weights[0]].format for op in ops.get("matmul", []) + ops.get("moe_matmul", [])})
    embed_formats = sorted({entries[op.weights[0]].format for op in ops.get("embed", [])})
    max_k = max(
        (entries[op.weights[0]].shape[-1] for op in ops.get("matmul", []) + ops.get("moe_matmul", [])),
        default=hp.n_embd,
    )
    common = {
        "abi_version": ABI_VERSION,
        "n_embd": hp.n_embd,
        "n_ff": hp.n_ff,
        "vocab_size": hp.vocab_size,
        "n_heads": hp.n_heads,
        "n_kv_heads": hp.n_kv_heads,
        "head_dim": hp.head_dim,
        "group": hp.n_heads // max(1, hp.n_kv_heads),  # 0 heads: a model without attention (mamba2)
        "q_width": hp.n_heads * hp.head_dim,
        "kv_width": plan.kv.row,  # the KV cache's row: the widest layer's kv heads x head_dim
        "kv_piece": kv_piece(plan),
        "max_k": max_k,
    }
    rendered: set[str] = set()

    def part(template: str, params: dict) -> str:
        rendered.add(template)
        return render(template, params)

    # a library without the step program is there for its per-op kernels
    exports = inp.op_exports or not step
    prelude = {**common, **format_params(Kernels.CPU), "op_exports": exports, "sampler": sampler}
    parts = [part("cpu_prelude.c.j2", prelude)]
    for fmt in sorted(f for f in {e.format for e in entries.values()} if FORMATS[f].is_gguf):
        parts.append(part("cpu_dequant.c.j2", {"fmt": fmt.lower(), "FMT": fmt}))
    for fmt in embed_formats:
        parts.append(part("cpu_embed.c.j2", _embed_params(fmt, hp)))
    for fmt in sorted({entries[op.weights[0]].format for op in ops.get("pos_embed", [])}):
        parts.append(part("cpu_pos_embed.c.j2", {"fmt": fmt.lower(), "FMT": fmt, "n": hp.n_embd}))
    for fmt in matmul_formats:
        if FORMATS[fmt].is_packed:
            parts.append(part("cpu_matmul_x8.c.j2", _x8_params(fmt, tuning)))
        else:
            parts.append(part("cpu_matmul.c.j2", _matmul_params(fmt, tuning)))
    norm = _uniform(ops.get("rmsnorm", []), "rmsnorm")
    if norm is not None:
        eps = cpu_step.norm_eps(plan)
        extra = {"extra_eps": eps[1:]} if eps[1:] else {}
        if cpu_step.short_norms(plan):  # only then (every other library's source stays as it was)
            extra["short_rows"] = True
        parts.append(part("cpu_rmsnorm.c.j2", {"n": hp.n_embd, "eps": eps[0], **extra}))
    # rope and attention: one rendering per geometry of their ops (layers may differ in heads and
    # head_dim: Gemma 4), the rest of their attributes shared (_uniform)
    for geometry, sfx in cpu_step.geometries(plan, "rope").items():
        rope = _uniform([op for op in ops["rope"] if cpu_step.head_geometry(op) == geometry], "rope")
        parts.append(
            part(
                "cpu_rope.c.j2",
                {
                    **_rope_params(rope, cpu_step.rope_variants(plan, geometry)),
                    "sfx": [sfx] if sfx else [],
                    "first": not sfx,
                },
            )
        )
    for geometry, sfx in cpu_step.geometries(plan, "attention").items():
        attention = _uniform([op for op in ops["attention"] if cpu_step.head_geometry(op) == geometry], "attention")
        parts.append(
            part(
                "cpu_attention.c.j2",
                {**_attention_params(plan.kv, attention, tuning), "sfx": [sfx] if sfx else [], "first": not sfx},
            )
        )
    parts.append(part("cpu_elementwise.c.j2", _oai_params(ops.get("swiglu", []))))
    arch_ops = _arch_ops_params(ops)
    if arch_ops is not None:
        parts.append(part("cpu_arch_ops.c.j2", arch_ops))
    if "head_matmul" in ops or "concat_heads" in ops or "slice_heads" in ops:
        parts.append(part("cpu_mla.c.j2", _mla_params(entries, ops.get("head_matmul", []))))
    if moe is not None:
        parts.append(part("cpu_moe.c.j2", moe))
        for fmt in sorted({entries[op.weights[0]].format for op in ops["moe_matmul"]}):
            parts.append(part("cpu_moe_matmul.c.j2", {"fmt": fmt.lower(), "FMT": fmt}))
    # every op's kernel is in a template its descriptor names (CpuPart.templates)
    missing = sorted({kind for kind in ops if rendered.isdisjoint(OP_DEFS[kind].cpu.templates)})
    if missing:
        raise CompileError(f"internal: the cpu source lacks the kernel templates of {', '.join(missing)}")
    if step:
        parts.append(part("cpu_step.c.j2", step_params(inp, tuning.loop_layers)))
    return "\n".join(parts)


def _arch_ops_params(ops: dict[str, list]) -> dict | None:
    """Which fixed op groups of cpu_arch_ops.c.j2 the plan uses (None: none), and the shared
    bounds their kernels size stack arrays by."""
    groups = {
        "delta_net": "gated_delta_net" in ops or "ssm_conv" in ops,  # ssm_conv: qwen35's and Mamba2's conv
        "short_conv": "short_conv" in ops,
        "ssm_scan": any(not cpu_step.per_state_decay(op) for op in ops.get("ssm_scan", [])),
        "altup": any(kind in ops for kind in ALTUP_OPS),
        "hc": any(kind in ops for kind in HC_OPS),
    }
    if any(cpu_step.per_state_decay(op) for op in ops.get("ssm_scan", [])):  # Mamba-1's (only then: the others'
        groups["ssm_scan1"] = True  # sources stay as they were)
    if any(op.attr("decay") != "head" for op in ops.get("gated_delta_net", [])):  # Kimi's KDA, likewise
        groups["kda"] = True
    if "lightning_attention" in ops:  # MiniMax-01's, likewise
        groups["lightning"] = True
    if any(kind in ops for kind in RWKV_OPS):  # the RWKVs', likewise
        groups["rwkv"] = True
    if not any(groups.values()):
        return None
    bounds = {"max_conv_kernel": MAX_CONV_KERNEL, "max_delta_state": MAX_DELTA_STATE}
    if groups["hc"]:  # res_mix's scores (only then: the others' sources stay as they were)
        bounds["max_res_streams"] = MAX_RES_STREAMS
    return {**groups, **bounds}


# -- the step program ------------------------------------------------------------------------


def vector_refs(plan: Plan, entries: dict) -> tuple[dict[str, list], list[list], int]:
    """How the step reads each 1-D weight as floats: F32 in place ([False, weight offset]),
    any other format from a float copy the entry decodes each step ([True, float index]).
    Returns the references, the copies to make [fmt, weight offset, n, float index] and
    the floats they take."""
    refs: dict[str, list] = {}
    consts: list[list] = []
    n_floats = 0
    for name in cpu_step.vector_weights(plan, entries):
        e = entries[name]
        if e.format == "F32":
            refs[name] = [False, e.offset]
        else:
            refs[name] = [True, n_floats]
            consts.append([e.format.lower(), e.offset, e.shape[0], n_floats])
            n_floats += -(-e.shape[0] // 16) * 16
    return refs, consts, n_floats


def step_params(inp: CodegenInput, loop_layers: bool = True) -> dict:
    plan, entries = inp.plan, inp.weight_entries()
    refs, consts, n_floats = vector_refs(plan, entries)
    buffers = []
    for b in plan.buffers:
        width = 1
        for d in b.shape[1:]:
            if isinstance(d, str):
                raise CompileError(f"buffer {b.name}: only its first dimension may be T or R")
            width *= d
        first = b.shape[0]
        code = {"T": 1, "R": 2}.get(first, 0) if isinstance(first, str) else 0
        buffers.append([code, width * 4 * (1 if isinstance(first, str) else first)])
    # an encoder's plan has no logits: its step entry computes the hidden states too (the runtime
    # refuses a logits step of it before the call)
    lowered = [(STEP_ENTRY, cpu_step.lower(plan, entries, refs, plan.output_logits or plan.output_hidden)),
               (HIDDEN_ENTRY, cpu_step.lower(plan, entries, refs, plan.output_hidden))]  # fmt: skip
    if plan.output_scores:
        lowered.append((SCORES_ENTRY, cpu_step.lower(plan, entries, refs, plan.output_scores)))
    # The entries differ only after the last layer (the LM head, the classifier): the phases they
    # share are generated once, in one function the entries call with their number. A copy of the
    # whole step per entry doubled the C compile (tiny-deepseek2: 21 s -> 10 s on 2 cores).
    shared = _shared_prefix([low.phases for _, low in lowered])
    looped = cpu_step.loop_layers if loop_layers else list
    return {
        "fields": [[name, kind] for name, kind, _ in STEP_ARGS],
        "step_abi": STEP_ABI_VERSION,
        "alignment": ARENA_ALIGNMENT,
        "buffers": buffers,
        "const_floats": n_floats,
        "moe": any(op.kind == "moe_route" for op in plan.ops),
        "attention": any(op.kind == "attention" for op in plan.ops),
        "key_ends": any(op.kind == "attention" and not op.attr("causal") for op in plan.ops),
        "state_floats": plan.state.slot_floats,
        "consts": consts,
        "shared": looped(lowered[0][1].phases[:shared]),
        "counters": max(low.counters for _, low in lowered),
        "entries": [
            {"name": name, "tail": looped(low.phases[shared:]), "counters": low.counters, "barriers": low.barriers}
            for name, low in lowered
        ],
    }


def _shared_prefix(phase_lists: list[list[dict]]) -> int:
    """How many phases (barriers included) every entry begins with, alike."""
    n = 0
    for group in zip(*phase_lists):
        if any(p != group[0] for p in group[1:]):
            break
        n += 1
    return n


def step_program(inp: CodegenInput) -> StepProgram:
    """What kernels/<target>/program.msgpack records: the arena at the engine's default
    sizes, the entries, and the step's shape (phases and barriers) for `rfc inspect`."""
    arena = plan_arena(inp.plan.buffers, ARENA_MAX_TOKENS, ARENA_MAX_ROWS, ARENA_MAX_SEQS, ARENA_ALIGNMENT)
    entries = inp.weight_entries()
    low = cpu_step.lower(
        inp.plan, entries, vector_refs(inp.plan, entries)[0], inp.plan.output_logits or inp.plan.output_hidden
    )
    return StepProgram(
        target=inp.target.name, arena=arena, entry=STEP_ENTRY, weights=inp.weights,
        extra={"hidden_entry": HIDDEN_ENTRY, **({"scores_entry": SCORES_ENTRY} if inp.plan.output_scores else {}),
               "step_abi": STEP_ABI_VERSION, "barriers": low.barriers,
               "phases": sum(1 for p in low.phases if p["kind"] != "barrier"), "plan_ops": len(inp.plan.ops)},
    )  # fmt: skip


def check_ops(plan: Plan, architecture: str) -> None:
    """Refuses a plan with a non-default optional attribute the cpu kernels lack (every op kind
    has a cpu kernel: tests/unit/test_op_registry.py)."""
    hint = "the reference device runs it: compile with --reference-only (or for a GPU target) and use `--device ref`"
    for op in plan.ops:
        cpu = OP_DEFS[op.kind].cpu  # the optional attributes its kernel takes (the descriptor's CpuPart)
        for name, default in OPS[op.kind].optional:
            value = op.attr(name)
            if value != default and name not in cpu.attrs:
                raise CompileError(
                    f"the cpu target has no kernel for {op.kind} with {name} = {value!r} ({architecture}); {hint}"
                )


def _check_supported(hp, entries: dict, ops: dict[str, list]) -> None:
    for e in entries.values():
        if e.format not in FORMATS or Kernels.CPU not in FORMATS[e.format].kernels:
            raise CompileError(f"the cpu target has no kernels for weight format {e.format} ({e.name})")
    for op in ops.get("matmul", []) + ops.get("moe_matmul", []):
        e = entries[op.weights[0]]
        f = FORMATS[e.format]
        if not f.is_float and e.shape[-1] % f.cpu_dot_step[0]:
            raise CompileError(
                f"{e.name}: row length {e.shape[-1]} is not a multiple of {f.cpu_dot_step[0]} ({e.format})"
            )
    for op in ops.get("moe_add_bias", []):  # read in place, a row per expert
        e = entries[op.weights[0]]
        if e.format != "F32" or len(e.shape) != 2:
            raise CompileError(
                f"{e.name}: the cpu target reads expert biases as F32 [n_expert, N], it is {e.format} {list(e.shape)}"
            )
    for op in ops.get("pos_embed", []):
        e = entries[op.weights[0]]
        if not FORMATS[e.format].is_gguf or FORMATS[e.format].is_packed or e.shape[-1] != hp.n_embd:
            raise CompileError(f"{e.name}: the cpu target reads position tables as GGUF rows of n_embd")
    for op in ops.get("embed", []):
        e = entries[op.weights[0]]
        if e.shape[0] != hp.vocab_size or (e.shape[1] != hp.n_embd and not FORMATS[e.format].is_gguf):
            # wider: sliced (Gemma 4's per-layer table)
            raise CompileError(f"{e.name}: embedding table {list(e.shape)} is not vocab x n_embd")
    head_dims = {int(op.attrs["head_dim"]) for op in ops.get("attention", [])} | {hp.head_dim}
    for name, size in (("n_embd", hp.n_embd), *(("head_dim", d) for d in sorted(head_dims))):
        if size % 8:
            raise CompileError(f"the cpu target needs {name} to be a multiple of 8, the model has {size}")


def _moe_params(plan: Plan, entries: dict, ops: dict[str, list]) -> dict | None:
    """The mixture-of-experts constants (cpu_moe.c.j2), bounded before they size anything:
    1 <= n_used <= n_expert <= MAX_EXPERTS for every router (the constants: the largest of them, which size
    the grouping and its scratch; grovemoe's adjugate router scores the same experts for fewer tensors and
    slots); expert tensors of at most n_expert experts in a GGUF format or an x8 layout (cpu_moe_matmul.c.j2
    runs either format's dense tiles per expert)."""
    if not ops.get("moe_route"):
        return None
    widths = {b.name: b.shape[-1] for b in plan.buffers}
    routes = {(int(widths[op.inputs[0]]), int(op.attrs["n_used"])) for op in ops["moe_route"]}
    for count, used in routes:
        if not 1 <= used <= count <= MAX_EXPERTS:
            raise CompileError(f"expert counts out of range: {used} used of {count} (at most {MAX_EXPERTS})")
    n_expert, n_used = max(c for c, _ in routes), max(u for _, u in routes)
    shapes = [entries[op.weights[0]] for op in ops.get("moe_matmul", [])]
    for e in shapes:
        f = FORMATS[e.format]  # a GGUF format, or an x8 layout of experts of whole groups (weight_plan.groups_fit)
        if (
            len(e.shape) != 3
            or e.shape[0] > n_expert
            or not (f.is_gguf or "moe_matmul" in f.ops and e.shape[1] % f.group_rows == 0)
        ):
            raise CompileError(
                f"{e.name}: expert tensor {list(e.shape)} ({e.format}) is not [{n_expert}, N, K] in a "
                f"GGUF format "
                "or an x8 layout of whole row groups"
            )
    return {
        "n_expert": n_expert,
        "n_used": n_used,
        "segs": cpu_step.MAX_MOE_SEGMENTS,
        "max_k": max((e.shape[2] for e in shapes), default=8),
        "max_n": max((e.shape[1] for e in shapes), default=8),
    }


MAX_HEAD_MATMUL_K = 8192  # cpu_mla.c.j2's row buffer (deepseek2: attn_k_b 128, attn_v_b 512)


def _mla_params(entries: dict, head_matmuls: list) -> dict:
    """cpu_mla.c.j2: the formats of the per-head matmuls (GGUF formats: the weight planner
    repacks 2-D matmul weights only) and their longest row, each a multiple of 8 up to
    MAX_HEAD_MATMUL_K."""
    ks = []
    for op in head_matmuls:
        e = entries[op.weights[0]]
        k = e.shape[-1]
        if len(e.shape) != 3 or not FORMATS[e.format].is_gguf or k % 8 or not 8 <= k <= MAX_HEAD_MATMUL_K:
            raise CompileError(
                f"{e.name}: the cpu per-head matmul needs [heads, N, K] in a GGUF format with K a "
                f"multiple of 8 up to {MAX_HEAD_MATMUL_K}, it is {e.format} {list(e.shape)}"
            )
        ks.append(k)
    return {
        "formats": sorted({entries[op.weights[0]].format.lower() for op in head_matmuls}),
        "max_k": max(ks, default=8),
    }


def _oai_params(swiglus: list) -> dict:
    """swiglu_oai's alpha and limit, compiled in (llama.cpp's are constants): the same for every
    such op, finite and positive (validate.py bounds them)."""
    # attributes at their defaults are absent from an op (minimax-m3's swiglu_oai: gpt-oss's constants)
    oai = dict(OPS["swiglu"].optional) | (
        _uniform([op for op in swiglus if op.attr("activation") == "swiglu_oai"], "swiglu") or {}
    )
    clamp = _uniform([op for op in swiglus if op.attr("activation") == "silu_clamp"], "swiglu")
    params = {"oai_alpha": cpu_step.f32_literal(oai["alpha"], "swiglu_oai alpha"),
              "oai_limit": cpu_step.f32_literal(oai["limit"], "swiglu_oai limit")}  # fmt: skip
    if clamp:  # silu_clamp's limit, compiled in; only then (every other library's source stays as it was)
        params["clamp_limit"] = cpu_step.f32_literal(clamp["limit"], "silu_clamp limit")
    caps = cpu_step.cap_limits(swiglus)
    if caps:  # likewise silu_cap's: a span function per distinct limit (layers and FFN kinds may differ)
        params["cap_limits"] = [cpu_step.f32_literal(c, "silu_cap limit") for c in caps]
    situ = cpu_step.situ_pairs(swiglus)
    if situ:  # likewise situ's: a span function per (alpha, limit)
        params["situ"] = [
            (cpu_step.f32_literal(a, "situ alpha"), cpu_step.f32_literal(lim, "situ limit") if lim else 0)
            for a, lim in situ
        ]
    if any(op.attr("activation") == "softplus" for op in swiglus):  # likewise
        params["softplus"] = True
    return params


ATTENTION_GROUP_FLOATS = 2048  # a query block's accumulators per (group x head_dim) float: stack bound


def _attention_params(kv, attrs: dict, tuning: CpuTuning) -> dict:
    """One geometry's attention (validate_plan: its kv heads x head_dim fit the cache row). A
    group wider than ATTENTION_GROUP_FLOATS (Gemma 4 31B's global layers: 8 x 512) takes fewer
    query tokens per work item, so that rfc_attend's stack arrays stay as small as today's."""
    nh, nkv, hd = int(attrs["n_heads"]), int(attrs["n_kv_heads"]), int(attrs["head_dim"])
    if nkv * hd > kv.row:
        raise CompileError(f"attention of {nkv} kv heads x {hd} exceeds the KV cache row {kv.row}")
    assert tuning.attention_chunk % 8 == 0, "attention chunks are whole vectors"
    assert tuning.attention_segment % tuning.attention_chunk == 0, "attention segments are whole chunks"
    group = nh // nkv
    alibi = attrs.get("alibi")
    return {
        # ALiBi: each query head's slope, compiled in (float32 values, >= 2^-64 within the op's bounds)
        "alibi": alibi_slopes(nh, alibi) if alibi is not None else [],
        # T5's relative-position bias: the reach of the table the step passes (0: none)
        "pos_bias": int(attrs.get("pos_bias") or 0),
        "n_heads": nh,
        "n_kv_heads": nkv,
        "head_dim": hd,
        "group": group,
        "scale": float(attrs["scale"]),
        "chunk": tuning.attention_chunk,
        "segment": tuning.attention_segment,
        "part_bytes": tuning.attention_part_bytes,
        "query_block": max(
            1, min(tuning.attention_query_block, tuning.attention_query_block * ATTENTION_GROUP_FLOATS // (group * hd))
        ),
    }


def _x8_params(fmt: str, tuning: CpuTuning) -> dict:
    f = FORMATS[fmt]
    common = {"fmt": fmt.lower(), "FMT": fmt, "BASE": f.base, "block_bytes": f.block_bytes,
              "block_elems": f.block_elems, "act": f.cpu_act, "token_tile": 4}  # fmt: skip
    if f.column_dot:  # a layout of its own, dotted a column at a time by cpu_dot.h
        # Q4_Kx8 / Q5_Kx8 on the tile unit from amx_min_tokens_kquant tokens (cpu_amx.h rfc_amx_k_tile)
        amx_q5 = {"Q4_K": 0, "Q5_K": 1}.get(f.base, -1)  # -1: VNNI only (IQ4_XSx8, IQ4_NLx8, Q6_Kx8)
        return {
            **common,
            "columns": True,
            "column_kernel": f.base.lower(),
            "head": 0,
            "has_min": False,
            "int8": False,
            "amx_q5": amx_q5,
            "amx_min_tokens": tuning.amx_min_tokens_kquant,
        }
    quant_bytes = f.block_bytes - f.head_bytes
    assert quant_bytes in (16, 32) and f.head_bytes in (2, 4), f"{fmt}: a layout cpu_matmul_x8.c.j2 does not know"
    return {
        **common,
        "columns": False,
        "head": f.head_bytes * 8,
        "has_min": f.head_bytes == 4,
        "int8": quant_bytes == 32,
        "token_tile": "RFC_X8_TT",  # 4 or 8 by the target's registers (cpu_gemm.h)
        # cpu_amx.h's RFC_AMX_I8 / _Q4 / _Q4M: how the quant bytes become tiles
        "amx_kind": 0 if quant_bytes == 32 else 2 if f.head_bytes == 4 else 1,
        "amx_min_tokens": tuning.amx_min_tokens if quant_bytes == 32 else tuning.amx_min_tokens_4bit,
    }


def _embed_params(fmt: str, hp) -> dict:
    params = {"fmt": fmt.lower(), "FMT": fmt, "n_embd": hp.n_embd, "vocab_size": hp.vocab_size, "x8": False}
    f = FORMATS[fmt]
    if f.is_packed:
        if "embed" not in f.ops:
            raise CompileError(f"the cpu embedding lookup does not read {fmt} tables")
        assert f.group_rows == 8 and f.head_bytes % 2 == 0 and (f.block_bytes - f.head_bytes) % 4 == 0
        if hp.n_embd % f.block_elems:
            raise CompileError(f"a {fmt} embedding needs n_embd to be a multiple of {f.block_elems}")
        params.update(
            x8=True,
            BASE=f.base,
            base=f.base.lower(),
            head=f.head_bytes,
            block_bytes=f.block_bytes,
            block_elems=f.block_elems,
        )
    return params


def _matmul_params(fmt: str, tuning: CpuTuning) -> dict:
    f = FORMATS[fmt]
    unit, unit_bytes = f.cpu_dot_step
    rb, tb, rd = tuning.row_tile, tuning.token_tile, tuning.decode_row_tile
    return {
        "fmt": fmt.lower(),
        "FMT": fmt,
        "unit": unit,
        "unit_bytes": unit_bytes,
        "row_tile": rb,
        "token_tile": tb,
        "decode_row_tile": rd,
        "row_group": math.lcm(rb, rd),
        "tiles": sorted({(rb, tb), (1, tb)}, reverse=True),
        "grouped_tiles": sorted({rd, 1}, reverse=True),
        "act_budget_bytes": tuning.act_budget_bytes,
        "act_elem_bytes": 1 if f.cpu_act else 4,  # int8 activations, or float
        "tail": f.is_float,  # float rows may have any length
        "gemm_min_tokens": tuning.gemm_min_tokens,
        "dotn_gemm_min_tokens": tuning.dotn_gemm_min_tokens,
        "gemm_token_tile": tuning.gemm_token_tile,
    }


def _rope_params(attrs: dict, variants: list[cpu_step.RopeKey]) -> dict:
    """`attrs`: what every rope op shares; `variants`: the table attributes the ops differ in
    (cpu_step.rope_variants), one frequency table each."""
    n_rot, hd = int(attrs["n_rot"]), int(attrs["head_dim"])
    half = n_rot // 2
    if attrs["style"] not in ("adjacent", "neox"):
        raise CompileError(f"unknown rope style {attrs['style']!r}")
    # float64, the way the reference computes them; repr round-trips exactly
    tables = [rope_inv_freq(n_rot, *key) for key in variants]
    if any(not math.isfinite(v) for inv in tables for v in inv):
        raise CompileError("rope frequencies are not finite")
    return {
        "style": attrs["style"],
        "n_heads": int(attrs["n_heads"]),
        "n_kv_heads": int(attrs["n_kv_heads"]),
        "head_dim": hd,
        "n_rot": n_rot,
        "half": half,
        "inv_freqs": tables,
    }


def _uniform(ops: list, kind: str) -> dict | None:
    """The attributes all ops of a kind share (their layer and the per-op arguments aside:
    CpuPart.per_op): they are compiled in."""
    if not ops:
        return None
    skip = {"layer", *OP_DEFS[kind].cpu.per_op}
    first = {k: v for k, v in ops[0].attrs.items() if k not in skip}
    for op in ops[1:]:
        if {k: v for k, v in op.attrs.items() if k not in skip} != first:
            raise CompileError(f"the cpu target needs every {kind} op to share its attributes (layers differ)")
    return first
