"""The GPU kernels one op at a time: each op's kernel bound as a one-launch program.

The compiler plans the bundle's kernels again (gpu_plan.plan_kernels: the same plan, layout,
weight map and target give the same kernels, checked against the manifest's op_kernels) and lowers each
plan op to the Launch of its kernel (gpu_plan.op_launch: ArgSlots from KERNEL_ARGS, the one
argument table). `GpuOpDevice.launch` binds that launch with the runtime's own binder
(gpu_program.bind_launch), the op's buffers, weights and batch arrays as its pointers, and
enqueues it; weights and KV cache are the runtime's GpuMemory. So the kernel tests run every
kernel as the step program runs it, without a per-op path in the runtime.
"""

import weakref
from dataclasses import dataclass

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.codeobject import KernelInfo
from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.artifacts.plan import KVSpec, Op
from rfc.artifacts.program import ArgKind, ArgSlot, unpack_program
from rfc.artifacts.targets import KernelArg, TargetEntry
from rfc.compiler.codegen.gpu_plan import ARG_SIZES, KernelSpec, op_launch, plan_kernels
from rfc.compiler.targets import parse_target
from rfc.runtime.core.step import StepBatch
from rfc.runtime.devices import DeviceError
from rfc.runtime.devices.gpu import GpuMemory, check_code_object_args, check_launch
from rfc.runtime.devices.gpu_driver import Driver
from rfc.runtime.devices.gpu_program import bind_launch
from rfc.runtime.core.device import InterpretedDevice
from tests.kernels.kit import op_key

_DTYPES = {"f32": np.float32, "i32": np.int32}


@dataclass(eq=False)
class DeviceArray:
    ptr: int
    shape: tuple[int, ...]
    dtype: str  # "f32" or "i32"; for a weight, its storage format ("Q4_K", ...)


@dataclass(frozen=True)
class DeviceBatch:
    """A StepBatch's arrays on the device, and the step's scalars (gpu_program.STEP_SCALARS)."""

    tokens: DeviceArray
    positions: DeviceArray
    slots: DeviceArray
    seq_of_token: DeviceArray
    block_tables: DeviceArray
    logit_rows: DeviceArray
    scalars: dict[str, int]


class _Pool:
    """Reuses freed device allocations of the same size: the plan interpreter allocates every
    activation buffer every step, and driver mallocs are slow."""

    def __init__(self, driver: Driver):
        self._driver = driver
        self._free: dict[int, list[int]] = {}

    def allocate(self, nbytes: int) -> int:
        free = self._free.get(nbytes)
        return free.pop() if free else self._driver.malloc(nbytes)

    def release(self, nbytes: int, ptr: int) -> None:
        self._free.setdefault(nbytes, []).append(ptr)


class GpuOpDevice(InterpretedDevice):
    """ReferenceDevice's op-by-op interface over a GPU driver: each op its kernel, alone."""

    def __init__(
        self,
        driver: Driver,
        bundle: Bundle,
        entry: TargetEntry,
        code: dict[str, KernelInfo],
        image: bytes,
        kv: KVSpec,
        num_blocks: int,
        block_size: int,
        cache_types: KvCacheTypes = KvCacheTypes(),
    ):
        super().__init__(bundle.plan)
        specs = check_kernels(bundle, entry, code)
        self._launches = {
            op_key(op): op_launch(bundle.plan, op, specs[name]) for op, name in zip(bundle.plan.ops, entry.op_kernels)
        }
        self._driver = driver
        # an op kernel that no list launches is not in the code object (op_only_kernels): its
        # arguments laid out as the code objects lay out the others'
        self._layouts = {**{n: declared_layout(specs[n].args) for n in entry.op_kernels}, **entry.kernel_args}
        module = driver.load_module(image)
        self._functions = {name: driver.function(module, name) for name in set(entry.op_kernels)}
        self._memory = GpuMemory(driver, bundle, entry, kv, num_blocks, block_size, cache_types)
        self.cache_types = cache_types
        self._k_cache, self._v_cache = self._memory.k_cache, self._memory.v_cache
        self._entries = bundle.layout.by_name()
        self._pool = _Pool(driver)
        self._stream = driver.stream_create()

    # -- memory -------------------------------------------------------------------------------
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
        scalars = {
            "n_tokens": batch.num_tokens,
            "n_rows": batch.num_rows,
            "n_seqs": len(batch.context_lens),
            "table_width": int(batch.block_tables.shape[1]),
            "block_size": int(batch.block_size),
            "k_type": self.cache_types.k.code,
            "v_type": self.cache_types.v.code,
        }
        arrays = {
            n: self._upload(getattr(batch, n))
            for n in ("tokens", "positions", "slots", "seq_of_token", "block_tables", "logit_rows")
        }
        return DeviceBatch(**arrays, scalars=scalars)

    def download(self, buf: DeviceArray, rows: int) -> np.ndarray:
        out = np.empty((rows, *buf.shape[1:]), dtype=_DTYPES[buf.dtype])
        if out.size:
            self._driver.copy_to_host_async(out.ctypes.data, buf.ptr, out.nbytes, self._stream)
        self._driver.stream_synchronize(self._stream)
        return out.astype(np.float32, copy=False)

    def weight(self, name: str) -> DeviceArray:
        e = self._entries[self._memory.weight_entry(name)]
        return DeviceArray(self._memory.weight_address(name), tuple(e.shape), e.format)

    # -- ops ----------------------------------------------------------------------------------
    def launch(self, op: Op, outs: list, ins: list, weights: list, batch: DeviceBatch) -> None:
        """The op's kernel as a one-launch program: its argument slots bound to these buffers,
        weights and batch arrays, the step's scalars from the batch."""
        launch = self._launches.get(op_key(op))
        if launch is None:
            raise DeviceError(f"no kernel in this bundle for op {op.kind} {op.inputs} -> {op.outputs}")
        buffers = {**dict(zip(op.inputs, ins)), **dict(zip(op.outputs, outs))}
        named = dict(zip(op.weights, weights))

        def pointer(slot: ArgSlot) -> int:
            if slot.kind is ArgKind.KV:
                return self._memory.kv_address(slot.ref, slot.value)
            if slot.kind is ArgKind.BATCH:
                return getattr(batch, slot.ref).ptr
            return (named if slot.kind is ArgKind.WEIGHT else buffers)[slot.ref].ptr

        bound = bind_launch(launch, self._layouts[launch.kernel], self._functions[launch.kernel], pointer)
        bound.enqueue(self._driver, batch.scalars, self._stream)


