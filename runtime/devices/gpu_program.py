"""The GPU step program, bound once and replayed per step (docs/design.md: the step program).

`StepRunner` takes a target's launch list (artifacts/program.py) and binds it at load: the
activation arena is allocated once (the slots the program names as zeroed set to zero then),
every launch gets its parameter buffer with the arena, weight, batch-array and KV pointers
written in, and the batch arrays get one pinned host staging buffer with a device twin at
fixed offsets. A step then writes the batch into the
pinned staging, makes one async copy, runs the launch list (a graph captured once per
decode batch size, replayed; other steps launch the bound list directly), copies the
logits back into pinned memory and synchronizes the one stream once. A program with a
prefill list (tensor-core matmuls) has it bound as well, sharing the bindings of the
launches both lists hold; a step of at least prefill_min_tokens tokens runs it instead. So does
a one-token list (matmul blocks of one token): a step of exactly one token runs it; and a batch
list (matmul blocks of many tokens): a step of batch_min_tokens up to prefill_min_tokens runs it.

With a sampling kernel in the bundle (program.extra["sample"]) a step can also sample on the
device (`run_sampled`): the rows' parameters and penalty lists sit in the same staging, ahead
of the batch arrays at fixed offsets, and travel in the step's one copy in; the kernel is the
last launch of the step (inside the decode graph, captured apart from the forward-only graph
of `run`) and draws one token per row, so only token ids and logprobs come back, plus the
logits of the rows the host samples (grammar masks, logit_bias, top logprobs).

Block tables are staged at the program's full width (max context / block size, padded with
-1), so a graph captured for a batch size stays valid as contexts grow.
"""

import ctypes
import struct
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfc.artifacts.program import (
    LIST_NAMES,
    SAMPLE_OUT_PLANAR,
    SAMPLE_FLAG_DEVICE,
    SAMPLE_FLAG_FED,
    SAMPLE_FLAG_GREEDY,
    SAMPLE_FLAG_LOGPROB,
    SAMPLE_WORDS,
    ArgKind,
    ArgSlot,
    Launch,
    StepProgram,
)
from rfc.artifacts.targets import KernelArg
from rfc.runtime.core.step import StepBatch
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.gpu_driver import Driver
from rfc.runtime.core.device import SampledRows, StepRefused
from rfc.runtime.sampling.sampler import SamplingParams

_PACK = {8: "<Q", 4: "<i"}
# The scalars a step counts, which launch grids and scalar argument slots may name (a STEP_ARGS
# i64 name each: artifacts/program.py)
STEP_SCALARS = ("n_tokens", "n_rows", "n_seqs", "table_width", "block_size", "k_type", "v_type")
# Batch arrays in the staging buffer, in order: (name, length in the program's maxima)
# (block tables last: a step copies the staging only up to its sequences' table rows; with
# device sampling the penalty pairs and row parameters come first, the pairs filled from their
# region's end, so a step's copy starts at its first pair: one contiguous range either way)
_STAGED = (
    "tokens",
    "positions",
    "slots",
    "seq_of_token",
    "seq_start",
    "context_lens",
    "logit_rows",
    "state_slots",
    "block_tables",
)
# Penalty entries staged per logit row (a bind-time bound: pinned and device bytes are
# 12 * max_rows * this, 1.5 MiB for 512 rows; _MAX_PEN_CAPACITY caps the total). The default window (penalty_last_n =
# 64) always fits; a row whose window holds more distinct tokens is sampled on the host.
PEN_PER_ROW = 256


