"""The GPU device: runs a bundle's compiled kernels through a driver (hip.py, cuda.py).

The driver modules only wrap their C API; everything else is shared here: device memory
(a small caching pool, since the executor allocates its activations every step), weights
uploaded once, the paged KV cache, and launching the kernel of each plan op with its
arguments packed at the offsets the code object declares. What gets launched is checked
at load (gpu_args.check_kernels).
"""

import ctypes
import struct
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.errors import BundleError
from rfc.artifacts.layout import TensorEntry
from rfc.artifacts.program import unpack_program
from rfc.artifacts.validate import check_weight_map
from rfc.artifacts.plan import KVSpec, Op
from rfc.runtime.batch import StepBatch
from rfc.runtime.devices import DeviceError
from rfc.artifacts.codeobject import KernelInfo
from rfc.runtime.devices.gpu_args import I32, PTR, Arg, Call, check_kernels, op_key

_PACK = {PTR: "<Q", I32: "<i"}
_DTYPES = {"f32": np.float32, "i32": np.int32}
_KV_ITEMSIZE = {"f16": 2, "f32": 4}
_WEIGHT_ALIGNMENT = 256  # device offsets of uploaded weights: 128-bit loads and more


class Driver(Protocol):
    """What a GPU driver module provides; every call raises DeviceError on failure."""

    def malloc(self, nbytes: int) -> int: ...

    def free(self, ptr: int) -> None: ...

    def copy_to_device(self, ptr: int, host: np.ndarray) -> None: ...

    def copy_to_host(self, host: np.ndarray, ptr: int) -> None: ...

    def load_module(self, image: bytes) -> Any: ...

    def function(self, module: Any, name: str) -> Any: ...

    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], params: ctypes.Array) -> None: ...

    def synchronize(self) -> None: ...


@dataclass(eq=False)
class DeviceArray:
    ptr: int
    shape: tuple[int, ...]
    dtype: str  # "f32" or "i32"; for a weight, its storage format ("Q4_K", ...)


@dataclass(frozen=True)
class DeviceBatch:
    """A StepBatch's arrays on the device, plus the scalars kernels take."""

    tokens: DeviceArray
    positions: DeviceArray
    slots: DeviceArray
    seq_of_token: DeviceArray
    block_tables: DeviceArray
    logit_rows: DeviceArray
    table_width: int
    block_size: int


# -- memory --------------------------------------------------------------------------------------


class _Pool:
    """Reuses freed device allocations of the same size: the executor allocates every
    activation buffer every step, and driver mallocs are slow and synchronizing."""

    def __init__(self, driver: Driver):
        self._driver = driver
        self._free: dict[int, list[int]] = {}

    def allocate(self, nbytes: int) -> int:
        free = self._free.get(nbytes)
        return free.pop() if free else self._driver.malloc(nbytes)

    def release(self, nbytes: int, ptr: int) -> None:
        self._free.setdefault(nbytes, []).append(ptr)

    def close(self) -> None:
        for ptrs in self._free.values():
            for p in ptrs:
                self._driver.free(p)
        self._free.clear()


