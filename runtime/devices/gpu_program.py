"""The GPU step program, bound once and replayed per step (../shared/DESIGN.md §1).

`StepRunner` takes a target's launch list (artifacts/program.py) and binds it at load: the
activation arena is allocated once, every launch gets its parameter buffer with the arena,
weight, batch-array and KV pointers written in, and the batch arrays get one pinned host
staging buffer with a device twin at fixed offsets. A step then writes the batch into the
pinned staging, makes one async copy, runs the launch list (a graph captured once per
decode batch size, replayed; other steps launch the bound list directly), copies the
logits back into pinned memory and synchronizes the one stream once.

With a sampling kernel in the bundle (program.extra["sample"]) a step can also sample on the
device (`run_sampled`): the rows' parameters and penalty lists go in after the batch, the
kernel draws one token per row in place of the logits copy, and only the token ids come back,
plus the logits of the rows the host samples (grammar masks, logit_bias, top logprobs).

Block tables are staged at the program's full width (max context / block size, padded with
-1), so a graph captured for a batch size stays valid as contexts grow.
"""

import ctypes
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rfc.artifacts.program import (
    SAMPLE_FLAG_DEVICE, SAMPLE_FLAG_GREEDY, SAMPLE_FLAG_LOGPROB, SAMPLE_WORDS, ArgKind, StepProgram, unpack_program,
)
from rfc.runtime.batch import StepBatch
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.gpu import Driver, GpuDevice
from rfc.runtime.executor import SampledRows
from rfc.runtime.sampler import SamplingParams

_PACK = {8: "<Q", 4: "<i"}
# Batch arrays in the staging buffer, in order: (name, length in the program's maxima)
# (block tables last: a step copies the staging only up to its sequences' table rows)
_STAGED = ("tokens", "positions", "slots", "seq_of_token", "seq_start", "context_lens", "logit_rows", "block_tables")


class GraphDriver(Driver, Protocol):
    """What the step program needs beyond the per-op Driver; every call raises DeviceError."""

    def malloc_host(self, nbytes: int) -> int: ...  # pinned (page-locked) host memory

    def free_host(self, ptr: int) -> None: ...

    def stream_create(self) -> Any: ...

    def copy_to_device_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None: ...

    def copy_to_host_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None: ...

    def launch_on(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], params: ctypes.Array, stream: Any) -> None: ...

    def capture_begin(self, stream: Any) -> None: ...

    def capture_end(self, stream: Any) -> Any: ...  # an instantiated, launchable graph

    def graph_launch(self, graph: Any, stream: Any) -> None: ...

    def graph_destroy(self, graph: Any) -> None: ...

    def stream_synchronize(self, stream: Any) -> None: ...


@dataclass
class _Bound:
    fn: Any
    threads: int
    grid: list  # [(count: int | scalar name, tile)]
    buffer: ctypes.Array
    params: ctypes.Array
    scalars: list  # [(offset, size, scalar name)]


