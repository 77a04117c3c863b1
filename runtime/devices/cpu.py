"""The cpu device: runs a bundle's compiled CPU kernels (kernels/<target>/librfc_cpu.so).

`Device` is what the engine gets: the step-program device (cpu_step.py), one ctypes call per
step. `OpDevice` calls the same library's exported per-op kernels one by one (the plan
interpreted in Python, like the reference device); the kernel tests use it to check each
kernel against the reference op.

OpDevice: weights stay in the bundle's memory-mapped weights.bin: kernels get pointers into it. The
KV cache is F16, like llama.cpp's default ([layer, slot, kv head, head_dim] for K and for V).
Activation buffers come from a pool that is reused step after step (never zero-filled): the
executor allocates a step's buffers in the same order every step, and every op overwrites
its outputs. One ctypes call per op, with argument types declared once; each op's call and
arguments are kept and replayed while its buffers and the batch sizes stay the same (every
decode step after the first). An add_bias that follows the matmul writing its buffer runs
inside that matmul.
"""

import ctypes
import os
import platform
import tempfile
from ctypes import c_double, c_float, c_int, c_size_t, c_void_p
from pathlib import Path

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.formats import row_nbytes
from rfc.artifacts.plan import KVSpec, Op, rope_inv_freq
from rfc.artifacts.targets import Family, TargetError, missing_isa, parse_target
from rfc.runtime.batch import StepBatch
from rfc.runtime.devices import DeviceError

ABI_VERSION = 2  # of the exported kernel functions this module calls (compiler/codegen/cpu.py)
_P = c_void_p


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def probe(target: str) -> str | None:
    """None when this machine can run a cpu bundle target, else why not."""
    try:
        t = parse_target(target)
    except TargetError as e:
        return str(e)
    if t.family is not Family.CPU:
        return f"'{target}' is not a cpu target"
    if platform.system() != "Linux":
        return f"the cpu kernels are built as Linux shared libraries, this is {platform.system()}"
    machine = platform.machine().lower().replace("amd64", "x86_64")
    if t.machine and machine != t.machine:
        return f"'{target}' is {t.machine} code, this machine is {machine}"
    lacking = missing_isa(t, cpu_flags())
    if lacking:
        return f"this CPU lacks {', '.join(lacking)}"
    # The step program's phases meet at its own adaptive barrier (spin, then sleep: see
    # templates/cpu_step.c.j2); libgomp only forks and joins the team once per step. Its
    # idle threads should sleep between steps rather than spin against the Python thread
    # and, on a busy machine, everyone else: with libgomp spinning, decode beside one busy
    # process had a long tail (mean 36 vs 50-58 tok/s, SmolLM2, 2 cores). libgomp reads
    # this once, when it is first loaded; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        ctypes.CDLL("libgomp.so.1")
    except OSError as e:
        return f"the OpenMP runtime the cpu kernels link to cannot be loaded ({e})"
    return None


class HostBuffer:
    """A float32 or int32 array in host memory plus its address, as kernels want it."""

    __slots__ = ("array", "ptr")

    def __init__(self, array: np.ndarray):
        self.array = array
        self.ptr = array.ctypes.data


class CpuWeight:
    __slots__ = ("name", "format", "shape", "ptr", "row_bytes", "matmul", "embed", "embed_scaled", "keep")

    def __init__(self, name: str, fmt: str, shape: tuple[int, ...], ptr: int, row_bytes: int):
        self.name, self.format, self.shape, self.ptr, self.row_bytes = name, fmt, shape, ptr, row_bytes
        self.matmul = self.embed = self.embed_scaled = self.keep = None