class _Kernel:
    """A loaded kernel with a reusable argument buffer at the code object's offsets."""

    def __init__(self, fn: Any, args: tuple[Arg, ...], layout: list, launch: dict):
        self.fn = fn
        self.args = args
        self.offsets = [offset for _name, _size, offset in layout]
        size = max((o + s for _n, s, o in layout), default=0)
        self.buffer = ctypes.create_string_buffer(max(8, (size + 7) // 8 * 8))
        base = ctypes.addressof(self.buffer)
        self.params = (ctypes.c_void_p * max(1, len(layout)))(*[base + o for o in self.offsets])
        self.threads = int(launch["threads"])
        self.grid = [(c, int(t)) for c, t in launch["grid"]]


class GpuDevice:
    """ReferenceDevice's interface over a GPU driver and a checked code object."""

    name = "gpu"

    def __init__(self, driver: Driver, bundle: Bundle, entry: dict, code: dict[str, KernelInfo], image: bytes,
                 kv: KVSpec, num_blocks: int, block_size: int):
        if kv.dtype not in _KV_ITEMSIZE:
            raise DeviceError(f"no GPU KV cache of {kv.dtype} (supported: {', '.join(_KV_ITEMSIZE)})")
        self._driver = driver
        packing = check_kernels(bundle, entry, code)
        self._pool = _Pool(driver)
        self._owned: list[int] = []
        module = driver.load_module(image)
        self._module = module  # the step program binds kernels beyond the ops' (sampling)
        self._kernels = {
            name: _Kernel(driver.function(module, name), args, entry["kernel_args"][name], entry["launch"][name])
            for name, args in packing.items()
        }
        self._kernel_of = {op_key(op): name for op, name in zip(bundle.plan.ops, entry["op_kernels"])}
        self._entries = bundle.layout.by_name()
        self._weight_of = _weight_map(bundle, entry)
        self._weights = self._upload_weights(bundle)
        slots = num_blocks * block_size
        self._layer_bytes = slots * kv.n_kv_heads * kv.head_dim * _KV_ITEMSIZE[kv.dtype]
        self._k_cache = self._owned_alloc(max(1, kv.n_layers * self._layer_bytes))
        self._v_cache = self._owned_alloc(max(1, kv.n_layers * self._layer_bytes))

    def _owned_alloc(self, nbytes: int) -> int:
        ptr = self._driver.malloc(nbytes)
        self._owned.append(ptr)
        return ptr

    def _upload_weights(self, bundle: Bundle) -> int:
        """Uploads the entries this target reads, packed at aligned offsets (_device_offset):
        a bundle with cpu targets too holds layouts of the same weights the GPU never reads."""
        self._device_offset: dict[str, int] = {}
        if bundle.weights is None:
            return 0
        host = np.frombuffer(bundle.weights, dtype=np.uint8)
        spans, total = weight_spans(bundle, self._weight_of)
        ptr = self._owned_alloc(max(1, total))
        for at, e in spans:
            self._device_offset[e.name] = at
            self._driver.copy_to_device(ptr + at, host[e.offset : e.offset + e.nbytes])
        return ptr

    def weight_address(self, entry: str) -> int:
        """Device address of a layout entry this target reads."""
        return self._weights + self._device_offset[entry]

    def close(self) -> None:
        self._driver.synchronize()
        self._pool.close()
        for p in self._owned:
            self._driver.free(p)
        self._owned.clear()

    # -- memory -------------------------------------------------------------------------------
    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, from the driver (/health's gpu.memory)."""
        return self._driver.memory_info()

    def alloc(self, shape: tuple[int, ...], dtype: str) -> DeviceArray:
        nbytes = max(4, int(np.prod(shape, dtype=np.int64)) * 4)
        ptr = self._pool.allocate(nbytes)
        arr = DeviceArray(ptr, tuple(shape), dtype)
        weakref.finalize(arr, self._pool.release, nbytes, ptr)
        return arr

    def _upload(self, host: np.ndarray) -> DeviceArray:
        host = np.ascontiguousarray(host, dtype=np.int32)
        arr = self.alloc(host.shape, "i32")
        if host.size:
            self._driver.copy_to_device(arr.ptr, host)
        return arr

    def upload_batch(self, batch: StepBatch) -> DeviceBatch:
        return DeviceBatch(
            tokens=self._upload(batch.tokens),
            positions=self._upload(batch.positions),
            slots=self._upload(batch.slots),
            seq_of_token=self._upload(batch.seq_of_token),
            block_tables=self._upload(batch.block_tables),
            logit_rows=self._upload(batch.logit_rows),
            table_width=int(batch.block_tables.shape[1]),
            block_size=int(batch.block_size),
        )

    def download(self, buf: DeviceArray, rows: int) -> np.ndarray:
        self._driver.synchronize()
        out = np.empty((rows, *buf.shape[1:]), dtype=_DTYPES[buf.dtype])
        if out.size:
            self._driver.copy_to_host(out, buf.ptr)
        return out.astype(np.float32, copy=False)

    def weight(self, name: str) -> DeviceArray:
        e = self._entries[self._weight_of.get(name, name)]
        return DeviceArray(self.weight_address(e.name), tuple(e.shape), e.format)

    # -- ops ----------------------------------------------------------------------------------
    def launch(self, op: Op, outs: list, ins: list, weights: list, batch: DeviceBatch) -> None:
        name = self._kernel_of.get(op_key(op))
        if name is None:
            raise DeviceError(f"no kernel in this bundle for op {op.kind} {op.inputs} -> {op.outputs}")
        k = self._kernels[name]
        layer = op.attrs.get("layer", 0)
        call = Call(outs, ins, weights, batch,
                    self._k_cache + layer * self._layer_bytes, self._v_cache + layer * self._layer_bytes)
        scalars = {}
        for arg, offset in zip(k.args, k.offsets):
            value = arg.get(call)
            if isinstance(value, DeviceArray):
                value = value.ptr
            struct.pack_into(_PACK[arg.kind], k.buffer, offset, value)
            if arg.kind == I32:
                scalars[arg.name] = value
        grid = [-(-(scalars[c] if isinstance(c, str) else c) // t) for c, t in k.grid]
        if min(grid) <= 0:
            return  # nothing to do (e.g. no logit rows this step)
        grid3 = (*grid, 1, 1, 1)[:3]
        self._driver.launch(k.fn, grid3, (k.threads, 1, 1), k.params)


def weight_spans(bundle: Bundle, weight_of: dict[str, str]) -> tuple[list[tuple[int, TensorEntry]], int]:
    """The layout entries a GPU target reads (plan weights through its map `weight_of`) at
    their device offsets, in weights.bin order, and the device bytes they take."""
    entries = bundle.layout.by_name()
    read = {weight_of.get(w, w) for op in bundle.plan.ops for w in op.weights}
    spans, total = [], 0
    for e in sorted((entries[n] for n in read), key=lambda e: e.offset):
        spans.append((total, e))
        total += -(-e.nbytes // _WEIGHT_ALIGNMENT) * _WEIGHT_ALIGNMENT
    return spans, total


def device_weight_bytes(bundle: Bundle, entry: dict) -> int:
    """Device bytes of the weights a GPU target uploads (kv_budget's resident bytes)."""
    return weight_spans(bundle, _weight_map(bundle, entry))[1] if bundle.weights is not None else 0


def _weight_map(bundle: Bundle, entry: dict) -> dict[str, str]:
    """Plan weight -> the layout entry this target's kernels read (its step program's map: a
    bundle with cpu targets too stores the GPU layouts as variant entries), checked against
    the layout."""
    if "program" not in entry:
        return {}
    try:
        weights = unpack_program(bundle.file(entry["program"]).read_bytes()).weights
        check_weight_map(weights, bundle.plan, bundle.layout, f"bundle target {entry['name']}")
    except BundleError as e:
        raise DeviceError(str(e)) from None
    return weights
