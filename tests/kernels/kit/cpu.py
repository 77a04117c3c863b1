"""The cpu kernel library's per-op exports, one plan op at a time (the kernels the step program
is built from), behind the reference device's op-by-op interface.

The library is the bundle target's own (runtime.devices.cpu.open_library), its per-op ABI
the compiler's (compiler/codegen/cpu.py ABI_VERSION), checked at load. Weights stay in the
bundle's memory-mapped weights.bin: kernels get pointers into it. The KV cache is F16, like
llama.cpp's default ([layer, slot, kv head, head_dim] for K and for V). Activation buffers
come from a pool that is reused step after step (never zero-filled): the interpreter
allocates a step's buffers in the same order every step, and every op overwrites its
outputs. One ctypes call per op, with argument types declared once; each op's call and
arguments are kept and replayed while its buffers and the batch sizes stay the same (every
decode step after the first). An add_bias that follows the matmul writing its buffer runs
inside that matmul, as the step program runs it.
"""

import ctypes
from collections.abc import Callable
from ctypes import c_double, c_float, c_int, c_size_t, c_void_p

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.formats import row_nbytes
from rfc.artifacts.ops import OP_DEFS
from rfc.artifacts.ops import altup as altup_ops
from rfc.artifacts.ops import hc as hc_ops
from rfc.artifacts.plan import MOE_GATINGS, KVSpec, Op, OpKind, rope_freqs
from rfc.compiler.codegen.cpu import ABI_VERSION
from rfc.compiler.codegen.ops.altup import altup_consts
from rfc.compiler.codegen.ops.hc import hc_consts
from rfc.runtime.core.step import StepBatch
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.cpu import open_library
from rfc.runtime.core.device import InterpretedDevice
from tests.kernels.kit import op_key

_P = c_void_p


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
        raise DeviceError(
            f"the bundle's cpu kernels lack {name}: compile it with CompileOptions(op_exports=True) "
            "(a bundle exports the step entries alone), with this rfc"
        ) from None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