class DeviceBatch:
    """The step's batch arrays, copied into buffers the device keeps from step to step, so
    their addresses (and the ops' cached arguments) only change when a size does; `layout`
    is a new object whenever one changed."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self.layout: object = object()
        self.tokens = self.positions = self.slots = self.seq_start = None
        self.block_tables = self.logit_rows = None
        self.max_blocks = self.num_tokens = self.num_rows = self.block_size = self.num_seqs = 0
        self._tables_shape: tuple[int, ...] = ()

    def load(self, batch: StepBatch) -> "DeviceBatch":
        sizes = (batch.num_tokens, batch.num_rows, batch.block_tables.shape, batch.block_size)
        changed = sizes != (self.num_tokens, self.num_rows, self._tables_shape, self.block_size)
        for name in ("tokens", "positions", "slots", "seq_start", "block_tables", "logit_rows"):
            src = getattr(batch, name)
            buf = getattr(self, name)
            if changed or buf is None:
                buf = HostBuffer(np.ascontiguousarray(src, dtype=np.int32).copy())
                setattr(self, name, buf)
            else:
                buf.array[...] = src
        if changed:
            self.layout = object()
            self.num_tokens, self.num_rows, self.block_size = batch.num_tokens, batch.num_rows, batch.block_size
            self._tables_shape = batch.block_tables.shape
            self.max_blocks = batch.block_tables.shape[1]
            self.num_seqs = batch.block_tables.shape[0]
        return self


class _Call:
    """One op's kernel call with its arguments, reusable while its buffers stay the same."""

    __slots__ = ("op", "outs", "ins", "weights", "layout", "fn", "args")

    def __init__(self, op, outs, ins, weights, layout, fn, args):
        self.op, self.outs, self.ins, self.weights, self.layout = op, outs, ins, weights, layout
        self.fn, self.args = fn, args


def _nothing() -> None:
    return None


class _Pool:
    """Backing arrays handed out in allocation order; `rewind` starts the next step."""

    def __init__(self) -> None:
        self._slots: list[list] = []  # [backing uint8 array, cached (key, HostBuffer)]
        self._next = 0

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        i = self._next
        self._next += 1
        key = (shape, dtype)
        if i == len(self._slots):
            self._slots.append([np.empty(0, np.uint8), None])
        slot = self._slots[i]
        if slot[1] is not None and slot[1][0] == key:
            return slot[1][1]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if slot[0].nbytes < nbytes:
            slot[0] = np.empty(max(nbytes, 2 * slot[0].nbytes), np.uint8)
        buf = HostBuffer(slot[0][:nbytes].view(dtype).reshape(shape))
        slot[1] = (key, buf)
        return buf

    def rewind(self) -> None:
        self._next = 0


def _declare(lib: ctypes.CDLL, name: str, argtypes: list, restype=None):
    try:
        fn = getattr(lib, name)
    except AttributeError:
        raise DeviceError(f"the bundle's cpu kernels lack {name}; recompile the model with this rfc") from None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


def open_library(bundle: Bundle, target: str, kv: KVSpec) -> tuple[ctypes.CDLL, dict]:
    """The target's kernel library, loaded once this host, its ABI and the KV dtype check out."""
    entry = next((t for t in bundle.manifest["targets"] if t["name"] == target), None)
    if entry is None or not entry.get("kernels"):
        raise DeviceError(f"bundle has no compiled target {target}")
    reason = probe(target)
    if reason is not None:
        raise DeviceError(f"cannot run bundle target {target} here: {reason}")
    if entry.get("abi_version") != ABI_VERSION:
        raise DeviceError(
            f"bundle target {target} has cpu kernel ABI {entry.get('abi_version')}, this rfc runs ABI "
            f"{ABI_VERSION}; recompile the model"
        )
    if kv.dtype != "f16":
        raise DeviceError(f"the cpu kernels keep the KV cache in f16; the plan asks for {kv.dtype}")
    with tempfile.TemporaryDirectory(prefix="rfc-kernels-") as private:
        # loaded from a checked private copy (artifacts/bundle.py Bundle.private_copy); the
        # mapping outlives the file, which goes with the directory
        try:
            return ctypes.CDLL(str(bundle.private_copy(entry["kernels"], Path(private)))), entry
        except OSError as e:
            raise DeviceError(f"cannot load the cpu kernels of bundle target {target}: {e}") from e


