"""The cpu step device: runs a bundle target's step program, one ctypes call per step.

The compiled library exports `rfc_step(const rfc_step_args *)` (logits) and
`rfc_step_hidden` (the final norm's output), which run every op of the plan in one thread
team (compiler/codegen/cpu_step.py). Per step this device copies the batch arrays into
buffers it keeps, fills the argument struct (its ctypes layout is generated from
artifacts/program.py STEP_ARGS, as the C one is), makes the call and copies the logits out
of the activation arena. Weights stay in the bundle's memory-mapped weights.bin; the KV
cache is [layer, slot, row] for K and for V, each row n_kv_heads * head_dim values in F16
(llama.cpp's default) or q8_0 / q4_0 blocks (--cache-type-k/-v; the library has the kernels of
every type, chosen per step by the arguments' k_type / v_type).
"""

import ctypes
import os
from ctypes import c_int, c_int64, c_size_t, c_void_p

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.errors import BundleError
from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.artifacts.plan import KVSpec, StateSpec
from rfc.artifacts.program import STEP_ABI_VERSION, STEP_ARGS, plan_arena, unpack_program
from rfc.artifacts.targets import TargetEntry
from rfc.runtime.core.step import StepBatch
from rfc.runtime.devices import DeviceError, DeviceKind
from rfc.runtime.core.device import PendingRows, SampledRows, require_logits, require_scores
from rfc.runtime.devices.state import HostState
from rfc.runtime.core.sampling_kernels import SamplingKernels

_CTYPES = {"i64": c_int64, "ptr": c_void_p}


class StepArgs(ctypes.Structure):
    """rfc_step_args, field by field from STEP_ARGS (every field 8 bytes: no padding)."""

    _fields_ = [(name, _CTYPES[kind]) for name, kind, _ in STEP_ARGS]


def default_threads() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _fn(lib: ctypes.CDLL, name: str, argtypes: list, restype):
    try:
        fn = getattr(lib, name)
    except AttributeError:
        raise DeviceError(f"the bundle's cpu kernels lack {name}; recompile the model with this rfc") from None
    fn.argtypes, fn.restype = argtypes, restype
    return fn


