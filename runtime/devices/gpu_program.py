"""The GPU step program, bound once and replayed per step (../shared/DESIGN.md §1).

`StepRunner` takes a target's launch list (artifacts/program.py) and binds it at load: the
activation arena is allocated once, every launch gets its parameter buffer with the arena,
weight, batch-array and KV pointers written in, and the batch arrays get one pinned host
staging buffer with a device twin at fixed offsets. A step then writes the batch into the
pinned staging, makes one async copy, runs the launch list (a graph captured once per
decode batch size, replayed; other steps launch the bound list directly), copies the
logits back into pinned memory and synchronizes the one stream once.

Block tables are staged at the program's full width (max context / block size, padded with
-1), so a graph captured for a batch size stays valid as contexts grow.
"""

import ctypes
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rfc.artifacts.program import ArgKind, StepProgram, unpack_program
from rfc.runtime.batch import StepBatch
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.gpu import Driver, GpuDevice
from rfc.runtime.devices.gpu_args import check_code_object_args

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
                 max_graphs: int = 64):
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

    def run(self, batch: StepBatch, output: str) -> np.ndarray:
        """Runs one step; returns float32[R, width] of `output` (logits or hidden)."""
        scalars = self._write_batch(batch)
        d = self._driver
        staged = self.stage["block_tables"][0] + len(batch.context_lens) * self.table_width * 4
        d.copy_to_device_async(self._dev_in, self._host_in, staged, self.stream)
        # decode steps (one token per row) repeat shapes: those are the graph buckets
        if scalars["n_tokens"] == scalars["n_rows"]:
            d.graph_launch(self._graph(scalars), self.stream)
        else:
            self._launch_all(scalars)
        R, width = scalars["n_rows"], self._out[output]
        nbytes = R * width * 4
        if nbytes:
            d.copy_to_host_async(self._host_out, self.arena + self._out_offset[output], nbytes, self.stream)
        d.stream_synchronize(self.stream)
        return _view(self._host_out, R * width, np.float32).reshape(R, width).copy()

    def close(self) -> None:
        for g in self._graphs.values():
            self._driver.graph_destroy(g)
        self._graphs.clear()
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

    def __init__(self, driver: GraphDriver, bundle, entry: dict, code, image: bytes, kv, num_blocks: int, block_size: int):
        super().__init__(driver, bundle, entry, code, image, kv, num_blocks, block_size)
        if "program" not in entry:
            raise DeviceError(f"bundle target {entry['name']} has no step program: recompile the model with this rfc")
        program = unpack_program(bundle.file(entry["program"]).read_bytes())
        plan = bundle.plan
        width = min(num_blocks, -(-plan.context_length // block_size))
        functions = {n: k.fn for n, k in self._kernels.items()}
        # kernels only the program launches (split attention and its reduction), checked
        # against the code object as the per-op kernels are
        only_program = sorted({l.kernel for l in program.launches} - set(functions))
        if only_program:
            module = driver.load_module(image)
            for name in only_program:
                if name not in entry["kernel_args"]:
                    raise DeviceError(f"step program: kernel {name} has no argument layout in the manifest")
                check_code_object_args(f"bundle target {entry['name']}", name, entry["kernel_args"][name], code.get(name))
                functions[name] = driver.function(module, name)
        self.runner = StepRunner(
            driver, program, entry["kernel_args"], functions,
            weight_ptr=lambda name: self._weights + self._entries[name].offset,
            kv_ptr=lambda which, layer: (self._k_cache if which == "k" else self._v_cache) + layer * self._layer_bytes,
            vocab=plan.vocab_size, n_embd=plan.n_embd, logits=plan.output_logits, hidden=plan.output_hidden,
            block_size=block_size, table_width=width,
        )
        self._plan = plan

    def forward(self, batch: StepBatch) -> np.ndarray:
        return self.runner.run(batch, self._plan.output_logits)

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        return self.runner.run(batch, self._plan.output_hidden)

    def close(self) -> None:
        self.runner.close()
        super().close()