def Device(bundle: Bundle, target: str, kv: KVSpec, num_blocks: int, block_size: int, n_threads: int | None = None,
           context_length: int | None = None):
    """The engine's cpu device: the target's step program (one call per step). It sizes its
    block tables from each batch, so the served `context_length` bounds nothing here."""
    from rfc.runtime.devices.cpu_step import CpuStepDevice

    lib, entry = open_library(bundle, target, kv)
    return CpuStepDevice(bundle, target, lib, entry, kv, num_blocks, block_size, n_threads)


class OpDevice:
    name = "cpu"

    def __init__(self, bundle: Bundle, target: str, kv: KVSpec, num_blocks: int, block_size: int):
        self._lib, _ = open_library(bundle, target, kv)
        self._bundle = bundle
        self._entries = bundle.layout.by_name()
        self._weights: dict[str, CpuWeight] = {}
        self._declare_kernels()
        if self._lib.rfc_abi_version() != ABI_VERSION:
            raise DeviceError(f"kernel library of bundle target {target} reports another ABI version")
        self._mapped = np.frombuffer(bundle.weights, dtype=np.uint8) if bundle.weights is not None else None
        self._base = self._mapped.ctypes.data if self._mapped is not None else 0
        shape = (kv.n_layers, num_blocks * block_size, kv.n_kv_heads, kv.head_dim)
        self.k_cache = np.zeros(shape, dtype=np.uint16)  # F16 bits
        self.v_cache = np.zeros(shape, dtype=np.uint16)
        self._layer_bytes = int(np.prod(shape[1:])) * 2
        self._k_base, self._v_base = self.k_cache.ctypes.data, self.v_cache.ctypes.data
        self._pool = _Pool()
        self._batch = DeviceBatch()
        self._scratch = np.empty(0, np.uint8)
        self._moe_scratch = np.empty(0, np.uint8)
        self._retired: list[np.ndarray] = []
        self._calls: dict[int, _Call] = {}
        self._bias_of, self._folded = _fusions(bundle.plan.ops)

    def _declare_kernels(self) -> None:
        lib = self._lib
        _declare(lib, "rfc_abi_version", [], c_int)
        _declare(lib, "rfc_scratch_bytes", [c_int], c_size_t)
        self._rmsnorm = _declare(lib, "rfc_rmsnorm", [_P, _P, _P, c_int]) if hasattr(lib, "rfc_rmsnorm") else None
        self._rope = _declare(lib, "rfc_rope", [_P, _P, _P, c_int, _P]) if hasattr(lib, "rfc_rope") else None
        self._kv_write = _declare(lib, "rfc_kv_write", [_P, _P, _P, _P, _P, c_int]) if hasattr(lib, "rfc_kv_write") else None
        self._attention = (
            _declare(lib, "rfc_attention", [_P, _P, _P, _P, _P, _P, c_int, _P, c_int, c_int])
            if hasattr(lib, "rfc_attention") else None
        )
        self._add = _declare(lib, "rfc_add", [_P, _P, _P, c_size_t])
        self._add_bias = _declare(lib, "rfc_add_bias", [_P, _P, _P, c_int, c_int])
        self._swiglu = _declare(lib, "rfc_swiglu", [_P, _P, _P, c_size_t])
        self._gather_rows = _declare(lib, "rfc_gather_rows", [_P, _P, c_int, c_int, _P])
        # the kernels of the newer architectures' attributes (libraries built before them lack these)
        optional = {"rfc_rmsnorm_heads": [_P, _P, _P, c_int, c_int, c_int], "rfc_rope_freqs": [_P, _P, _P, c_int, _P, _P, c_double],
                    "rfc_attention_ws": [_P, _P, _P, _P, _P, _P, c_int, _P, c_int, c_int, c_int, c_float],
                    "rfc_geglu": [_P, _P, _P, c_size_t], "rfc_softcap": [_P, _P, c_size_t, c_float]}  # fmt: skip
        self._arch = {name: _declare(lib, name, args) for name, args in optional.items() if hasattr(lib, name)}
        self._keep: dict[int, np.ndarray] = {}  # per-op arrays the kernels read (rope tables)

        if hasattr(lib, "rfc_moe_route"):  # a plan with experts (cpu_moe.c.j2)
            self._moe_route = _declare(lib, "rfc_moe_route", [_P, c_int, c_int, c_int, _P, _P], c_int)
            self._moe_combine = _declare(lib, "rfc_moe_combine", [_P, _P, c_int, c_int, c_int, _P])
            self._moe_scratch_bytes = _declare(lib, "rfc_moe_scratch_bytes_kernel", [c_int], c_size_t)

    def _arch_kernel(self, name: str, op: Op):
        fn = self._arch.get(name)
        if fn is None:
            raise DeviceError(f"the bundle's cpu kernels lack {name} (for {op.kind} {op.attrs}); recompile the model with this rfc")
        return fn

    # -- memory ---------------------------------------------------------------------------
    def alloc(self, shape: tuple[int, ...], dtype: str) -> HostBuffer:
        return self._pool.take(tuple(shape), np.dtype(np.int32 if dtype == "i32" else np.float32))

    def upload_batch(self, batch: StepBatch) -> DeviceBatch:
        self._pool.rewind()  # the executor has allocated this step's buffers already
        return self._batch.load(batch)

    def download(self, buf: HostBuffer, rows: int) -> np.ndarray:
        return np.array(buf.array[:rows], dtype=np.float32)

    def weight(self, name: str) -> CpuWeight:
        w = self._weights.get(name)
        if w is None:
            w = self._weights[name] = self._load_weight(name)
        return w

    def _load_weight(self, name: str) -> CpuWeight:
        e = self._entries[name]
        rows = int(np.prod(e.shape[:-1], dtype=np.int64)) if len(e.shape) > 1 else 1
        w = CpuWeight(name, e.format, tuple(e.shape), self._base + e.offset, row_nbytes(e.format, e.shape[-1]) if len(e.shape) > 1 else e.nbytes)
        fmt = e.format.lower()
        if len(e.shape) == 1 and e.format != "F32":
            # small vectors (norms, biases) stored quantized: decode once to float32
            out = np.empty(e.shape[0], np.float32)
            _declare(self._lib, f"rfc_dequant_{fmt}", [_P, _P, c_int])(w.ptr, out.ctypes.data, e.shape[0])
            w.keep, w.ptr = out, out.ctypes.data
        if len(e.shape) == 3 and hasattr(self._lib, f"rfc_moe_matmul_{fmt}"):  # experts: [E, N, K]
            w.matmul = _declare(self._lib, f"rfc_moe_matmul_{fmt}",
                                [_P, c_size_t, c_size_t, c_int, c_int, _P, c_int, _P, c_int, c_int, _P, _P], c_int)
        if len(e.shape) == 2:
            if hasattr(self._lib, f"rfc_embed_{fmt}_scaled"):
                w.embed_scaled = _declare(self._lib, f"rfc_embed_{fmt}_scaled", [_P, c_size_t, _P, c_int, _P, c_float], c_int)
            if hasattr(self._lib, f"rfc_matmul_{fmt}"):
                w.matmul = _declare(self._lib, f"rfc_matmul_{fmt}", [_P, c_size_t, c_int, c_int, _P, c_int, _P, _P, _P, _P])
            if hasattr(self._lib, f"rfc_embed_{fmt}"):
                w.embed = _declare(self._lib, f"rfc_embed_{fmt}", [_P, c_size_t, _P, c_int, _P], c_int)
        return w

    def _scratch_ptr(self, rows: int) -> int:
        need = self._lib.rfc_scratch_bytes(rows)
        if self._scratch.nbytes < need:
            # cached calls may still hold the old address: keep it alive (sizes at least double)
            self._retired.append(self._scratch)
            self._scratch = np.empty(max(need, 2 * self._scratch.nbytes), np.uint8)
        return self._scratch.ctypes.data

    # -- ops ------------------------------------------------------------------------------
    def launch(self, op: Op, outs: list, ins: list, weights: list, batch: DeviceBatch | None) -> None:
        call = self._calls.get(id(op))
        layout = batch.layout if batch is not None else None
        if not (call is not None and call.op is op and call.layout is layout and call.outs == outs
                and call.ins == ins and call.weights == weights):
            if id(op) in self._folded:
                fn, args = _nothing, ()
            else:
                fn, args = getattr(self, "_op_" + op.kind)(op, outs, ins, weights, batch)
            call = self._calls[id(op)] = _Call(op, outs, ins, weights, layout, fn, args)
        status = call.fn(*call.args)
        if status is not None and status >= 0:  # embed: index of a token outside the vocabulary
            raise DeviceError(f"token id {int(ins[0].array[status])} is outside the vocabulary (0..{weights[0].shape[0] - 1})")

    # Each returns the kernel and its arguments for one op.
    def _op_embed(self, op, outs, ins, weights, batch):
        w, tokens = weights[0], ins[0]
        if w.embed is None:
            raise DeviceError(f"the cpu kernels have no embedding lookup for {w.name} ({w.format})")
        scale = op.attr("scale")
        if scale != 1.0:
            if w.embed_scaled is None:
                raise DeviceError(f"the cpu kernels have no scaled embedding lookup for {w.name}; recompile the model with this rfc")
            return w.embed_scaled, (w.ptr, w.row_bytes, tokens.ptr, tokens.array.shape[0], outs[0].ptr, scale)
        return w.embed, (w.ptr, w.row_bytes, tokens.ptr, tokens.array.shape[0], outs[0].ptr)

    def _op_rmsnorm(self, op, outs, ins, weights, batch):
        rows, width = ins[0].array.shape
        if op.attr("heads") != 1 or width != self._bundle.plan.n_embd:
            fn = self._arch_kernel("rfc_rmsnorm_heads", op)
            return fn, (ins[0].ptr, weights[0].ptr, outs[0].ptr, rows, width, op.attr("heads"))
        return self._rmsnorm, (ins[0].ptr, weights[0].ptr, outs[0].ptr, rows)

    def _op_matmul(self, op, outs, ins, weights, batch):
        w, x = weights[0], ins[0]
        if w.matmul is None:
            raise DeviceError(f"the cpu kernels have no matmul for {w.name} ({w.format})")
        m, k = x.array.shape
        bias = self._bias_of.get(id(op))
        bias_ptr = self.weight(bias).ptr if bias is not None else None
        return w.matmul, (w.ptr, w.row_bytes, w.shape[0], k, x.ptr, m, outs[0].ptr, bias_ptr, None, self._scratch_ptr(m))

    def _op_moe_route(self, op, outs, ins, weights, batch):
        (logits,), (ids, w) = ins, outs
        t, n_expert = logits.array.shape
        return _checked(self._moe_route, "moe_route"), (logits.ptr, t, n_expert, op.attrs["n_used"], ids.ptr, w.ptr)

    def _op_moe_matmul(self, op, outs, ins, weights, batch):
        (x, ids), w = ins, weights[0]
        if w.matmul is None:
            raise DeviceError(f"the cpu kernels have no expert matmul for {w.name} ({w.format})")
        t, n_used = ids.array.shape
        _, n, k = w.shape
        need = self._moe_scratch_bytes(t)
        if self._moe_scratch.nbytes < need:
            self._retired.append(self._moe_scratch)
            self._moe_scratch = np.empty(max(need, 2 * self._moe_scratch.nbytes), np.uint8)
        per_slot = int(x.array.shape[1] == n_used * k)
        return _checked(w.matmul, f"moe_matmul {w.name}"), (w.ptr, n * w.row_bytes, w.row_bytes, n, k, x.ptr, per_slot,
                                                             ids.ptr, t, n_used, outs[0].ptr, self._moe_scratch.ctypes.data)  # fmt: skip

    def _op_moe_combine(self, op, outs, ins, weights, batch):
        y, w = ins
        t, n_used = w.array.shape
        return self._moe_combine, (y.ptr, w.ptr, t, n_used, outs[0].array.shape[1], outs[0].ptr)

    def _op_add_bias(self, op, outs, ins, weights, batch):
        rows, n = ins[0].array.shape
        return self._add_bias, (ins[0].ptr, weights[0].ptr, outs[0].ptr, rows, n)

    def _op_add(self, op, outs, ins, weights, batch):
        return self._add, (ins[0].ptr, ins[1].ptr, outs[0].ptr, ins[0].array.size)

    def _op_swiglu(self, op, outs, ins, weights, batch):
        fn = self._arch_kernel("rfc_geglu", op) if op.attr("activation") == "gelu_tanh" else self._swiglu
        return fn, (ins[0].ptr, ins[1].ptr, outs[0].ptr, ins[0].array.size)

    def _op_softcap(self, op, outs, ins, weights, batch):
        return self._arch_kernel("rfc_softcap", op), (ins[0].ptr, outs[0].ptr, ins[0].array.size, op.attrs["cap"])

    def _op_gather_rows(self, op, outs, ins, weights, batch):
        return self._gather_rows, (ins[0].ptr, batch.logit_rows.ptr, batch.num_rows, ins[0].array.shape[1], outs[0].ptr)

    def _op_rope(self, op, outs, ins, weights, batch):
        factors = weights[0].ptr if weights else None
        if "rfc_rope_freqs" not in self._arch:  # a library from before per-op rope frequencies
            return self._rope, (outs[0].ptr, outs[1].ptr, batch.positions.ptr, batch.num_tokens, factors)
        a = op.attrs
        table = self._keep.setdefault(id(op), np.array(rope_inv_freq(a["n_rot"], a["freq_base"], a["freq_scale"]), np.float64))
        return self._arch["rfc_rope_freqs"], (outs[0].ptr, outs[1].ptr, batch.positions.ptr, batch.num_tokens, factors,
                                              table.ctypes.data, op.attr("attn_factor"))  # fmt: skip

    def _layer_ptrs(self, layer: int) -> tuple[int, int]:
        off = layer * self._layer_bytes
        return self._k_base + off, self._v_base + off

    def _op_kv_write(self, op, outs, ins, weights, batch):
        kc, vc = self._layer_ptrs(op.attrs["layer"])
        return self._kv_write, (ins[0].ptr, ins[1].ptr, kc, vc, batch.slots.ptr, batch.num_tokens)

    def _op_attention(self, op, outs, ins, weights, batch):
        kc, vc = self._layer_ptrs(op.attrs["layer"])
        args = (ins[0].ptr, outs[0].ptr, kc, vc, batch.positions.ptr, batch.seq_start.ptr, batch.num_seqs,
                batch.block_tables.ptr, batch.max_blocks, batch.block_size)
        window, softcap = op.attr("window"), op.attr("softcap")
        if window is None and softcap is None:
            return self._attention, args
        return self._arch_kernel("rfc_attention_ws", op), (*args, window or 0, softcap or 0.0)  # 0: off


def _checked(fn, what: str):
    """A kernel that returns a negative status for sizes its build was not made for."""

    def call(*args) -> None:
        if fn(*args) < 0:
            raise DeviceError(f"the cpu kernels refused {what}: sizes outside what the library was compiled for")

    return call


def _fusions(ops: tuple[Op, ...]) -> tuple[dict[int, str], set[int]]:
    """add_bias right after the matmul that writes its buffer runs inside that matmul:
    {id(matmul): bias weight name} and the ids of the add_bias ops folded away."""
    bias_of: dict[int, str] = {}
    folded: set[int] = set()
    for op, nxt in zip(ops, ops[1:]):
        if (op.kind == "matmul" and nxt.kind == "add_bias" and nxt.inputs == op.outputs
                and nxt.outputs == op.outputs):
            bias_of[id(op)] = nxt.weights[0]
            folded.add(id(nxt))
    return bias_of, folded