class CpuOpDevice(InterpretedDevice):
    """ReferenceDevice's op-by-op interface over the library's per-op exports."""

    def __init__(self, bundle: Bundle, target: str, kv: KVSpec, num_blocks: int, block_size: int):
        super().__init__(bundle.plan)
        self._lib, entry = open_library(bundle, target, kv)
        if entry.abi_version != ABI_VERSION:
            raise DeviceError(
                f"bundle target {target} has cpu kernel ABI {entry.abi_version}, the kit calls ABI "
                f"{ABI_VERSION}; recompile the model"
            )
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
        self._calls: dict[tuple, _Call] = {}
        self._bias_of, self._folded = _fusions(bundle.plan.ops)

    def _declare_kernels(self) -> None:
        lib = self._lib
        _declare(lib, "rfc_abi_version", [], c_int)
        _declare(lib, "rfc_scratch_bytes", [c_int], c_size_t)
        self._rmsnorm = _declare(lib, "rfc_rmsnorm", [_P, _P, _P, c_int]) if hasattr(lib, "rfc_rmsnorm") else None
        self._rope = _declare(lib, "rfc_rope", [_P, _P, _P, c_int, _P]) if hasattr(lib, "rfc_rope") else None
        self._kv_write = (
            _declare(lib, "rfc_kv_write", [_P, _P, _P, _P, _P, c_int, c_int]) if hasattr(lib, "rfc_kv_write") else None
        )
        self._attention = (
            _declare(lib, "rfc_attention", [_P, _P, _P, _P, _P, _P, c_int, _P, c_int, c_int])
            if hasattr(lib, "rfc_attention")
            else None
        )
        self._add = _declare(lib, "rfc_add", [_P, _P, _P, c_size_t])
        self._add_bias = _declare(lib, "rfc_add_bias", [_P, _P, _P, c_int, c_int])
        self._swiglu = _declare(lib, "rfc_swiglu", [_P, _P, _P, c_size_t])
        self._gather_rows = _declare(lib, "rfc_gather_rows", [_P, _P, c_int, c_int, _P])
        # the kernels of the newer architectures' attributes (libraries built before them lack these)
        optional = {"rfc_rmsnorm_heads": [_P, _P, _P, c_int, c_int, c_int],
                    "rfc_rope_freqs": [_P, _P, _P, c_int, _P, _P, c_double],
                    "rfc_rope_freqs_temp": [_P, _P, _P, c_int, _P, _P, c_double, c_double, c_int],
                    "rfc_attention_ws": [_P, _P, _P, _P, _P, _P, c_int, _P, c_int, c_int, c_int, c_float],
                    "rfc_geglu": [_P, _P, _P, c_size_t], "rfc_softcap": [_P, _P, c_size_t, c_float],
                    "rfc_scale": [_P, _P, c_size_t, c_float],
                    "rfc_xielu": [_P, _P, c_size_t, c_float, c_float, c_float, c_float],
                    "rfc_gelu": [_P, _P, c_size_t], "rfc_channel_div": [_P, _P, _P, c_int, c_int],
                    "rfc_clamp": [_P, _P, c_size_t, c_float], "rfc_sigmoid": [_P, _P, c_size_t],
                    "rfc_relu": [_P, _P, c_size_t],
                    "rfc_mulglu": [_P, _P, _P, c_size_t],
                    "rfc_swiglu_oai": [_P, _P, _P, c_size_t], "rfc_swiglu_clamp": [_P, _P, _P, c_size_t],
                    "rfc_moe_add_bias": [_P, _P, _P, c_int, c_int, c_int, _P],
                    "rfc_moe_scale": [_P, _P, _P, c_int, c_int, c_int, _P],
                    "rfc_slot_scale": [_P, _P, c_int, c_int, c_int, _P],
                    "rfc_attention_sinks": [_P, _P, _P, _P, _P, _P, c_int, _P, c_int, c_int, c_int, c_float,
_P]}  # fmt: skip
        self._arch = {name: _declare(lib, name, args) for name, args in optional.items() if hasattr(lib, name)}
        self._keep: dict[tuple, np.ndarray] = {}  # per-op arrays the kernels read (rope tables)

        if hasattr(lib, "rfc_moe_route"):  # a plan with experts (cpu_moe.c.j2)
            self._moe_route = _declare(lib, "rfc_moe_route",
                                       [_P, _P, _P, c_int, c_int, c_int, c_int, c_int, c_double, c_int,
                                        c_int, c_int, _P, _P], c_int)  # fmt: skip
            self._moe_combine = _declare(lib, "rfc_moe_combine", [_P, _P, c_int, c_int, c_int, _P])
            self._moe_scratch_bytes = _declare(lib, "rfc_moe_scratch_bytes_kernel", [c_int], c_size_t)

    def _arch_kernel(self, name: str, op: Op):
        fn = self._arch.get(name)
        if fn is None:
            raise DeviceError(
                f"the bundle's cpu kernels lack {name} (for {op.kind} {op.attrs}); recompile the model with this rfc"
            )
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
        w = CpuWeight(
            name,
            e.format,
            tuple(e.shape),
            self._base + e.offset,
            row_nbytes(e.format, e.shape[-1]) if len(e.shape) > 1 else e.nbytes,
        )
        fmt = e.format.lower()
        if len(e.shape) == 1 and e.format != "F32":
            # small vectors (norms, biases) stored quantized: decode once to float32
            out = np.empty(e.shape[0], np.float32)
            _declare(self._lib, f"rfc_dequant_{fmt}", [_P, _P, c_int])(w.ptr, out.ctypes.data, e.shape[0])
            w.keep, w.ptr = out, out.ctypes.data
        if len(e.shape) == 3 and hasattr(self._lib, f"rfc_moe_matmul_{fmt}"):  # experts: [E, N, K]
            w.matmul = _declare(
                self._lib,
                f"rfc_moe_matmul_{fmt}",
                [_P, c_size_t, c_size_t, c_int, c_int, _P, c_int, _P, c_int, c_int, _P, _P],
                c_int,
            )
        if len(e.shape) == 2:
            if hasattr(self._lib, f"rfc_embed_{fmt}_scaled"):
                w.embed_scaled = _declare(
                    self._lib, f"rfc_embed_{fmt}_scaled", [_P, c_size_t, _P, c_int, _P, c_float], c_int
                )
            if hasattr(self._lib, f"rfc_matmul_{fmt}"):
                w.matmul = _declare(
                    self._lib, f"rfc_matmul_{fmt}", [_P, c_size_t, c_int, c_int, _P, c_int, _P, _P, _P, _P]
                )
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
        key = op_key(op)
        call = self._calls.get(key)
        layout = batch.layout if batch is not None else None
        if not (
            call is not None
            and call.layout is layout
            and call.outs == outs
            and call.ins == ins
            and call.weights == weights
        ):
            if key in self._folded:
                fn, args = _nothing, ()
            else:
                fn, args = _CALLS[op.kind](self, op, outs, ins, weights, batch)
            call = self._calls[key] = _Call(op, outs, ins, weights, layout, fn, args)
        status = call.fn(*call.args)
        if status is not None and status >= 0:  # embed: index of a token outside the vocabulary
            raise DeviceError(
                f"token id {int(ins[0].array[status])} is outside the vocabulary (0..{weights[0].shape[0] - 1})"
            )

    # Each returns the kernel and its arguments for one op.
    def _op_embed(self, op, outs, ins, weights, batch):
        w, tokens = weights[0], ins[0]
        if w.embed is None:
            raise DeviceError(f"the cpu kernels have no embedding lookup for {w.name} ({w.format})")
        scale = op.attr("scale")
        if scale != 1.0:
            if w.embed_scaled is None:
                raise DeviceError(
                    f"the cpu kernels have no scaled embedding lookup for {w.name}; recompile the model with this rfc"
                )
            return w.embed_scaled, (w.ptr, w.row_bytes, tokens.ptr, tokens.array.shape[0], outs[0].ptr, scale)
        return w.embed, (w.ptr, w.row_bytes, tokens.ptr, tokens.array.shape[0], outs[0].ptr)

    def _op_pos_embed(self, op, outs, ins, weights, batch):
        w = weights[0]
        fn = _declare(self._lib, f"rfc_pos_embed_{w.format.lower()}", [_P, c_size_t, _P, c_int, _P, _P])
        return fn, (w.ptr, w.row_bytes, batch.positions.ptr, batch.num_tokens, ins[0].ptr, outs[0].ptr)

    def _op_rmsnorm(self, op, outs, ins, weights, batch):
        rows, width = ins[0].array.shape
        if op.attr("heads") != 1 or width != self._bundle.plan.n_embd or not weights:
            per_seg = weights and op.attr("heads") > 1 and tuple(weights[0].shape) == (width,)  # Mamba2's grouped norm
            fn = self._arch_kernel("rfc_rmsnorm_segs" if per_seg else "rfc_rmsnorm_heads", op)
            return fn, (ins[0].ptr, weights[0].ptr if weights else None, outs[0].ptr, rows, width, op.attr("heads"))
        return self._rmsnorm, (ins[0].ptr, weights[0].ptr, outs[0].ptr, rows)

    def _op_matmul(self, op, outs, ins, weights, batch):
        w, x = weights[0], ins[0]
        if w.matmul is None:
            raise DeviceError(f"the cpu kernels have no matmul for {w.name} ({w.format})")
        m, k = x.array.shape
        bias = self._bias_of.get(op_key(op))
        bias_ptr = self.weight(bias).ptr if bias is not None else None
        return w.matmul, (
            w.ptr,
            w.row_bytes,
            w.shape[0],
            k,
            x.ptr,
            m,
            outs[0].ptr,
            bias_ptr,
            None,
            self._scratch_ptr(m),
        )

    def _op_moe_route(self, op, outs, ins, weights, batch):
        (logits,), (ids, w) = ins, outs
        t, n_expert = logits.array.shape
        scaled = bool(op.attr("expert_scale"))  # the experts' output scales: the last weight
        bias = weights[0].ptr if len(weights) > int(scaled) else None  # the selection bias, where the router has one
        escale = weights[-1].ptr if scaled else None
        return _checked(self._moe_route, "moe_route"), (logits.ptr, bias, escale, t, n_expert, op.attrs["n_used"],
                                                         MOE_GATINGS.index(op.attr("gating")), int(op.attr("norm")),
                                                         float(op.attr("scale")), op.attr("groups"),
                                                        op.attr("groups_used"), op.attr("id_div"),
                                                         ids.ptr, w.ptr)  # fmt: skip

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
                                                             ids.ptr, t, n_used, outs[0].ptr,
                                                            self._moe_scratch.ctypes.data)  # fmt: skip

    def _op_moe_combine(self, op, outs, ins, weights, batch):
        y, w = ins
        t, n_used = w.array.shape
        return self._moe_combine, (y.ptr, w.ptr, t, n_used, outs[0].array.shape[1], outs[0].ptr)

    def _op_moe_add_bias(self, op, outs, ins, weights, batch):
        (y, ids), bias = ins, weights[0]
        t, n_used = ids.array.shape
        fn = self._arch_kernel("rfc_moe_add_bias", op)
        return fn, (y.ptr, ids.ptr, bias.ptr, t, n_used, y.array.shape[1] // n_used, outs[0].ptr)

    def _op_moe_scale(self, op, outs, ins, weights, batch):
        (y, ids), scale = ins, weights[0]
        t, n_used = ids.array.shape
        fn = self._arch_kernel("rfc_moe_scale", op)
        return fn, (y.ptr, ids.ptr, scale.ptr, t, n_used, y.array.shape[1] // n_used, outs[0].ptr)

    def _op_slot_scale(self, op, outs, ins, weights, batch):
        y, w = ins
        t, n_used = w.array.shape
        fn = self._arch_kernel("rfc_slot_scale", op)
        return fn, (y.ptr, w.ptr, t, n_used, y.array.shape[1] // n_used, outs[0].ptr)

    def _op_short_conv(self, op, outs, ins, weights, batch):
        """Each sequence's chunk from zeros (no state pool here: teacher forcing, chunks from
        position 0); the step program carries state (tests/e2e/test_hybrid_state.py)."""
        fn = _declare(self._lib, "rfc_short_conv", [_P, _P, _P, _P, c_int, c_int, _P, c_int, _P])
        states = self._keep.setdefault(("states", batch.num_seqs), np.zeros(batch.num_seqs, np.uintp))  # NULL: no slot
        return fn, (
            ins[0].ptr,
            outs[0].ptr,
            batch.positions.ptr,
            batch.seq_start.ptr,
            batch.num_seqs,
            outs[0].array.shape[1],
            weights[0].ptr,
            weights[0].shape[1],
            states.ctypes.data,
        )

    def _op_ssm_conv(self, op, outs, ins, weights, batch):
        """As _op_short_conv: each sequence's chunk from zeros (no state pool here)."""
        states = self._keep.setdefault(("states", batch.num_seqs), np.zeros(batch.num_seqs, np.uintp))  # NULL: no slot
        if len(weights) > 1:  # Mamba2's conv bias
            fn = _declare(self._lib, "rfc_ssm_conv_bias", [_P, _P, _P, _P, c_int, c_int, _P, c_int, _P, _P])
            return fn, (
                ins[0].ptr,
                outs[0].ptr,
                batch.positions.ptr,
                batch.seq_start.ptr,
                batch.num_seqs,
                outs[0].array.shape[1],
                weights[0].ptr,
                weights[0].shape[1],
                weights[1].ptr,
                states.ctypes.data,
            )
        fn = _declare(self._lib, "rfc_ssm_conv", [_P, _P, _P, _P, c_int, c_int, _P, c_int, _P])
        return fn, (
            ins[0].ptr,
            outs[0].ptr,
            batch.positions.ptr,
            batch.seq_start.ptr,
            batch.num_seqs,
            outs[0].array.shape[1],
            weights[0].ptr,
            weights[0].shape[1],
            states.ctypes.data,
        )

    def _op_ssm_scan(self, op, outs, ins, weights, batch):
        fn = _declare(
            self._lib, "rfc_ssm_scan", [_P, _P, _P, _P, _P, c_int, c_int, c_int, c_int, c_int, _P, _P, _P, _P]
        )
        states = self._keep.setdefault(("states", batch.num_seqs), np.zeros(batch.num_seqs, np.uintp))
        a = op.attrs
        return fn, (
            ins[0].ptr,
            ins[1].ptr,
            outs[0].ptr,
            batch.positions.ptr,
            batch.seq_start.ptr,
            batch.num_seqs,
            a["n_heads"],
            a["head_dim"],
            a["n_groups"],
            a["state_size"],
            weights[0].ptr,
            weights[1].ptr,
            weights[2].ptr,
            states.ctypes.data,
        )

    def _op_lightning_attention(self, op, outs, ins, weights, batch):
        fn = _declare(self._lib, "rfc_lightning_attention", [_P, _P, _P, _P, c_int, c_int, c_int, _P, _P])
        states = self._keep.setdefault(("states", batch.num_seqs), np.zeros(batch.num_seqs, np.uintp))
        a = op.attrs
        return fn, (ins[0].ptr, outs[0].ptr, batch.positions.ptr, batch.seq_start.ptr, batch.num_seqs, a["n_heads"],
                    a["head_dim"], weights[0].ptr, states.ctypes.data)  # fmt: skip

    def _op_gated_delta_net(self, op, outs, ins, weights, batch):
        fn = _declare(
            self._lib,
            "rfc_gated_delta_net" if op.attr("decay") == "head" else "rfc_kda",
            [
                _P,
                _P,
                _P,
                _P,
                _P,
                _P,
                c_int,
                c_int,
                c_int,
                c_int,
                _P,
                _P,
                c_float,
                *([c_float] * (op.attr("decay") != "head")),
                _P,
            ],
        )
        states = self._keep.setdefault(("states", batch.num_seqs), np.zeros(batch.num_seqs, np.uintp))
        a = op.attrs
        return fn, (
            ins[0].ptr,
            ins[1].ptr,
            ins[2].ptr,
            outs[0].ptr,
            batch.positions.ptr,
            batch.seq_start.ptr,
            batch.num_seqs,
            a["n_k_heads"],
            a["n_v_heads"],
            a["head_dim"],
            weights[0].ptr,
            weights[1].ptr,
            a["eps"],
            *([op.attr("lower_bound")] if op.attr("decay") != "head" else []),
            states.ctypes.data,
        )

    def _op_head_matmul(self, op, outs, ins, weights, batch):
        w, x = weights[0], ins[0]
        heads, n, k = w.shape
        fn = _checked(
            _declare(
                self._lib,
                f"rfc_head_matmul_{w.format.lower()}",
                [_P, c_size_t, _P, c_int, c_int, c_int, c_int, c_int, _P],
                c_int,
            ),
            "head_matmul",
        )
        return fn, (w.ptr, w.row_bytes, x.ptr, x.array.shape[0], heads, op.attr("stride") or k, n, k, outs[0].ptr)

    def _op_slice_heads(self, op, outs, ins, weights, batch):
        (x,), heads = ins, op.attrs["heads"]
        fn = _declare(self._lib, "rfc_slice_heads", [_P, _P, c_int, c_int, c_int, c_int])
        return fn, (x.ptr, outs[0].ptr, x.array.shape[0], heads, x.array.shape[1] // heads, op.attrs["width"])

    def _op_concat_heads(self, op, outs, ins, weights, batch):
        (a, b), heads = ins, op.attrs["heads"]
        fn = _declare(self._lib, "rfc_concat_heads", [_P, _P, _P, c_int, c_int, c_int, c_int])
        return fn, (
            a.ptr,
            b.ptr,
            outs[0].ptr,
            a.array.shape[0],
            heads,
            a.array.shape[1] // heads,
            b.array.shape[1] // heads,
        )

    def _op_add_bias(self, op, outs, ins, weights, batch):
        rows, n = ins[0].array.shape
        return self._add_bias, (ins[0].ptr, weights[0].ptr, outs[0].ptr, rows, n)

    def _op_add(self, op, outs, ins, weights, batch):
        return self._add, (ins[0].ptr, ins[1].ptr, outs[0].ptr, ins[0].array.size)

    def _op_swiglu(self, op, outs, ins, weights, batch):
        act = op.attr("activation")
        fn = (
            self._arch_kernel(
                {
                    "gelu_tanh": "rfc_geglu",
                    "swiglu_oai": "rfc_swiglu_oai",
                    "relu": "rfc_reluglu",
                    "silu_clamp": "rfc_swiglu_clamp",
                    "silu_cap": "rfc_swiglu_cap0",  # the plan's first limit (a kit plan has at most one)
                    "situ": "rfc_swiglu_situ0",  # likewise its first (alpha, limit)
                    "linear": "rfc_mulglu",
                }[act],
                op,
            )
            if act != "silu"
            else self._swiglu
        )
        return fn, (ins[0].ptr, ins[1].ptr, outs[0].ptr, ins[0].array.size)

    def _op_scale(self, op, outs, ins, weights, batch):
        return self._arch_kernel("rfc_scale", op), (ins[0].ptr, outs[0].ptr, ins[0].array.size, op.attrs["factor"])

    def _op_clamp(self, op, outs, ins, weights, batch):
        return self._arch_kernel("rfc_clamp", op), (ins[0].ptr, outs[0].ptr, ins[0].array.size, op.attrs["limit"])

    def _op_channel_div(self, op, outs, ins, weights, batch):
        rows, width = ins[0].array.shape
        return self._arch_kernel("rfc_channel_div", op), (ins[0].ptr, weights[0].ptr, outs[0].ptr, rows, width)

    def _op_sigmoid(self, op, outs, ins, weights, batch):
        return self._arch_kernel("rfc_sigmoid", op), (ins[0].ptr, outs[0].ptr, ins[0].array.size)

    # -- RWKV (kernels/cpu_rwkv.h): each sequence's chunk from zeros, as _op_short_conv's ---------------
    def _op_token_shift(self, op, outs, ins, weights, batch):
        fn = _declare(self._lib, "rfc_token_shift", [_P, _P, _P, _P, c_int, c_int, _P])
        states = self._keep.setdefault(("states", batch.num_seqs), np.zeros(batch.num_seqs, np.uintp))
        return fn, (ins[0].ptr, outs[0].ptr, batch.positions.ptr, batch.seq_start.ptr, batch.num_seqs,
                    ins[0].array.shape[1], states.ctypes.data)  # fmt: skip

    def _op_lerp(self, op, outs, ins, weights, batch):
        fn = _declare(self._lib, "rfc_lerp", [_P, _P, _P, _P, c_int, c_int, c_int])
        rows, c = ins[0].array.shape
        return fn, (ins[0].ptr, ins[1].ptr, outs[0].ptr, weights[0].ptr, rows, c, op.attr("part"))

    def _op_lerp_data(self, op, outs, ins, weights, batch):
        fn = _declare(self._lib, "rfc_lerp_data", [_P, _P, _P, _P, c_int, c_int, c_int, c_int])
        rows, c = ins[0].array.shape
        return fn, (ins[0].ptr, ins[1].ptr, ins[2].ptr, outs[0].ptr, rows, c, ins[2].array.shape[1], op.attr("part"))

    def _op_wkv6(self, op, outs, ins, weights, batch):
        fn = _declare(self._lib, "rfc_wkv6", [_P] * 7 + [c_int] * 4 + [_P, _P, c_int, c_float, _P])
        states = self._keep.setdefault(("states", batch.num_seqs), np.zeros(batch.num_seqs, np.uintp))
        a, gla = op.attrs, op.attr("mode") == "gla"
        u, decay = (None, weights[0].ptr) if gla else (weights[0].ptr, weights[1].ptr)
        return fn, (*(x.ptr for x in ins), outs[0].ptr, batch.positions.ptr, batch.seq_start.ptr, batch.num_seqs,
                    a["n_heads"], a["n_kv_heads"], a["head_dim"], u, decay, int(gla), op.attr("scale"),
                    states.ctypes.data)  # fmt: skip

    def _op_wkv7(self, op, outs, ins, weights, batch):
        fn = _declare(self._lib, "rfc_wkv7", [_P] * 9 + [c_int] * 3 + [_P] * 6)
        states = self._keep.setdefault(("states", batch.num_seqs), np.zeros(batch.num_seqs, np.uintp))
        return fn, (*(x.ptr for x in ins), outs[0].ptr, outs[1].ptr, batch.positions.ptr, batch.seq_start.ptr,
                    batch.num_seqs, op.attrs["n_heads"], op.attrs["head_dim"], *(w.ptr for w in weights),
                    states.ctypes.data)  # fmt: skip

    def _op_relu(self, op, outs, ins, weights, batch):
        return self._arch_kernel("rfc_relu", op), (ins[0].ptr, outs[0].ptr, ins[0].array.size)

    def _op_gelu(self, op, outs, ins, weights, batch):
        return self._arch_kernel("rfc_gelu", op), (ins[0].ptr, outs[0].ptr, ins[0].array.size)

    def _op_xielu(self, op, outs, ins, weights, batch):
        consts = (op.attrs[k] for k in ("alpha_n", "alpha_p", "beta", "eps"))
        return self._arch_kernel("rfc_xielu", op), (ins[0].ptr, outs[0].ptr, ins[0].array.size, *consts)

    def _op_softcap(self, op, outs, ins, weights, batch):
        return self._arch_kernel("rfc_softcap", op), (ins[0].ptr, outs[0].ptr, ins[0].array.size, op.attrs["cap"])

    def _op_altup(self, op, outs, ins, weights, batch):
        """gemma3n's and the hyper-connections' row ops (kernels/cpu_altup.h, cpu_hc.h): rfc_<kind>(T, inputs,
        outputs, weight or NULL, constants)."""
        widths = {name: b.array.shape[1] for name, b in zip((*op.inputs, *op.outputs), (*ins, *outs))}
        consts = (hc_consts if op.kind in _HC else altup_consts)(op, widths.__getitem__)
        types = [c_float if isinstance(c, float) else c_int for c in consts]
        fn = _declare(self._lib, f"rfc_{op.kind}", [c_int] + [_P] * (len(ins) + len(outs) + 1) + types)
        w = weights[0].ptr if weights else None
        return fn, (ins[0].array.shape[0], *(b.ptr for b in ins), *(b.ptr for b in outs), w, *consts)

    def _op_gather_rows(self, op, outs, ins, weights, batch):
        return self._gather_rows, (ins[0].ptr, batch.logit_rows.ptr, batch.num_rows, ins[0].array.shape[1], outs[0].ptr)

    def _op_rope(self, op, outs, ins, weights, batch):
        factors = weights[0].ptr if weights else None
        if "rfc_rope_freqs" not in self._arch:  # a library from before per-op rope frequencies
            return self._rope, (outs[0].ptr, outs[1].ptr, batch.positions.ptr, batch.num_tokens, factors)
        table = self._keep.setdefault(op_key(op), np.array(rope_freqs(op.attrs), np.float64))
        if op.attr("temp_scale"):  # mistral3's attention temperature tuning
            return self._arch_kernel("rfc_rope_freqs_temp", op), (
                outs[0].ptr,
                outs[1].ptr,
                batch.positions.ptr,
                batch.num_tokens,
                factors,
                table.ctypes.data,
                op.attr("attn_factor"),
                op.attr("temp_scale"),
                op.attr("temp_floor"),
            )
        return self._arch["rfc_rope_freqs"], (outs[0].ptr, outs[1].ptr, batch.positions.ptr, batch.num_tokens, factors,
                                              table.ctypes.data, op.attr("attn_factor"))  # fmt: skip

    def _layer_ptrs(self, layer: int) -> tuple[int, int]:
        off = layer * self._layer_bytes
        return self._k_base + off, self._v_base + off

    def _op_kv_write(self, op, outs, ins, weights, batch):
        kc, vc = self._layer_ptrs(op.attrs["layer"])
        return self._kv_write, (ins[0].ptr, ins[1].ptr, kc, vc, batch.slots.ptr, batch.num_tokens, batch.block_size)

    def _op_attention(self, op, outs, ins, weights, batch):
        kc, vc = self._layer_ptrs(op.attrs["layer"])
        args = (
            ins[0].ptr,
            outs[0].ptr,
            kc,
            vc,
            batch.positions.ptr,
            batch.seq_start.ptr,
            batch.num_seqs,
            batch.block_tables.ptr,
            batch.max_blocks,
            batch.block_size,
        )
        window, softcap = op.attr("window"), op.attr("softcap")
        if weights:  # gpt-oss's sinks, a float32 vector
            return self._arch_kernel("rfc_attention_sinks", op), (*args, window or 0, softcap or 0.0, weights[0].ptr)
        if window is None and softcap is None:
            return self._attention, args
        return self._arch_kernel("rfc_attention_ws", op), (*args, window or 0, softcap or 0.0)  # 0: off


def _checked(fn, what: str):
    """A kernel that returns a negative status for sizes its build was not made for."""

    def call(*args) -> None:
        if fn(*args) < 0:
            raise DeviceError(f"the cpu kernels refused {what}: sizes outside what the library was compiled for")

    return call


def _fusions(ops: tuple[Op, ...]) -> tuple[dict[tuple, str], set[tuple]]:
    """add_bias right after the matmul that writes its buffer runs inside that matmul (as the
    step program runs it): {matmul's op_key: bias weight name} and the add_bias ops folded away."""
    bias_of: dict[tuple, str] = {}
    folded: set[tuple] = set()
    for op, nxt in zip(ops, ops[1:]):
        if (
            op.kind is OpKind.MATMUL
            and nxt.kind is OpKind.ADD_BIAS
            and nxt.inputs == op.outputs
            and nxt.outputs == op.outputs
        ):
            bias_of[op_key(op)] = nxt.weights[0]
            folded.add(op_key(nxt))
    return bias_of, folded


# Each op kind's method: the kernel and its arguments for one op. The kit runs every kind of
# the registry (artifacts/ops), gemma3n's AltUp family and hy_v4's hyper-connections through one method.
_HC = {d.kind for d in hc_ops.DEFS}
_ALTUP = {d.kind for d in altup_ops.DEFS} | _HC
_CALLS: dict[OpKind, Callable] = {
    OpKind(kind): getattr(CpuOpDevice, "_op_altup" if kind in _ALTUP else f"_op_{kind}") for kind in OP_DEFS
}
