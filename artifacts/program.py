"""The step program: what a target runs for one engine step (docs/design.md: the step program).

The plan stays the IR (the reference device interprets it op by op). For each compiled target
the compiler lowers the plan into a step program, written next to the target's code object
as `kernels/<target>/program.msgpack` and named in the manifest's target entry (`program`):

- an **arena**: every plan buffer at a fixed byte offset, sized for the largest step the
  program accepts (`max_tokens` tokens, `max_rows` logit rows, `max_seqs` sequences); the
  runtime allocates it once and never per step;
- for `cpu*` targets, an **entry**: one exported C function `int <entry>(const rfc_step_args *)`
  that runs every op of the step in one thread team. STEP_ARGS below is its argument
  struct, field by field: the compiler generates the C struct from it and the runtime the
  ctypes one, so the two cannot drift;
- for `gfx*` / `sm_*` targets, a **launch list**: kernels in order with their grids and
  argument slots (an arena buffer, a weight, a batch array, a KV layer, a scalar), which the
  runtime binds once and replays (as a CUDA/HIP graph per batch-shape bucket). Targets with
  tensor cores add a second list, `prefill_launches`, for steps of at least
  `prefill_min_tokens` tokens: the same launches except that matmuls run on tensor cores.
  (A reader that predates it runs every step with `launches`: correct, only slower; so the
  field came without a version bump.) A third list, `single_launches`, is what a step of
  exactly one token runs (a batch-1 decode step): the decode list with its matmuls' blocks
  sized for one token; absent or empty, such a step runs `launches` (again correct for an
  older reader). A fourth, `batch_launches`, is what a step of `batch_min_tokens` tokens or
  more runs, short of `prefill_min_tokens`: the decode list with its int8 matmuls on kernels
  for many tokens a block; absent or empty, such steps run `launches`.

The arena may name slots the runtime must zero once, right after allocating it (`zeroed`:
counters that kernels leave at zero when they finish, such as split attention's arrival
counts). A program that lists any is written as version 2, which a reader that predates the
field refuses (it would run the kernels over unzeroed counters); one that lists none is
version 1, as before.

Per step the runtime writes the batch arrays (tokens, positions, KV slots, block tables,
logit rows) and makes one call or one graph launch. Python does per-step work, never per-op.
"""

from dataclasses import dataclass, field
from enum import Enum

import msgpack

from rfc.artifacts.errors import BundleError

PROGRAM_FILE = "program.msgpack"
# StepProgram.extra's key marking a GPU program whose every kernel waits for the kernel before it
# before it touches an activation (compiler/codegen/gpu_overlap.py): the launches of the lists it
# names (LIST_NAMES; `true`: every list) may overlap (programmatic dependent launch); a reader that
# ignores it launches them one after another
EXTRA_PROGRAMMATIC = "programmatic"
LIST_NAMES = ("launches", "prefill_launches", "single_launches", "batch_launches")
PROGRAM_VERSION = 1
ZEROED_VERSION = 2  # the arena's `zeroed` slots
READ_VERSIONS = (PROGRAM_VERSION, ZEROED_VERSION)
MAX_ZEROED_BYTES = 1 << 24  # per zeroed slot: the runtime zeroes it from a host buffer of that size
MAX_LAUNCHES = 1 << 16
MAX_ARENA_BYTES = 1 << 40

# -- the cpu step entry's argument struct ---------------------------------------------------
# Every field is 8 bytes ("i64" or "ptr"), so the C and ctypes layouts have no padding to
# disagree about. Order is the ABI: append fields and bump STEP_ABI_VERSION.
STEP_ABI_VERSION = 3  # 2: state, state_slots, n_state_slots (recurrent state); 3: k_type, v_type (quantized KV caches)
STEP_ARGS: tuple[tuple[str, str, str], ...] = (
    ("abi_version", "i64", "STEP_ABI_VERSION the caller was built for; the entry refuses others"),
    ("n_threads", "i64", "threads in the team (>= 1)"),
    ("n_tokens", "i64", "T: tokens fed this step (<= arena max_tokens)"),
    ("n_rows", "i64", "R: logit rows wanted (<= arena max_rows)"),
    ("n_seqs", "i64", "S: sequences in the step (<= arena max_seqs)"),
    ("table_width", "i64", "columns of block_tables"),
    ("block_size", "i64", "KV slots per cache block"),
    ("kv_slots", "i64", "KV slots per layer in the cache (num_blocks * block_size)"),
    ("tokens", "ptr", "int32[T]"),
    ("positions", "ptr", "int32[T]"),
    ("slots", "ptr", "int32[T]: KV slot of each token"),
    ("seq_of_token", "ptr", "int32[T]"),
    ("seq_start", "ptr", "int32[S+1]"),
    ("context_lens", "ptr", "int32[S]: cached tokens after this step"),
    ("block_tables", "ptr", "int32[S, table_width], -1 padded"),
    ("logit_rows", "ptr", "int32[R]: rows of T whose logits are wanted"),
    ("weights", "ptr", "base of weights.bin (layout offsets are relative to it)"),
    ("arena", "ptr", "base of the activation arena (program offsets are relative to it)"),
    ("k_cache", "ptr", "K cache: [n_layers, kv_slots, row] of k_type (a row: n_kv_heads * head_dim values)"),
    ("v_cache", "ptr", "V cache, same layout, of v_type"),
    (
        "state",
        "ptr",
        "recurrent-state pool (plans with state): [n_state_slots, the plan's StateSpec slot_floats] float32",
    ),
    (
        "state_slots",
        "ptr",
        "int32[S]: each sequence's state slot (-1: none: it starts from zeros, its state is not kept)",
    ),
    ("n_state_slots", "i64", "slots in the state pool (0: no pool)"),
    ("k_type", "i64", "how K is stored: artifacts/kv_cache_type.py CacheType.code (0 f16, 1 q8_0, 2 q4_0)"),
    ("v_type", "i64", "how V is stored, the same codes"),
)