class CpuStepDevice(HostState):
    """A runtime.core.device.Device: steps run by the library's step program; the host samples,
    with the library's sampling kernels where it has them."""

    name = DeviceKind.CPU
    samples_on_device = False
    host_sampling: SamplingKernels | None = None

    def __init__(self, bundle: Bundle, target: str, lib: ctypes.CDLL, entry: TargetEntry, kv: KVSpec, num_blocks: int,
                 block_size: int, n_threads: int | None = None,
                 cache_types: KvCacheTypes = KvCacheTypes()):  # fmt: skip
        if not entry.program:
            raise DeviceError(f"bundle target {target} has no step program; recompile the model with this rfc")
        try:
            self.program = unpack_program(bundle.file(entry.program).read_bytes())
        except (OSError, BundleError) as e:
            raise DeviceError(f"bundle target {target}: {e}") from e
        if self.program.entry is None or self.program.extra.get("step_abi") != STEP_ABI_VERSION:
            raise DeviceError(f"bundle target {target} has step ABI {self.program.extra.get('step_abi')}, this rfc "
                              f"runs {STEP_ABI_VERSION}; recompile the model")  # fmt: skip
        self.target = target
        self.plan = bundle.plan
        self._lib = lib
        if _fn(lib, "rfc_step_abi_version", [], c_int)() != STEP_ABI_VERSION:
            raise DeviceError(f"the step program of bundle target {target} reports another ABI version")
        if _fn(lib, "rfc_step_arena_alignment", [], c_int64)() != self.program.arena.alignment:
            raise DeviceError(
                f"the step program of bundle target {target} lays its arena out unlike its program.msgpack"
            )
        if _fn(lib, "rfc_step_args_bytes", [], c_size_t)() != ctypes.sizeof(StepArgs):
            raise DeviceError(f"the step program of bundle target {target} has another argument struct")
        self._entry = _fn(lib, self.program.entry, [ctypes.POINTER(StepArgs)], c_int)
        self._hidden_entry = _fn(
            lib, str(self.program.extra.get("hidden_entry", "")), [ctypes.POINTER(StepArgs)], c_int
        )
        scores = str(self.program.extra.get("scores_entry", ""))  # a reranker's classifier step
        self._scores_entry = _fn(lib, scores, [ctypes.POINTER(StepArgs)], c_int) if scores else None
        self._arena_bytes = _fn(lib, "rfc_step_arena_bytes", [c_int64, c_int64, c_int64], c_size_t)
        # the library's sampling functions, for the engine's host sampling (None: older bundle)
        self.host_sampling = SamplingKernels.from_library(lib)
        self.n_threads = n_threads or default_threads()
        self._weights = (
            np.frombuffer(bundle.weights, dtype=np.uint8) if bundle.weights is not None else np.zeros(64, np.uint8)
        )
        cache_types.check(kv, bundle.plan.kv_geometries())
        self.cache_types = cache_types
        k_row, v_row = cache_types.row_bytes(kv)
        self.block_size = block_size
        self.k_cache = np.zeros((kv.n_layers, num_blocks * block_size, k_row), dtype=np.uint8)
        self.v_cache = np.zeros((kv.n_layers, num_blocks * block_size, v_row), dtype=np.uint8)
        self._arena = np.empty(0, np.uint8)
        self._arena_base = 0
        self._layouts: dict[tuple[int, int], dict[str, int]] = {}
        a = self._args = StepArgs()
        a.abi_version = STEP_ABI_VERSION
        a.kv_slots = num_blocks * block_size
        a.weights = self._weights.ctypes.data
        a.k_cache, a.v_cache = self.k_cache.ctypes.data, self.v_cache.ctypes.data
        a.k_type, a.v_type = cache_types.k.code, cache_types.v.code
        self._keep: list[np.ndarray] = []

    # -- recurrent state (runtime/devices/state.py: HostState): the pool's base goes to the step
    # program, which finds each sequence's slot through the batch's state_slots
    @property
    def state_spec(self) -> StateSpec:
        return self.plan.state

    def alloc_state(self, slots: int) -> None:
        super().alloc_state(slots)
        self._args.state, self._args.n_state_slots = self.state.data.ctypes.data, slots

    def forward(self, batch: StepBatch) -> np.ndarray:
        require_logits(self.plan)
        return self._run(batch, self._entry, self.plan.output_logits)

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        return self._run(batch, self._hidden_entry, self.plan.output_hidden)

    def forward_scores(self, batch: StepBatch) -> np.ndarray:
        require_scores(self.plan)
        return self._run(batch, self._scores_entry, self.plan.output_scores)

    def forward_sampled(self, batch: StepBatch, rows: list) -> SampledRows:
        raise DeviceError("the cpu step program does not sample: the host samples every row")

    runs_ahead = False  # a step is one call that returns when it has run

    def launch_sampled(self, batch: StepBatch, rows: list, feed: tuple[tuple[int, int], ...] = ()) -> PendingRows:
        raise DeviceError("the cpu step program queues no step ahead")

    copies_kv = True  # the KV cache is host memory: a copy is a numpy copy

    def copy_kv(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copies the blocks of slots `src` into those of `dst`, whole: a block keeps each piece
        of its slots' rows together (templates/cpu_attention.c.j2 rfc_kv), so a slot's row is
        not one run of bytes. The engine copies the leading rows of a cached block into a fresh
        one (runtime/engine/kv_cache.py KvCopy); the rows past them are written by the sequence
        before any of its steps reads them."""
        bs = self.block_size
        src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
        if np.any(src % bs != dst % bs):
            raise DeviceError("the cpu device copies KV slots between the same rows of two blocks")
        pairs = np.unique(np.stack([src // bs, dst // bs], axis=1), axis=0) if src.size else np.zeros((0, 2), np.int64)
        for cache in (self.k_cache, self.v_cache):
            blocks = cache.reshape(cache.shape[0], -1, bs * cache.shape[2])  # a view: [layer, block, bytes]
            blocks[:, pairs[:, 1]] = blocks[:, pairs[:, 0]]

    def _offset(self, t: int, r: int, buffer: str) -> int:
        key = (t, r)
        offsets = self._layouts.get(key)
        if offsets is None:
            arena = plan_arena(self.plan.buffers, t, r, 1, self.program.arena.alignment)
            offsets = self._layouts[key] = {s.buffer: s.offset for s in arena.slots}
            if len(self._layouts) > 4096:
                self._layouts.clear()
        return offsets[buffer]

    def _ensure_arena(self, need: int) -> None:
        if self._arena.nbytes < need + 256:
            self._arena = np.empty(max(need + 256, 2 * self._arena.nbytes), np.uint8)
            self._arena_base = -self._arena.ctypes.data % 256  # the arena starts 256-byte aligned

    def _run(self, batch: StepBatch, entry, output: str) -> np.ndarray:
        t, r, s = batch.num_tokens, batch.num_rows, batch.block_tables.shape[0]
        if t < 1 or s < 1:
            raise DeviceError("a step needs at least one token and one sequence")
        keep = [np.ascontiguousarray(getattr(batch, n), dtype=np.int32)
                for n in ("tokens", "positions", "slots", "seq_of_token", "seq_start", "context_lens", "block_tables",
                          "logit_rows")]  # fmt: skip
        # each sequence's state slot (-1: none; a batch built without slots names none)
        states = np.full(s, -1, np.int32)
        states[: min(s, len(batch.state_slots))] = batch.state_slots[:s]
        keep.append(states)
        if self.plan.state.tensors and ((states < 0) & (keep[1][keep[4][:-1]] != 0)).any():
            raise DeviceError("a recurrent layer needs the sequence's state, and the step names no state slot for it")
        self._ensure_arena(int(self._arena_bytes(t, r, self.n_threads)))
        a = self._args
        a.n_threads, a.n_tokens, a.n_rows, a.n_seqs = self.n_threads, t, r, s
        a.table_width, a.block_size = batch.block_tables.shape[1], batch.block_size
        (a.tokens, a.positions, a.slots, a.seq_of_token, a.seq_start, a.context_lens, a.block_tables,
         a.logit_rows, a.state_slots) = (k.ctypes.data for k in keep)  # fmt: skip
        a.arena = self._arena.ctypes.data + self._arena_base
        status = entry(ctypes.byref(a))
        if status > 0:
            token = int(keep[0][status - 1])
            raise DeviceError(f"token id {token} is outside the vocabulary (0..{self.plan.vocab_size - 1})")
        if status == -3:
            raise DeviceError("the cpu step program could not allocate the step's key bounds (out of memory)")
        if status < 0:
            raise DeviceError(f"the cpu step program refused the step (status {status}): batch arrays out of range")
        width = next(b for b in self.plan.buffers if b.name == output).shape[-1]
        start = self._arena_base + self._offset(t, r, output)
        return self._arena[start : start + r * width * 4].view(np.float32).reshape(r, width).copy()