class StepRunner:
    """One bound step program over a driver; see the module doc."""

    def __init__(self, driver: GraphDriver, program: StepProgram, kernel_args: dict, functions: dict[str, Any],
                 weight_ptr, kv_ptr, vocab: int, n_embd: int, logits: str, hidden: str, block_size: int, table_width: int,
                 max_graphs: int = 64, sample: "tuple[Any, dict] | None" = None):
        self._driver = driver
        self.program = program
        a = program.arena
        self.max_tokens, self.max_rows, self.max_seqs = a.max_tokens, a.max_rows, a.max_seqs
        self.block_size, self.table_width = block_size, table_width
        self._vocab, self._n_embd = vocab, n_embd
        self._owned: list[int] = []
        self.arena = self._alloc(max(1, a.total_bytes))
        self._out = {logits: vocab, hidden: n_embd}
        self._out_offset = {name: a.slot(name).offset for name in self._out}
        self.stream = driver.stream_create()
        self._stage_layout()
        out_bytes = max(vocab, n_embd) * 4 * self.max_rows
        self._host_out = driver.malloc_host(out_bytes)
        self._host_in = driver.malloc_host(self.stage_bytes)
        self._dev_in = self._alloc(self.stage_bytes)
        self._views = {n: _view(self._host_in + off, length) for n, (off, length) in self.stage.items()}
        self._bound = [self._bind(launch, kernel_args, functions, weight_ptr, kv_ptr) for launch in program.launches]
        self._graphs: dict[tuple[int, int], Any] = {}
        self._max_graphs = max_graphs
        self._logits = logits
        # the sampling kernel (fn, the program's extra["sample"]), when the bundle has one
        self.sampling = DeviceSampling(self, sample[0], kernel_args, sample[1]) if sample else None

    # -- binding ----------------------------------------------------------------------------
    def _alloc(self, nbytes: int) -> int:
        ptr = self._driver.malloc(nbytes)
        self._owned.append(ptr)
        return ptr

    def _stage_layout(self) -> None:
        lengths = {"seq_start": self.max_seqs + 1, "context_lens": self.max_seqs,
                   "block_tables": self.max_seqs * self.table_width, "logit_rows": self.max_rows}
        self.stage: dict[str, tuple[int, int]] = {}
        offset = 0
        for name in _STAGED:
            n = lengths.get(name, self.max_tokens)
            self.stage[name] = (offset, n)
            offset += -(-n * 4 // 256) * 256
        self.stage_bytes = offset

    def _bind(self, launch, kernel_args: dict, functions: dict, weight_ptr, kv_ptr) -> _Bound:
        layout = kernel_args.get(launch.kernel)
        if layout is None or len(layout) != len(launch.args):
            raise DeviceError(f"step program: kernel {launch.kernel} takes {len(layout or [])} arguments, the launch passes {len(launch.args)}")
        size = max((o + s for _n, s, o in layout), default=0)
        buffer = ctypes.create_string_buffer(max(8, (size + 7) // 8 * 8))
        base = ctypes.addressof(buffer)
        params = (ctypes.c_void_p * max(1, len(layout)))(*[base + o for _n, _s, o in layout])
        scalars = []
        for slot, (name, nbytes, offset) in zip(launch.args, layout):
            if slot.size != nbytes:
                raise DeviceError(f"step program: kernel {launch.kernel} argument {name} is {nbytes} bytes, the launch passes {slot.size}")
            if slot.kind is ArgKind.SCALAR:
                if slot.ref:
                    scalars.append((offset, nbytes, slot.ref))
                else:
                    struct.pack_into(_PACK[nbytes], buffer, offset, slot.value)
                continue
            struct.pack_into(_PACK[nbytes], buffer, offset, self._pointer(slot, weight_ptr, kv_ptr))
        return _Bound(functions[launch.kernel], launch.threads, [(g.count, g.tile) for g in launch.grid], buffer, params, scalars)

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
            raise DeviceError(f"step of {T} tokens, {R} rows, {S} sequences, table width {width} exceeds the program's "
                              f"{self.max_tokens}/{self.max_rows}/{self.max_seqs}/{self.table_width}")
        if batch.block_size != self.block_size:
            raise DeviceError(f"batch block size {batch.block_size}, the KV cache has {self.block_size}")
        v = self._views
        for name in ("tokens", "positions", "slots", "seq_of_token"):
            v[name][:T] = getattr(batch, name)
        v["seq_start"][: S + 1] = batch.seq_start
        v["context_lens"][:S] = batch.context_lens
        tables = v["block_tables"][: S * self.table_width].reshape(S, self.table_width)
        tables[:, :width] = batch.block_tables
        tables[:, width:] = -1
        v["logit_rows"][:R] = batch.logit_rows
        return {"n_tokens": T, "n_rows": R, "n_seqs": S, "table_width": self.table_width, "block_size": self.block_size}

    def _launch_all(self, scalars: dict[str, int]) -> None:
        for b in self._bound:
            for offset, nbytes, name in b.scalars:
                struct.pack_into(_PACK[nbytes], b.buffer, offset, scalars[name])
            grid = [-(-(scalars[c] if isinstance(c, str) else c) // t) for c, t in b.grid]
            if min(grid) <= 0:
                continue
            self._driver.launch_on(b.fn, (*grid, 1, 1, 1)[:3], (b.threads, 1, 1), b.params, self.stream)

    def _graph(self, scalars: dict[str, int]) -> Any:
        key = (scalars["n_tokens"], scalars["n_rows"])
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= self._max_graphs:
                old_key = next(iter(self._graphs))
                self._driver.graph_destroy(self._graphs.pop(old_key))
            self._driver.capture_begin(self.stream)
            try:
                self._launch_all(scalars)
            finally:
                graph = self._driver.capture_end(self.stream)
            self._graphs[key] = graph
        return graph

    def _forward(self, batch: StepBatch) -> dict[str, int]:
        """Stages the batch and queues the step's launches; returns the step's scalars."""
        scalars = self._write_batch(batch)
        d = self._driver
        staged = self.stage["block_tables"][0] + len(batch.context_lens) * self.table_width * 4
        d.copy_to_device_async(self._dev_in, self._host_in, staged, self.stream)
        # decode steps (one token per row) repeat shapes: those are the graph buckets
        if scalars["n_tokens"] == scalars["n_rows"]:
            d.graph_launch(self._graph(scalars), self.stream)
        else:
            self._launch_all(scalars)
        return scalars

    def run(self, batch: StepBatch, output: str) -> np.ndarray:
        """Runs one step; returns float32[R, width] of `output` (logits or hidden)."""
        scalars = self._forward(batch)
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
        if self.sampling is None:
            raise DeviceError("this bundle's step program has no sampling kernel: recompile the model")
        R = batch.num_rows
        if len(rows) != R:
            raise DeviceError(f"{len(rows)} sampling rows for {R} logit rows")
        host_rows = self.sampling.stage(rows, self._vocab)  # before the step: it may raise
        self._forward(batch)
        return self.sampling.finish(R, host_rows, self.arena + self._out_offset[self._logits], self._host_out)

    def close(self) -> None:
        for g in self._graphs.values():
            self._driver.graph_destroy(g)
        self._graphs.clear()
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


class GpuStepDevice(GpuDevice):
    """A GpuDevice that runs whole steps through its bundle's step program (the engine's
    executor calls forward); the per-op `launch` stays for kernel tests."""

    def __init__(self, driver: GraphDriver, bundle, entry: dict, code, image: bytes, kv, num_blocks: int, block_size: int,
                 context_length: int | None = None):
        super().__init__(driver, bundle, entry, code, image, kv, num_blocks, block_size)
        if "program" not in entry:
            raise DeviceError(f"bundle target {entry['name']} has no step program: recompile the model with this rfc")
        program = unpack_program(bundle.file(entry["program"]).read_bytes())
        plan = bundle.plan
        # a sequence holds at most the served context (--ctx-size), so its table this many blocks
        width = min(num_blocks, -(-(context_length or plan.context_length) // block_size))
        sample = program.extra.get("sample")
        sample_fn = driver.function(self._module, sample["kernel"]) if isinstance(sample, dict) and "kernel" in sample else None
        self.runner = StepRunner(
            driver, program, entry["kernel_args"], {n: k.fn for n, k in self._kernels.items()},
            weight_ptr=lambda name: self._weights + self._entries[name].offset,
            kv_ptr=lambda which, layer: (self._k_cache if which == "k" else self._v_cache) + layer * self._layer_bytes,
            vocab=plan.vocab_size, n_embd=plan.n_embd, logits=plan.output_logits, hidden=plan.output_hidden,
            block_size=block_size, table_width=width, sample=(sample_fn, sample) if sample_fn is not None else None,
        )
        self._plan = plan
        self.samples_on_device = self.runner.sampling is not None

    def forward(self, batch: StepBatch) -> np.ndarray:
        return self.runner.run(batch, self._plan.output_logits)

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        return self.runner.run(batch, self._plan.output_hidden)

    def forward_sampled(self, batch: StepBatch, rows: list) -> SampledRows:
        return self.runner.run_sampled(batch, rows)

    def close(self) -> None:
        self.runner.close()
        super().close()


# -- sampling on the device (issue 10) -------------------------------------------------------------
_WORD = {name: i for i, name in enumerate(SAMPLE_WORDS)}


def _i32(value: int) -> int:
    """The low 32 bits of `value` as a signed int32."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def write_sample_row(words: np.ndarray, params: SamplingParams, vocab: int, seed: int, step: int,
                     pen_start: int, pen_count: int, logprob: bool) -> None:
    """One row of the sampling kernel's parameters (artifacts/program.py SAMPLE_WORDS) into
    `words` (int32[len(SAMPLE_WORDS)]; its float words written through a float32 view).
    `params` were validated when the request came in; the kernel still clamps what it reads."""
    greedy = params.is_greedy
    w = _WORD
    words[w["flags"]] = SAMPLE_FLAG_DEVICE | (SAMPLE_FLAG_GREEDY if greedy else 0) | (SAMPLE_FLAG_LOGPROB if logprob else 0)
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


_SAMPLE_ARGS = ("out", "logits", "params", "pen_tokens", "pen_counts", "pen_raw", "n_rows")
_MAX_PEN_CAPACITY = 1 << 20  # penalty entries per step: pinned and device bytes are 12 per entry


def _is_count(value: object, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= most


class DeviceSampling:
    """The sampling kernel bound after a runner's step program: per-row parameters and the
    rows' penalty lists staged in pinned memory (the lists packed: counts right after the
    step's tokens, so one copy carries both), token ids and logprobs copied back, and the
    logits of host rows only."""

    def __init__(self, runner: StepRunner, fn: Any, kernel_args: dict, extra: dict):
        name, words = extra.get("kernel"), extra.get("words")
        layout = kernel_args.get(name)
        if words != len(SAMPLE_WORDS) or layout is None or [a[0] for a in layout] != list(_SAMPLE_ARGS):
            raise DeviceError(f"the bundle's sampling kernel {name!r} does not take this runtime's row parameters: recompile the model")
        self._runner, self._driver = runner, runner._driver
        self.capacity, self.threads = extra.get("pen_capacity"), extra.get("threads")
        if not (_is_count(self.capacity, _MAX_PEN_CAPACITY) and _is_count(self.threads, 1024)):
            raise DeviceError(f"the bundle's sampling kernel has a penalty capacity of {self.capacity!r} and "
                              f"{self.threads!r} threads (at most {_MAX_PEN_CAPACITY} and 1024)")
        R, W = runner.max_rows, len(SAMPLE_WORDS)
        self._params_bytes = R * W * 4
        d = self._driver
        self._host = d.malloc_host(self._params_bytes + 8 * self.capacity)
        self._host_out = d.malloc_host(8 * R)
        self._dev = runner._alloc(self._params_bytes + 8 * self.capacity)
        self._dev_raw = runner._alloc(4 * self.capacity)
        self._dev_out = runner._alloc(8 * R)
        self._params = _view(self._host, R * W).reshape(R, W)
        self._pen = self._host + self._params_bytes
        self._out = _view(self._host_out, 2 * R).reshape(R, 2)
        self._fn = fn
        size = max(o + s for _n, s, o in layout)
        self._buffer = ctypes.create_string_buffer((size + 7) // 8 * 8)
        base = ctypes.addressof(self._buffer)
        self._args = {n: (s, o) for n, s, o in layout}
        self._kparams = (ctypes.c_void_p * len(layout))(*[base + o for _n, _s, o in layout])
        logits = runner.arena + runner._out_offset[runner._logits]
        for arg, value in (("out", self._dev_out), ("logits", logits), ("params", self._dev),
                           ("pen_tokens", self._dev + self._params_bytes), ("pen_raw", self._dev_raw)):
            self._pack(arg, value)
        self._n_pen = 0
        self._device_rows = 0

    def _pack(self, arg: str, value: int) -> None:
        size, offset = self._args[arg]
        struct.pack_into(_PACK[size], self._buffer, offset, value)

    def stage(self, rows: list, vocab: int) -> list[int]:
        """Writes the rows' parameters; returns the rows the host samples (a None row, or one
        whose penalty list no longer fits this step's capacity)."""
        host_rows, lists, n_pen = [], [], 0
        flags = _WORD["flags"]
        for r, row in enumerate(rows):
            counts = None if row is None else (row[0].penalty_counts() or {})
            if counts is None or n_pen + len(counts) > self.capacity:
                self._params[r, flags] = 0
                host_rows.append(r)
                continue
            sampler, logprob = row
            write_sample_row(self._params[r], sampler.params, vocab, sampler.device_seed, sampler.drawn,
                             n_pen, len(counts), bool(logprob))
            if counts:
                lists.append(counts)
            n_pen += len(counts)
        # the lists, packed: tokens[n_pen] then counts[n_pen]
        tokens = _view(self._pen, n_pen)
        values = _view(self._pen + 4 * n_pen, n_pen, np.float32)
        at = 0
        for counts in lists:
            n = len(counts)
            tokens[at:at + n] = np.fromiter(counts.keys(), dtype=np.int32, count=n)
            values[at:at + n] = np.fromiter(counts.values(), dtype=np.float32, count=n)
            at += n
        self._n_pen = n_pen
        self._device_rows = len(rows) - len(host_rows)
        return host_rows

    def finish(self, n_rows: int, host_rows: list[int], logits_ptr: int, host_logits: int) -> SampledRows:
        """Queues the copies in, the kernel and the copies out after the step, and waits."""
        d, stream = self._driver, self._runner.stream
        vocab = self._runner._vocab
        if self._device_rows:
            d.copy_to_device_async(self._dev, self._host, n_rows * len(SAMPLE_WORDS) * 4, stream)
            if self._n_pen:
                d.copy_to_device_async(self._dev + self._params_bytes, self._pen, 8 * self._n_pen, stream)
            self._pack("pen_counts", self._dev + self._params_bytes + 4 * self._n_pen)
            self._pack("n_rows", n_rows)
            d.launch_on(self._fn, (n_rows, 1, 1), (self.threads, 1, 1), self._kparams, stream)
            d.copy_to_host_async(self._host_out, self._dev_out, 8 * n_rows, stream)
        for r in host_rows:
            d.copy_to_host_async(host_logits + r * vocab * 4, logits_ptr + r * vocab * 4, vocab * 4, stream)
        d.stream_synchronize(stream)
        rows = _view(host_logits, n_rows * vocab, np.float32).reshape(n_rows, vocab) if host_rows else None
        return SampledRows(
            tokens=self._out[:n_rows, 0].copy(),
            logprobs=self._out[:n_rows, 1].view(np.float32).copy(),
            logits={r: rows[r].copy() for r in host_rows},
        )

    def close(self) -> None:
        self._driver.free_host(self._host)
        self._driver.free_host(self._host_out)