class ArgKind(str, Enum):
    ARENA = "arena"  # ref: a plan buffer; the pointer is arena base + its offset
    WEIGHT = "weight"  # ref: a layout entry; the pointer is weights base + its offset
    BATCH = "batch"  # ref: a batch array (tokens, positions, slots, ...), a STEP_ARGS pointer name
    KV = "kv"  # ref: "k" or "v"; value: the layer
    # ref "": the base of the recurrent-state pool (plans with state; kernels find a slot by state_slots)
    STATE = "state"
    SCALAR = "scalar"  # ref: "" for the constant `value`, or a STEP_ARGS i64 name (n_tokens, ...)


@dataclass(frozen=True)
class ArgSlot:
    kind: ArgKind
    ref: str
    value: int = 0
    size: int = 8  # bytes in the kernel's parameter buffer (4 for an i32 scalar)


@dataclass(frozen=True)
class GridDim:
    """ceil(count / tile) blocks, count being a constant or a STEP_ARGS i64 name."""

    count: int | str
    tile: int = 1


@dataclass(frozen=True)
class Launch:
    kernel: str
    threads: int
    grid: tuple[GridDim, ...]
    args: tuple[ArgSlot, ...]
    shared_bytes: int = 0


@dataclass(frozen=True)
class ArenaSlot:
    buffer: str
    offset: int
    nbytes: int  # capacity at the arena's maximum sizes


@dataclass(frozen=True)
class Arena:
    max_tokens: int
    max_rows: int
    max_seqs: int
    alignment: int
    slots: tuple[ArenaSlot, ...]
    total_bytes: int
    # slots the runtime zeroes once after allocating the arena (never per step): kernels that
    # count in them leave them at zero
    zeroed: tuple[str, ...] = ()

    def slot(self, buffer: str) -> ArenaSlot:
        for s in self.slots:
            if s.buffer == buffer:
                return s
        raise KeyError(buffer)


@dataclass(frozen=True)
class StepProgram:
    target: str
    arena: Arena
    entry: str | None = None  # cpu targets
    launches: tuple[Launch, ...] = ()  # gpu targets
    # gpu targets with tensor cores: what a step of at least prefill_min_tokens tokens runs
    # instead of `launches` (empty: every step runs `launches`)
    prefill_launches: tuple[Launch, ...] = ()
    prefill_min_tokens: int = 0
    # gpu targets: what a step of exactly one token runs instead of `launches` (empty: `launches`)
    single_launches: tuple[Launch, ...] = ()
    # plan weight name -> the layout entry this target reads for it (a repacked variant such
    # as "blk.0.attn_q.weight#Q4_0x8"); a plan weight not listed reads the entry of its name
    weights: dict[str, str] = field(default_factory=dict)
    version: int = PROGRAM_VERSION
    extra: dict = field(default_factory=dict)  # target-specific facts (workspace sizes, ...)
    # gpu targets: what a step of at least batch_min_tokens tokens, and fewer than
    # prefill_min_tokens, runs instead of `launches` (empty: `launches`)
    batch_launches: tuple[Launch, ...] = ()
    batch_min_tokens: int = 0

    def every_launch(self) -> tuple[Launch, ...]:
        """The launches of every list, in list order (a launch two lists hold appears twice)."""
        return (*self.launches, *self.prefill_launches, *self.single_launches, *self.batch_launches)

    def overlapped_lists(self) -> frozenset[str]:
        """The names (LIST_NAMES) of the lists whose launches may overlap (EXTRA_PROGRAMMATIC)."""
        flag = self.extra.get(EXTRA_PROGRAMMATIC)
        if flag is True:
            return frozenset(LIST_NAMES)
        if isinstance(flag, (list, tuple)):
            return frozenset(name for name in flag if name in LIST_NAMES)
        return frozenset()