@dataclass
class BoundLaunch:
    """A launch with its parameter buffer filled in, but for the scalars a step counts."""

    fn: Any
    threads: int
    grid: list  # [(count: int | scalar name, tile)]
    buffer: ctypes.Array
    params: ctypes.Array
    scalars: list  # [(offset, size, scalar name)]
    state_offsets: list = dataclasses.field(default_factory=list)  # where the state pool's base goes (set_state)

    def enqueue(self, driver: Driver, scalars: dict[str, int], stream: Any, overlap: bool = False) -> bool:
        """Writes this step's scalars and launches on `stream`, overlapping the kernel before
        it where `overlap` (compiler/codegen/gpu_overlap.py); False where there was nothing to
        do and no launch (a grid of no blocks, e.g. no logit rows)."""
        for offset, nbytes, name in self.scalars:
            struct.pack_into(_PACK[nbytes], self.buffer, offset, scalars[name])
        grid = [-(-(scalars[c] if isinstance(c, str) else c) // t) for c, t in self.grid]
        if min(grid) <= 0:
            return False
        driver.launch_on(self.fn, (*grid, 1, 1, 1)[:3], (self.threads, 1, 1), self.params, stream, overlap)
        return True


def parameter_buffer(layout: tuple[KernelArg, ...]) -> tuple[ctypes.Array, ctypes.Array]:
    """A kernel's parameter buffer (its arguments at the code object's offsets) and the array
    of pointers into it that a launch takes."""
    size = max((offset + nbytes for _name, nbytes, offset in layout), default=0)
    buffer = ctypes.create_string_buffer(max(8, (size + 7) // 8 * 8))
    base = ctypes.addressof(buffer)
    params = (ctypes.c_void_p * max(1, len(layout)))(*[base + offset for _name, _nbytes, offset in layout])
    return buffer, params


def bind_launch(
    launch: Launch, layout: tuple[KernelArg, ...] | None, fn: Any, pointer: Callable[[ArgSlot], int]
) -> BoundLaunch:
    """One launch of a program bound: `layout` is its kernel's (the manifest's kernel_args, as
    the code object lays them out), `pointer` the device address of a pointer slot. Constant
    scalars are written in now, the step's (n_tokens, ...) by BoundLaunch.enqueue."""
    if layout is None or len(layout) != len(launch.args):
        raise DeviceError(
            f"step program: kernel {launch.kernel} takes {len(layout or [])} arguments, the launch "
            f"passes {len(launch.args)}"
        )
    for g in launch.grid:
        if isinstance(g.count, str) and g.count not in STEP_SCALARS:
            raise DeviceError(f"step program: kernel {launch.kernel}'s grid counts {g.count!r}, not a step scalar")
    buffer, params = parameter_buffer(layout)
    scalars, state_offsets = [], []
    for slot, (name, nbytes, offset) in zip(launch.args, layout):
        if slot.size != nbytes:
            raise DeviceError(
                f"step program: kernel {launch.kernel} argument {name} is {nbytes} bytes, the launch passes {slot.size}"
            )
        if slot.kind is ArgKind.SCALAR and slot.ref:
            if slot.ref not in STEP_SCALARS:
                raise DeviceError(
                    f"step program: kernel {launch.kernel} argument {name} counts {slot.ref!r}, not a step scalar"
                )
            scalars.append((offset, nbytes, slot.ref))
        elif slot.kind is ArgKind.STATE:  # the pool comes after binding (GpuDevice.alloc_state)
            state_offsets.append(offset)
        else:
            value = slot.value if slot.kind is ArgKind.SCALAR else pointer(slot)
            struct.pack_into(_PACK[nbytes], buffer, offset, value)
    return BoundLaunch(
        fn, launch.threads, [(g.count, g.tile) for g in launch.grid], buffer, params, scalars, state_offsets
    )


class StepRunner:
    """One bound step program over a driver; see the module doc."""

    def __init__(
        self,
        driver: Driver,
        program: StepProgram,
        kernel_args: dict,
        functions: dict[str, Any],
        weight_ptr,
        kv_ptr,
        vocab: int,
        n_embd: int,
        logits: str,
        hidden: str,
        block_size: int,
        table_width: int,
        max_graphs: int = 64,
        sample: "tuple[Any, dict] | None" = None,
        pen_per_row: int = PEN_PER_ROW,
        kv_types: tuple[int, int] = (0, 0),
        scores: tuple[str, int] | None = None,  # a reranker's classifier output: (buffer, labels)
    ):
        self._driver = driver
        self.program = program
        a = program.arena
        self.max_tokens, self.max_rows, self.max_seqs = a.max_tokens, a.max_rows, a.max_seqs
        self.block_size, self.table_width = block_size, table_width
        self.kv_types = kv_types  # the k_type / v_type scalars: how the cache stores K and V (CacheType.code)
        self._vocab, self._n_embd = vocab, n_embd
        self._owned: list[int] = []
        self.arena = self._alloc(max(1, a.total_bytes))
        for name in a.zeroed:  # counts kernels leave at zero (the program's checked slots): once, now
            slot = a.slot(name)
            driver.copy_to_device(self.arena + slot.offset, np.zeros(slot.nbytes, np.uint8))
        # an encoder's plan has no logits ("": runtime/core/device.py require_logits refuses the step)
        self._out = {**({logits: vocab} if logits else {}), hidden: n_embd, **dict([scores] if scores else [])}
        self._out_offset = {name: a.slot(name).offset for name in self._out}
        self.stream = driver.stream_create()
        self._logits = logits
        # the sampling kernel (fn, the program's extra["sample"]), when the bundle has one
        self.sampling = DeviceSampling(self, sample[0], kernel_args, sample[1], pen_per_row) if sample else None
        self._stage_layout()
        out_bytes = max(self._out.values()) * 4 * self.max_rows
        self._host_out = driver.malloc_host(out_bytes)
        self._host_in = driver.malloc_host(self.stage_bytes)
        self._dev_in = self._alloc(self.stage_bytes)
        self._views = {n: _view(self._host_in + off, length) for n, (off, length) in self.stage.items()}
        bound: dict = {}  # a launch both lists hold is bound once

        def bind(launch: Launch) -> BoundLaunch:
            if launch not in bound:
                pointer = lambda slot: self._pointer(slot, weight_ptr, kv_ptr)  # noqa: E731
                bound[launch] = bind_launch(launch, kernel_args.get(launch.kernel), functions[launch.kernel], pointer)
            return bound[launch]

        # the program's kernels wait for the kernel before them (compiler/codegen/gpu_overlap.py):
        # in the lists it names, every launch of a step but its first may overlap the one before it
        self._overlapped = program.overlapped_lists() if driver.overlaps else frozenset()
        # each list of the program (by its field name, LIST_NAMES), bound
        self._lists = {name: [bind(launch) for launch in getattr(program, name)] for name in LIST_NAMES}
        self.has_state = any(b.state_offsets for b in bound.values())
        self.state_slots = 0
        self.prefill_min_tokens = program.prefill_min_tokens if program.prefill_launches else None
        self.batch_min_tokens = program.batch_min_tokens if program.batch_launches else None
        if self.sampling is not None:
            self.sampling.bind()
        # sampled steps launched whose results were not read, oldest first (launch_sampled)
        self._queued: list[PendingStep] = []
        self._staged = driver.event_create() if self.sampling is not None and self.sampling.runs_ahead else None
        # (n_tokens, n_rows, sampled) -> graph: `run` must not replay the sampling kernel
        self._graphs: dict[tuple[int, int, bool], Any] = {}
        self._max_graphs = max_graphs

    def set_state(self, pool: int, slots: int) -> None:
        """The recurrent-state pool's device address, written into every launch that takes it
        (before any graph is captured: alloc_state comes right after the device is made)."""
        for b in {id(b): b for bound in self._lists.values() for b in bound}.values():
            for offset in b.state_offsets:
                struct.pack_into("<Q", b.buffer, offset, pool)
        self.state_slots = slots
        for graph in self._graphs.values():
            self._driver.graph_destroy(graph)
        self._graphs.clear()

    # -- binding ----------------------------------------------------------------------------
    def _alloc(self, nbytes: int) -> int:
        ptr = self._driver.malloc(nbytes)
        self._owned.append(ptr)
        return ptr

    def _stage_layout(self) -> None:
        lengths = {
            "seq_start": self.max_seqs + 1,
            "context_lens": self.max_seqs,
            "state_slots": self.max_seqs,
            "block_tables": self.max_seqs * self.table_width,
            "logit_rows": self.max_rows,
        }
        regions = [(name, lengths.get(name, self.max_tokens)) for name in _STAGED]
        if self.sampling is not None:
            regions = [*self.sampling.regions(), *regions]
        self.stage: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, n in regions:
            self.stage[name] = (offset, n)
            offset += -(-n * 4 // 256) * 256
        self.stage_bytes = offset

    def _pointer(self, slot, weight_ptr, kv_ptr) -> int:
        if slot.kind is ArgKind.ARENA:
            return self.arena + self.program.arena.slot(slot.ref).offset
        if slot.kind is ArgKind.WEIGHT:
            return weight_ptr(self.program.weights.get(slot.ref, slot.ref))
        if slot.kind is ArgKind.BATCH:
            if slot.ref not in self.stage:
                raise DeviceError(f"step program: unknown batch array {slot.ref!r}")
            return self._dev_in + self.stage[slot.ref][0]
        if slot.kind is ArgKind.KV:
            return kv_ptr(slot.ref, slot.value)
        raise DeviceError(f"step program: unknown argument kind {slot.kind}")

    # -- stepping ---------------------------------------------------------------------------
    def _write_batch(self, batch: StepBatch) -> dict[str, int]:
        T, R, S = batch.num_tokens, batch.num_rows, len(batch.context_lens)
        width = batch.block_tables.shape[1]
        if T > self.max_tokens or R > self.max_rows or S > self.max_seqs or width > self.table_width:
            raise DeviceError(
                f"step of {T} tokens, {R} rows, {S} sequences, table width {width} exceeds the program's "
                f"{self.max_tokens}/{self.max_rows}/{self.max_seqs}/{self.table_width}"
            )
        if batch.block_size != self.block_size:
            raise DeviceError(f"batch block size {batch.block_size}, the KV cache has {self.block_size}")
        v = self._views
        for name in ("tokens", "positions", "slots", "seq_of_token"):
            v[name][:T] = getattr(batch, name)
        v["seq_start"][: S + 1] = batch.seq_start
        v["context_lens"][:S] = batch.context_lens
        if self.has_state:  # every sequence of a plan with state needs its slot: the kernels keep it there
            if (
                len(batch.state_slots) < S
                or (batch.state_slots[:S] < 0).any()
                or (batch.state_slots[:S] >= self.state_slots).any()
            ):
                raise DeviceError(
                    "a recurrent layer needs each sequence's state slot, and the step names none for some"
                )
            v["state_slots"][:S] = batch.state_slots[:S]
        tables = v["block_tables"][: S * self.table_width].reshape(S, self.table_width)
        tables[:, :width] = batch.block_tables
        tables[:, width:] = -1
        v["logit_rows"][:R] = batch.logit_rows
        return {
            "n_tokens": T,
            "n_rows": R,
            "n_seqs": S,
            "table_width": self.table_width,
            "block_size": self.block_size,
            "k_type": self.kv_types[0],
            "v_type": self.kv_types[1],
        }

    def list_name(self, n_tokens: int) -> str:
        """The list (its StepProgram field) a step of n_tokens runs: the prefill list from
        prefill_min_tokens on, the one-token list for one token, the batch list from
        batch_min_tokens on, else the decode list."""
        if self.prefill_min_tokens is not None and n_tokens >= self.prefill_min_tokens:
            return "prefill_launches"
        if n_tokens == 1 and self._lists["single_launches"]:
            return "single_launches"
        if self.batch_min_tokens is not None and n_tokens >= self.batch_min_tokens:
            return "batch_launches"
        return "launches"

    def launch_list(self, n_tokens: int) -> list[BoundLaunch]:
        """The bound list a step of n_tokens runs (list_name)."""
        return self._lists[self.list_name(n_tokens)]

    def launches_for(self, n_tokens: int) -> tuple[Launch, ...]:
        """The program's launches of the list a step of n_tokens runs (launch_list's, unbound)."""
        return getattr(self.program, self.list_name(n_tokens))

    def _launch_all(self, scalars: dict[str, int], sampled: bool) -> None:
        name = self.list_name(scalars["n_tokens"])
        bound, overlap = self._lists[name], name in self._overlapped
        launched = False  # the step's first kernel follows the copy in, never overlapping it
        for b in [*bound, self.sampling.bound] if sampled else bound:
            launched = b.enqueue(self._driver, scalars, self.stream, overlap and launched) or launched

    def _graph(self, scalars: dict[str, int], sampled: bool) -> Any:
        key = (scalars["n_tokens"], scalars["n_rows"], sampled)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= self._max_graphs:
                old_key = next(iter(self._graphs))
                self._driver.graph_destroy(self._graphs.pop(old_key))
            self._driver.capture_begin(self.stream)
            try:
                self._launch_all(scalars, sampled)
            finally:
                graph = self._driver.capture_end(self.stream)
            self._graphs[key] = graph
        return graph

    def _forward(
        self,
        batch: StepBatch,
        first: int,
        sampled: bool = False,
        copies: tuple[tuple[int, int, int], ...] = (),
        mark_staged: bool = False,
    ) -> dict[str, int]:
        """Stages the batch, copies the staging in from byte `first` (what is staged ahead of
        the batch arrays is the caller's), makes the device-to-device `copies` ((destination,
        source, bytes): a step's fed tokens) and queues the step's launches, with the sampling
        kernel last when `sampled`; returns the step's scalars."""
        scalars = self._write_batch(batch)
        d = self._driver
        end = self.stage["block_tables"][0] + len(batch.context_lens) * self.table_width * 4
        d.copy_to_device_async(self._dev_in + first, self._host_in + first, end - first, self.stream)
        for dst, src, nbytes in copies:
            d.copy_on_device_async(dst, src, nbytes, self.stream)
        if mark_staged and self._staged is not None:
            # the staging may be written again once this point is passed (launch_sampled's steps;
            # a run() step waits for itself, and no step is queued behind it)
            d.event_record(self._staged, self.stream)
        # decode steps (one token per row) repeat shapes: those are the graph buckets (each
        # captures the list its token count picks)
        if scalars["n_tokens"] == scalars["n_rows"]:
            d.graph_launch(self._graph(scalars, sampled), self.stream)
        else:
            self._launch_all(scalars, sampled)
        return scalars

    def run(self, batch: StepBatch, output: str) -> np.ndarray:
        """Runs one step; returns float32[R, width] of `output` (logits or hidden)."""
        self._check_idle()
        scalars = self._forward(batch, self.stage[_STAGED[0]][0])
        d = self._driver
        R, width = scalars["n_rows"], self._out[output]
        nbytes = R * width * 4
        if nbytes:
            d.copy_to_host_async(self._host_out, self.arena + self._out_offset[output], nbytes, self.stream)
        d.stream_synchronize(self.stream)
        return _view(self._host_out, R * width, np.float32).reshape(R, width).copy()

    def run_sampled(self, batch: StepBatch, rows: list) -> SampledRows:
        """Runs one step and samples its rows on the device where `rows` allows (see
        Executor.forward_sampled); only token ids, and the logits of host rows, come back."""
        self._check_idle()
        return self.launch_sampled(batch, rows).result()

    def launch_sampled(self, batch: StepBatch, rows: list, feed: tuple[tuple[int, int], ...] = ()) -> "PendingStep":
        """Queues a step sampled as run_sampled samples it and returns at once; its result()
        waits for it. With `feed` ((token index, row) pairs) the step is queued behind the last
        sampled step, which may still be running: each of those tokens is that step's token of
        that row, copied on the device (its staged value is ignored), and the row of the
        sequence it continues counts that step's draw as made. One step may be queued behind
        another that has not been read; it must take its tokens so and sample every row on the
        device (docs/design.md: decode queued ahead)."""
        if self.sampling is None:
            raise DeviceError("this bundle's step program has no sampling kernel: recompile the model")
        R = batch.num_rows
        if len(rows) != R:
            raise DeviceError(f"{len(rows)} sampling rows for {R} logit rows")
        s = self.sampling
        row_of = {int(t): r for r, t in enumerate(batch.logit_rows)} if feed else {}
        if feed or self._queued:
            s.check_feed(row_of, rows, feed, len(self._queued))
            if self._queued:  # the step before still reads the staging it copies in: wait for that copy
                self._driver.event_synchronize(self._staged)
        # before the step: it may raise
        host_rows, first, fed_pairs = s.stage(rows, self._vocab, {row_of[t]: src for t, src in feed})
        if self._queued and host_rows:
            raise StepRefused(
                f"rows {host_rows} of a step queued ahead would be sampled on the host (penalty lists over "
                f"{s.per_row} entries, or over the step's {s.capacity})"
            )
        copies: list[tuple[int, int, int]] = []
        if feed:  # each fed token, and each fed penalty pair's token word, from the last step's ids
            tokens, ids = self._dev_in + self.stage["tokens"][0], s.fed_ids()
            pairs = self._dev_in + self.stage["sample_pen"][0]
            copies += [(tokens + 4 * token, ids + 4 * row, 4 * n) for token, row, n in paired_runs(feed)]
            copies += [(pairs + 8 * pair, ids + 4 * row, 4) for pair, row in fed_pairs]
        if self._queued:  # the step before ends where this one starts: its ids can be waited for
            self._queued[-1].mark()
        # a step whose rows all go to the host needs no kernel, except inside a graph: there
        # it finds no row flagged for the device and returns
        sampled = len(host_rows) < R or batch.num_tokens == R
        self._forward(batch, first, sampled=sampled, copies=tuple(copies), mark_staged=True)
        pending = s.copy_out(R, host_rows, self.arena + self._out_offset[self._logits], self._host_out)
        self._queued.append(pending)
        return pending

    def _check_idle(self) -> None:
        if self._queued:
            raise DeviceError("a step is queued whose result was not read: read it before running another")

    def close(self) -> None:
        for g in self._graphs.values():
            self._driver.graph_destroy(g)
        self._graphs.clear()
        if self._staged is not None:
            self._driver.event_destroy(self._staged)
            self._staged = None
        if self.sampling is not None:
            self.sampling.close()
        self._driver.free_host(self._host_in)
        self._driver.free_host(self._host_out)
        for p in self._owned:
            self._driver.free(p)
        self._owned.clear()


def _view(ptr: int, length: int, dtype=np.int32) -> np.ndarray:
    """A numpy array over `length` elements of host memory at `ptr` (pinned staging)."""
    itemsize = np.dtype(dtype).itemsize
    buf = (ctypes.c_char * (length * itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=length)


# -- sampling on the device ------------------------------------------------------------------------
_WORD = {name: i for i, name in enumerate(SAMPLE_WORDS)}


def _i32(value: int) -> int:
    """The low 32 bits of `value` as a signed int32."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def write_sample_row(
    words: np.ndarray,
    params: SamplingParams,
    vocab: int,
    seed: int,
    step: int,
    pen_start: int,
    pen_count: int,
    logprob: bool,
) -> None:
    """One row of the sampling kernel's parameters (artifacts/program.py SAMPLE_WORDS) into
    `words` (int32[len(SAMPLE_WORDS)]; its float words written through a float32 view).
    `params` were validated when the request came in; the kernel still clamps what it reads."""
    greedy = params.is_greedy
    w = _WORD
    words[w["flags"]] = (
        SAMPLE_FLAG_DEVICE | (SAMPLE_FLAG_GREEDY if greedy else 0) | (SAMPLE_FLAG_LOGPROB if logprob else 0)
    )
    words[w["top_k"]] = params.top_k if 0 < params.top_k < vocab else 0
    words[w["pen_start"]] = pen_start
    words[w["pen_count"]] = pen_count
    words[w["seed_lo"]] = _i32(seed)
    words[w["seed_hi"]] = _i32(seed >> 32)
    words[w["step"]] = _i32(step)
    f = words.view(np.float32)
    # as sampler.py scales: float32(1 / t), and not at all at t == 1
    f[w["inv_temp"]] = 1.0 if greedy or params.temperature == 1 else 1 / params.temperature
    f[w["top_p"]] = params.top_p
    f[w["min_p"]] = params.min_p
    f[w["repetition"]] = params.repetition_penalty
    f[w["presence"]] = params.presence_penalty
    f[w["frequency"]] = params.frequency_penalty


_SAMPLE_ARGS = ("out", "logits", "params", "pen", "pen_raw", "pen_capacity", "n_rows")
_MAX_PEN_CAPACITY = 1 << 22  # staged pairs: the kernel's int32 word indices (2 * pair) stay in range


def _is_count(value: object, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= most


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Ascending row indices as [start, stop) runs of consecutive rows."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


class DeviceSampling:
    """The sampling kernel bound as the last launch of a runner's step. Its inputs live in the
    runner's staging, ahead of the batch arrays: "sample_pen", (token, f32 count) pairs for
    max_rows * pen_per_row entries (capped), filled from the region's end so a step's lists end where
    "sample_params" (SAMPLE_WORDS per row) begins. Both are written through views made at
    bind time and reach the device in the step's one copy; the kernel's pointers never move,
    so the graph captured with it stays valid. Token ids and logprobs come back, and the
    logits of host rows only.

    The kernel writes the step's token ids as one int32 array, then the logprobs' bits (a bundle
    compiled before that wrote (token, logprob) pairs: it runs, and no step is queued ahead
    on it). The next step's inputs can then be copied from the ids on the device, so a step can
    be queued before the one before it is read (StepRunner.launch_sampled); the ids come back
    into two pinned buffers in turn, so a step's copy out never overwrites the ids the host is
    reading of the step before."""

    def __init__(self, runner: StepRunner, fn: Any, kernel_args: dict, extra: dict, pen_per_row: int):
        name, words = extra.get("kernel"), extra.get("words")
        layout = kernel_args.get(name)
        if words != len(SAMPLE_WORDS) or layout is None or [a[0] for a in layout] != list(_SAMPLE_ARGS):
            raise DeviceError(
                f"the bundle's sampling kernel {name!r} does not take this runtime's row parameters: "
                f"recompile the model"
            )
        self.threads = extra.get("threads")
        if not _is_count(self.threads, 1024):
            raise DeviceError(f"the bundle's sampling kernel has {self.threads!r} threads (at most 1024)")
        if not _is_count(pen_per_row, _MAX_PEN_CAPACITY):
            raise DeviceError(f"{pen_per_row!r} penalty entries per row: 1 to {_MAX_PEN_CAPACITY}")
        # the ids one array, then the logprobs (compiler/codegen/gpu_sample.py); else pairs
        self.runs_ahead = extra.get("out") == SAMPLE_OUT_PLANAR
        # every row's budget, unless the program's rows are so many that the total is capped:
        # then a row that finds the step's pairs taken is sampled on the host
        self.capacity = min(runner.max_rows * pen_per_row, _MAX_PEN_CAPACITY)
        self.per_row = pen_per_row
        self._runner, self._driver = runner, runner._driver
        self._fn, self._layout = fn, layout
        self._last: tuple[int, frozenset[int]] | None = None  # the last sampled step's rows and host rows

    def regions(self) -> list[tuple[str, int]]:
        """The staging regions ahead of the batch arrays: (name, int32 words)."""
        return [("sample_pen", 2 * self.capacity), ("sample_params", self._runner.max_rows * len(SAMPLE_WORDS))]

    def bind(self) -> None:
        """Views over the runner's staging, the output buffers, the kernel's parameters."""
        r, d = self._runner, self._driver
        R, C = r.max_rows, self.capacity
        self._params = r._views["sample_params"].reshape(R, len(SAMPLE_WORDS))
        pairs = r._views["sample_pen"].reshape(C, 2)
        self._pen_tokens, self._pen_counts = pairs[:, 0], pairs.view(np.float32)[:, 1]
        self._pen_off = r.stage["sample_pen"][0]
        # (pinned buffer, its int32 view, an event marking the end of the step it holds), in turn
        self._outs = []
        for _ in range(2 if self.runs_ahead else 1):
            host = d.malloc_host(8 * R)
            self._outs.append((host, _view(host, 2 * R), d.event_create() if self.runs_ahead else None))
        self._turn = 0
        self._dev_out = r._alloc((12 if self.runs_ahead else 8) * R)
        pointers = {
            "out": self._dev_out,
            "logits": r.arena + r._out_offset[r._logits],
            "params": r._dev_in + r.stage["sample_params"][0],
            "pen": r._dev_in + self._pen_off,
            "pen_raw": r._alloc(4 * C),
            "pen_capacity": C,
        }
        buffer, params = parameter_buffer(self._layout)
        scalars = []
        for name, nbytes, offset in self._layout:
            if name == "n_rows":
                scalars.append((offset, nbytes, "n_rows"))
            else:
                struct.pack_into(_PACK[nbytes], buffer, offset, pointers[name])
        self.bound = BoundLaunch(self._fn, self.threads, [("n_rows", 1)], buffer, params, scalars)

    def fed_ids(self) -> int:
        """The device address of the last sampled step's ids to feed a next step (runs_ahead)."""
        assert self._last is not None
        return self._dev_out + 8 * self._last[0]

    def check_feed(self, row_of: dict[int, int], rows: list, feed: tuple[tuple[int, int], ...], queued: int) -> None:
        """A step fed from the last sampled step, or queued behind one not yet read: what
        StepRunner.launch_sampled allows (DeviceError otherwise; `row_of`: the step's logit row
        of each token that has one)."""
        if not self.runs_ahead:
            raise DeviceError("this bundle's sampling kernel cannot feed the next step: recompile the model")
        if queued > 1 or (queued and not feed):
            raise DeviceError("a step queued behind one not yet read must take its tokens from it, one step ahead")
        if queued and any(row is None for row in rows):
            raise DeviceError("a step queued behind one not yet read samples every row on the device")
        last_rows, last_host = self._last or (0, frozenset())
        tokens = [t for t, _ in feed]
        if len(set(tokens)) != len(tokens):
            raise DeviceError("a token fed twice")
        for token, row in feed:
            if token in row_of and row in last_host:  # the host samples that row: its token comes later
                raise StepRefused(f"token {token} would be fed from row {row}, which the host samples")
            if token not in row_of or not 0 <= row < last_rows:
                raise DeviceError(
                    f"token {token} fed from row {row}: it must be a logit row's token, fed from a row the "
                    f"last step ({last_rows} rows) sampled on the device"
                )

    def stage(
        self, rows: list, vocab: int, fed: dict[int, int] | None = None
    ) -> tuple[list[int], int, list[tuple[int, int]]]:
        """Writes the rows' parameters and penalty lists; returns the rows the host samples (a
        None row, or one whose list holds more than pen_per_row entries or no longer fits) and
        the staging byte the step's copy starts at (its first penalty pair). A row of `fed` (row
        -> the row of the step before that samples the token it follows, not yet read) counts
        that draw as made, and its penalty list ends with that token's pair, for the device to
        fill in: returned as (pair index, row of the step before)."""
        if len(rows) > self._params.shape[0]:
            raise DeviceError(f"{len(rows)} sampling rows, the program has {self._params.shape[0]}")
        fed = fed or {}
        host_rows: list[int] = []
        fed_pairs: list[tuple[int, int]] = []
        flags, end = _WORD["flags"], self.capacity
        for r, row in enumerate(rows):
            ahead = r in fed
            counts = None if row is None else (row[0].penalty_counts_ahead() if ahead else row[0].penalty_counts())
            n = len(counts) + ahead if counts is not None else 0
            if row is None or n > self.per_row or n > end:
                self._params[r, flags] = 0
                host_rows.append(r)
                continue
            sampler, logprob = row
            start = end - n
            write_sample_row(
                self._params[r],
                sampler.params,
                vocab,
                sampler.device_seed,
                sampler.drawn + ahead,
                start,
                n,
                bool(logprob),
            )
            if n:
                # the window is the Sampler's dict: one array of each from it, into the views
                listed = n - ahead if counts is not None else 0
                self._pen_tokens[start : start + listed] = np.fromiter(counts.keys(), dtype=np.int32, count=listed)
                self._pen_counts[start : start + listed] = np.fromiter(counts.values(), dtype=np.float32, count=listed)
                if ahead:  # the token it follows: counted once more, its id copied in on the device
                    self._pen_tokens[end - 1], self._pen_counts[end - 1] = 0, 1.0
                    self._params[r, flags] |= SAMPLE_FLAG_FED
                    fed_pairs.append((end - 1, fed[r]))
            end = start
        return host_rows, self._pen_off + 8 * end, fed_pairs

    def copy_out(self, n_rows: int, host_rows: list[int], logits_ptr: int, host_logits: int) -> "PendingStep":
        """After the step's launches: its token ids and logprobs (when a row was the device's)
        and each run of host rows' logits queued back; the step, to be read."""
        d, stream = self._driver, self._runner.stream
        row_bytes = self._runner._vocab * 4
        host, view, event = self._outs[self._turn]
        self._turn = (self._turn + 1) % len(self._outs)
        if len(host_rows) < n_rows:
            d.copy_to_host_async(host, self._dev_out, 8 * n_rows, stream)
        for start, stop in _runs(host_rows):
            d.copy_to_host_async(
                host_logits + start * row_bytes, logits_ptr + start * row_bytes, (stop - start) * row_bytes, stream
            )
        self._last = (n_rows, frozenset(host_rows))
        return PendingStep(self, n_rows, host_rows, host_logits, view, event)

    def close(self) -> None:
        for host, _view, event in self._outs:
            self._driver.free_host(host)
            if event is not None:
                self._driver.event_destroy(event)
        self._outs = []


class PendingStep:
    """A sampled step queued on the runner's stream (StepRunner.launch_sampled); result()
    waits for it and reads its tokens, once, in the order the steps were queued."""

    def __init__(self, sampling: DeviceSampling, n_rows: int, host_rows: list[int], host_logits: int, out, event):
        self._sampling, self._n_rows, self._host_rows = sampling, n_rows, host_rows
        self._host_logits, self._out, self._event = host_logits, out, event
        self._marked = False
        self._result: SampledRows | None = None

    def mark(self) -> None:
        """Marks the stream's end as this step's end: a step is about to be queued behind it,
        and result() then waits for this one alone."""
        self._sampling._driver.event_record(self._event, self._sampling._runner.stream)
        self._marked = True

    def result(self) -> SampledRows:
        if self._result is not None:
            return self._result
        runner = self._sampling._runner
        if not runner._queued or runner._queued[0] is not self:
            raise DeviceError("steps are read in the order they were queued")
        d = self._sampling._driver
        try:
            if self._marked:
                d.event_synchronize(self._event)
            else:
                d.stream_synchronize(runner.stream)
        finally:
            runner._queued.pop(0)
        R, vocab = self._n_rows, runner._vocab
        rows = _view(self._host_logits, R * vocab, np.float32).reshape(R, vocab) if self._host_rows else None
        if self._sampling.runs_ahead:  # the ids, then the logprobs
            tokens, logprobs = self._out[:R], self._out[R : 2 * R]
        else:  # (token, logprob) pairs
            pairs = self._out[: 2 * R].reshape(R, 2)
            tokens, logprobs = pairs[:, 0], pairs[:, 1]
        self._result = SampledRows(
            tokens=tokens.copy(),
            logprobs=logprobs.view(np.float32).copy(),
            logits={r: rows[r].copy() for r in self._host_rows},
        )
        return self._result


def paired_runs(pairs) -> list[tuple[int, int, int]]:
    """(a, b) index pairs as (first a, first b, count) runs in which both count up, by a: one
    copy a run (fed tokens from a step's ids; KV slots into others, GpuDevice.copy_kv)."""
    runs: list[list[int]] = []
    for a, b in sorted(pairs):
        if runs and runs[-1][0] + runs[-1][2] == a and runs[-1][1] + runs[-1][2] == b:
            runs[-1][2] += 1
        else:
            runs.append([a, b, 1])
    return [(a, b, n) for a, b, n in runs]