# -- the load-time check of a bundle's per-op kernels -------------------------------------------------


def check_kernels(bundle: Bundle, entry: TargetEntry, code: dict[str, KernelInfo]) -> dict[str, KernelSpec]:
    """The kernel of each plan op (the manifest's op_kernels) as the compiler plans it, against
    the manifest's argument layout and the code object; returns the compiler's specs by name.
    DeviceError naming the first mismatch."""
    where = f"bundle target {entry.name}"
    # the weight planner's map, as the compiler had it: a bundle with cpu targets too stores
    # the GPU layouts as variant entries
    weights = unpack_program(bundle.file(entry.program).read_bytes()).weights if entry.program else {}
    specs, op_kernels = plan_kernels(parse_target(entry.name), bundle.plan, bundle.layout, weights)
    by_name = {s.name: s for s in specs}
    ops, names = bundle.plan.ops, entry.op_kernels
    if len(names) != len(ops):
        raise DeviceError(f"{where}: {len(names)} op kernels for {len(ops)} plan ops")
    if list(names) != op_kernels:
        raise DeviceError(f"{where}: the manifest's op kernels are not the ones the compiler plans for this plan")
    checked = set()
    for i, (op, name) in enumerate(zip(ops, names)):
        if name in checked or (name not in entry.kernel_args and name not in code):
            continue  # no list launches it: not built (compiler/codegen/gpu.py op_only_kernels)
        _check_manifest_args(where, name, f"op {i} ({op.kind})", by_name[name], entry.kernel_args.get(name))
        check_code_object_args(where, name, entry.kernel_args[name], code.get(name))
        check_launch(where, name, by_name[name].threads, code[name], entry.wave_size)
        checked.add(name)
    return by_name


def declared_layout(args) -> tuple[KernelArg, ...]:
    """A kernel's arguments (KernelSpec.args: name, kind) at the offsets a code object gives them:
    each at the next multiple of its size (test_gpu_codegen holds every built kernel's layout to
    that)."""
    layout, offset = [], 0
    for name, kind in args:
        size = ARG_SIZES[kind]
        offset = -(-offset // size) * size
        layout.append(KernelArg(name, size, offset))
        offset += size
    return tuple(layout)


def _check_manifest_args(where: str, kernel: str, op: str, spec: KernelSpec, declared) -> None:
    if declared is None:
        raise DeviceError(f"{where}: kernel {kernel} ({op}) has no argument layout in the manifest")
    for j in range(max(len(spec.args), len(declared))):
        want = (spec.args[j][0], ARG_SIZES[spec.args[j][1]]) if j < len(spec.args) else None
        got = (declared[j][0], declared[j][1]) if j < len(declared) else None
        if want != got:
            raise DeviceError(
                f"{where}: kernel {kernel} ({op}) argument {j}: the bundle declares "
                f"{_describe(got)}, the compiler plans {_describe(want)}"
            )


def _describe(arg) -> str:
    return "nothing" if arg is None else f"{arg[0]} ({arg[1]} bytes)"