def plan_arena(buffers, max_tokens: int, max_rows: int, max_seqs: int, alignment: int = 256) -> Arena:
    """Every plan buffer at its own aligned offset, sized for the largest step. (Buffers are
    not overlapped yet: a liveness-based packing can come later without changing readers.)"""
    sizes = {"T": max_tokens, "R": max_rows}
    slots, offset = [], 0
    for b in buffers:
        n = 1
        for d in b.shape:
            n *= sizes[d] if isinstance(d, str) else d
        nbytes = n * 4  # f32 and i32
        slots.append(ArenaSlot(b.name, offset, nbytes))
        offset += -(-nbytes // alignment) * alignment
    return Arena(max_tokens, max_rows, max_seqs, alignment, tuple(slots), offset)


# -- serialization ------------------------------------------------------------------------------


def pack_program(p: StepProgram) -> bytes:
    arena = {
        "max_tokens": p.arena.max_tokens, "max_rows": p.arena.max_rows, "max_seqs": p.arena.max_seqs,
        "alignment": p.arena.alignment, "total_bytes": p.arena.total_bytes,
        "slots": [[s.buffer, s.offset, s.nbytes] for s in p.arena.slots],
    }  # fmt: skip
    if p.arena.zeroed:  # absent otherwise: the program stays version 1, byte for byte
        arena["zeroed"] = list(p.arena.zeroed)
    return msgpack.packb({
        "version": ZEROED_VERSION if p.arena.zeroed else p.version,
        "target": p.target,
        "arena": arena,
        "entry": p.entry,
        "launches": [_pack_launch(launch) for launch in p.launches],
        "prefill_launches": [_pack_launch(launch) for launch in p.prefill_launches],
        "prefill_min_tokens": p.prefill_min_tokens,
        # absent when empty: a program without one is the bytes it was before the field
        **({"single_launches": [_pack_launch(launch) for launch in p.single_launches]} if p.single_launches else {}),
        **({"batch_launches": [_pack_launch(launch) for launch in p.batch_launches],
            "batch_min_tokens": p.batch_min_tokens} if p.batch_launches else {}),
        "weights": dict(sorted(p.weights.items())),
        "extra": dict(sorted(p.extra.items())),
    })  # fmt: skip


def _pack_launch(launch: Launch) -> dict:
    return {
        "kernel": launch.kernel,
        "threads": launch.threads,
        "shared_bytes": launch.shared_bytes,
        "grid": [[g.count, g.tile] for g in launch.grid],
        "args": [[a.kind.value, a.ref, a.value, a.size] for a in launch.args],
    }


def _unpack_launch(launch: dict) -> Launch:
    return Launch(
        kernel=_name(launch["kernel"]),
        threads=_nat(launch["threads"]),
        shared_bytes=_nat(launch["shared_bytes"], 0),
        grid=tuple(GridDim(g[0] if isinstance(g[0], str) else _nat(g[0], 0), _nat(g[1])) for g in launch["grid"]),
        args=tuple(ArgSlot(ArgKind(x[0]), _name(x[1], empty=True), int(x[2]), _nat(x[3])) for x in launch["args"]),
    )


def unpack_program(data: bytes) -> StepProgram:
    """Parses a program, checking types and bounds; BundleError (one line) otherwise."""
    try:
        raw = msgpack.unpackb(data, strict_map_key=True, max_array_len=MAX_LAUNCHES * 4)
        version = raw.get("version")
        if version not in READ_VERSIONS:
            raise BundleError(
                f"{PROGRAM_FILE} version {version!r} is not one of {', '.join(map(str, READ_VERSIONS))}; "
                "recompile the model"
            )
        a = raw["arena"]
        arena = Arena(
            _nat(a["max_tokens"]), _nat(a["max_rows"]), _nat(a["max_seqs"]), _nat(a["alignment"]),
            tuple(ArenaSlot(_name(s[0]), _nat(s[1], 0), _nat(s[2], 0)) for s in a["slots"]), _nat(a["total_bytes"], 0),
            tuple(_name(z) for z in a.get("zeroed") or []),
        )  # fmt: skip
        if arena.total_bytes > MAX_ARENA_BYTES or any(s.offset + s.nbytes > arena.total_bytes for s in arena.slots):
            raise BundleError(f"{PROGRAM_FILE}: arena slots lie outside the arena")
        _check_zeroed(arena, version)
        launches = tuple(_unpack_launch(launch) for launch in raw["launches"])
        # absent in programs written before the prefill list: every step runs `launches`
        prefill = tuple(_unpack_launch(launch) for launch in raw.get("prefill_launches") or [])
        min_tokens = _nat(raw.get("prefill_min_tokens", 0), 0)
        if prefill and not 1 <= min_tokens <= arena.max_tokens:
            raise BundleError(f"{PROGRAM_FILE}: prefill_min_tokens {min_tokens} is outside 1..{arena.max_tokens}")
        # absent in programs written before the one-token list: such steps run `launches`
        single = tuple(_unpack_launch(launch) for launch in raw.get("single_launches") or [])
        # absent in programs written before the batch list: such steps run `launches`
        batch = tuple(_unpack_launch(launch) for launch in raw.get("batch_launches") or [])
        batch_min = _nat(raw.get("batch_min_tokens", 0), 0)
        if batch and not 2 <= batch_min <= arena.max_tokens:
            raise BundleError(f"{PROGRAM_FILE}: batch_min_tokens {batch_min} is outside 2..{arena.max_tokens}")
        entry = raw["entry"]
        if entry is not None:
            entry = _name(entry)
        weights = {_name(k): _name(v) for k, v in (raw.get("weights") or {}).items()}
        return StepProgram(
            _name(raw["target"]),
            arena,
            entry,
            launches,
            prefill,
            min_tokens if prefill else 0,
            single,
            weights,
            raw["version"],
            dict(raw.get("extra") or {}),
            batch,
            batch_min if batch else 0,
        )
    except BundleError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, msgpack.UnpackException) as e:
        raise BundleError(f"{PROGRAM_FILE} is malformed: {str(e)[:200]}") from None


def _check_zeroed(arena: Arena, version: int) -> None:
    """The slots to zero: only in a version 2 program, each a slot of the arena of at most
    MAX_ZEROED_BYTES, once."""
    if arena.zeroed and version < ZEROED_VERSION:
        raise BundleError(f"{PROGRAM_FILE}: a version {version} program zeroes no slots")
    names = {s.buffer for s in arena.slots}
    unknown = [z for z in arena.zeroed if z not in names]
    if unknown:
        raise BundleError(f"{PROGRAM_FILE}: zeroed slot {unknown[0][:40]!r} is not an arena slot")
    big = [s.buffer for s in arena.slots if s.buffer in arena.zeroed and s.nbytes > MAX_ZEROED_BYTES]
    if big:
        raise BundleError(f"{PROGRAM_FILE}: zeroed slot {big[0][:40]!r} is over {MAX_ZEROED_BYTES} bytes")
    if len(set(arena.zeroed)) != len(arena.zeroed):
        raise BundleError(f"{PROGRAM_FILE}: a zeroed slot is listed twice")


def _nat(v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < (1 << 62):
        raise ValueError(f"{v!r} is not an integer >= {lo}")
    return v


def _name(v, empty: bool = False) -> str:
    if not isinstance(v, str) or len(v) > 256 or (not v and not empty):
        raise ValueError(f"{str(v)[:40]!r} is not a name")
    return v


# -- device sampling: the per-row parameter block of the sampling kernel --------------------------
# One row of SAMPLE_WORDS int32 words per logit row, floats stored as their bit patterns. The
# compiler renders the word indices into the kernel and the runtime writes the rows from this
# one table; SAMPLE_FLAG_* are bits of the "flags" word.
SAMPLE_WORDS: tuple[str, ...] = (
    "flags",  # SAMPLE_FLAG_* bits; a row without SAMPLE_FLAG_DEVICE is left to the host
    "top_k",  # <= 0 or >= vocab: off
    "pen_start",  # the row's penalty list: (token, f32 count) pairs [pen_start, pen_start + pen_count)
    "pen_count",
    "seed_lo",  # the request's 64-bit seed
    "seed_hi",
    "step",  # tokens the request has drawn so far: the draw is a function of (seed, step)
    "inv_temp",  # f32: float32(1 / temperature)
    "top_p",  # f32, >= 1: off
    "min_p",  # f32, <= 0: off
    "repetition",  # f32 repetition penalty (1: off)
    "presence",  # f32
    "frequency",  # f32
)
SAMPLE_FLAG_DEVICE = 1  # the kernel samples this row
SAMPLE_FLAG_GREEDY = 2  # argmax, ties to the lowest id
SAMPLE_FLAG_LOGPROB = 4  # also write the chosen token's log-probability
# the row's last penalty pair is the token it follows, its token word copied in on the device from
# the ids of the step before (not yet read): that token counts once more (a step queued ahead)
SAMPLE_FLAG_FED = 8
# StepProgram.extra["sample"]["out"] of a kernel that writes a step's R token ids (-1: none),
# then their R logprobs' bits, then R ids a next step may be fed on the device (0 for none), each
# an int32 array; a bundle without it wrote (token, logprob) pairs
SAMPLE_OUT_PLANAR = "ids, logprobs, fed ids"
