"""The GPU device: a bundle target's step program (gpu_program.py) over a driver (gpu_driver.py).

At load, every kernel the program launches is checked against the code object (its argument
layout, threads and wave size); the weights the target reads are uploaded once and the paged
KV cache is allocated (GpuMemory); the step program is bound. Each engine step is then one
copy in, one graph launch and one copy out (gpu_program.StepRunner).
"""

from collections.abc import Iterable

import numpy as np

from rfc.artifacts.bundle import Bundle
from rfc.artifacts.codeobject import CodeObjectError, KernelInfo
from rfc.artifacts.errors import BundleError
from rfc.artifacts.kv_cache_type import CacheType, KvCacheTypes
from rfc.artifacts.layout import TensorEntry
from rfc.artifacts.plan import KVSpec
from rfc.artifacts.program import ArgKind, Launch, unpack_program
from rfc.artifacts.targets import KernelArg, TargetEntry, target_entry
from rfc.artifacts.validate import check_weight_map
from rfc.runtime.core.step import StepBatch
from rfc.runtime.devices import DeviceError, DeviceKind
from rfc.runtime.devices.gpu_driver import Driver, GpuDriver
from rfc.runtime.devices.gpu_program import StepRunner, paired_runs
from rfc.runtime.core.device import PendingRows, SampledRows, require_logits, require_scores

_KV_ITEMSIZE = {"f16": 2, "f32": 4}
_WEIGHT_ALIGNMENT = 256  # device offsets of uploaded weights: 128-bit loads and more


def open_device(
    driver: GpuDriver,
    bundle: Bundle,
    target: str,
    kv: KVSpec,
    num_blocks: int,
    block_size: int,
    context_length: int | None = None,
    cache_types: KvCacheTypes = KvCacheTypes(),
) -> "GpuDevice":
    """The engine's GPU device for bundle target `target` on `driver`'s GPU; `cache_types`: how
    its KV cache stores K and V (--cache-type-k/-v)."""
    entry = target_entry(bundle.manifest, target)
    if entry is None or not entry.kernels:
        raise DeviceError(f"bundle target {target} has no compiled kernels")
    data = bundle.file(entry.kernels).read_bytes()
    try:
        code, image = driver.dialect.read_code(data, target)
    except CodeObjectError as e:
        raise DeviceError(f"{entry.kernels}: {e}") from e
    return GpuDevice(driver, bundle, entry, code, image, kv, num_blocks, block_size, context_length, cache_types)


class GpuDevice:
    """A runtime.core.device.Device: steps run by the bundle target's step program; with a
    sampling kernel in the bundle the device samples the rows it may."""

    host_sampling = None  # the host samples with numpy: the GPU bundle has no cpu library
    samples_on_device = False

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
        context_length: int | None = None,
        cache_types: KvCacheTypes = KvCacheTypes(),
    ):
        if not entry.program:
            raise DeviceError(f"bundle target {entry.name} has no step program: recompile the model with this rfc")
        self.name = DeviceKind(entry.family.value)
        program = unpack_program(bundle.file(entry.program).read_bytes())
        cache_types.check(kv, bundle.plan.kv_geometries())  # whole blocks, one row geometry
        if cache_types.quantized and not takes_kv_types(program.launches):
            raise DeviceError(
                f"bundle target {entry.name}'s kernels predate quantized KV caches: recompile the model "
                f"with this rfc for a {cache_types.describe()} cache"
            )
        self.cache_types = cache_types
        sample = program.extra.get("sample")
        # an encoder (no logits) samples nothing, whatever its program holds
        sample = sample if isinstance(sample, dict) and "kernel" in sample and bundle.plan.generates else None
        launched = {launch.kernel: launch for launch in program.every_launch()}
        check_kernels(entry, launched.values(), code)
        if sample is not None:
            check_code_object_args(
                f"bundle target {entry.name}",
                sample["kernel"],
                _layout(entry, sample["kernel"]),
                code.get(sample["kernel"]),
            )
        self._driver = driver
        self._memory = GpuMemory(driver, bundle, entry, kv, num_blocks, block_size, cache_types)
        module = driver.load_module(image)
        functions = {name: driver.function(module, name) for name in launched}
        plan = bundle.plan
        # a sequence holds at most the served context (--ctx-size), so its table this many blocks
        width = min(num_blocks, -(-(context_length or plan.context_length) // block_size))
        self.runner = StepRunner(
            driver,
            program,
            entry.kernel_args,
            functions,
            weight_ptr=self._memory.weight_address,
            kv_ptr=self._memory.kv_address,
            vocab=plan.vocab_size,
            n_embd=plan.n_embd,
            logits=plan.output_logits,
            hidden=plan.output_hidden,
            scores=(plan.output_scores, plan.buffer(plan.output_scores).shape[1]) if plan.output_scores else None,
            block_size=block_size,
            table_width=width,
            sample=(driver.function(module, sample["kernel"]), sample) if sample is not None else None,
            kv_types=(cache_types.k.code, cache_types.v.code),
        )
        self._plan = plan
        self.samples_on_device = self.runner.sampling is not None
        self.runs_ahead = self.samples_on_device and self.runner.sampling.runs_ahead

    def forward(self, batch: StepBatch) -> np.ndarray:
        require_logits(self._plan)
        return self.runner.run(batch, self._plan.output_logits)

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        return self.runner.run(batch, self._plan.output_hidden)

    def forward_scores(self, batch: StepBatch) -> np.ndarray:
        require_scores(self._plan)
        return self.runner.run(batch, self._plan.output_scores)

    def forward_sampled(self, batch: StepBatch, rows: list) -> SampledRows:
        return self.runner.run_sampled(batch, rows)

    runs_ahead = False

    def launch_sampled(self, batch: StepBatch, rows: list, feed: tuple[tuple[int, int], ...] = ()) -> PendingRows:
        return self.runner.launch_sampled(batch, rows, feed)

    # KV rows are copied on the device, on the step stream: a run of consecutive slots per layer,
    # K and V, in stream order, so the next step sees the copies.
    copies_kv = True

    def copy_kv(self, src: np.ndarray, dst: np.ndarray) -> None:
        kv = self._plan.kv
        slots = self._memory.slots
        src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
        if (
            src.shape != dst.shape
            or src.ndim != 1
            or (len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= slots))
        ):
            raise DeviceError(f"a KV copy names slots outside the {slots} of this device")
        runs = paired_runs(zip(src.tolist(), dst.tolist()))  # (first source slot, first destination slot, slots)
        if not runs:
            return
        stream = self.runner.stream
        for layer in range(kv.n_layers):
            for which in ("k", "v"):
                base, row = self._memory.kv_address(which, layer), self._memory.row_bytes[which]
                for s0, d0, n in runs:
                    self._driver.copy_on_device_async(base + d0 * row, base + s0 * row, n * row, stream)

    # -- recurrent state: a pool of slots in device memory; the launches that read it get its base
    state_pool = None  # no host view: the state lives on the device

    _state_pool: int | None = None  # the pool's device address, once allocated (its slots: runner.state_slots)

    def alloc_state(self, slots: int) -> None:
        nbytes = slots * self._plan.state.slot_bytes
        ptr = self._memory._alloc(max(4, nbytes))
        # a slot's first chunk zeroes it anyway
        self._driver.copy_to_device(ptr, np.zeros(max(1, nbytes // 4), np.float32))
        self.runner.set_state(ptr, slots)
        self._state_pool = ptr

    # State slots are copied on the device, on the step stream, in order (prefix caching's
    # checkpoints and their restores: runtime/engine/state_cache.py), so the next step sees them
    copies_state = True

    def copy_state(self, src: list[int], dst: list[int]) -> None:
        """Slot src[i]'s whole state into slot dst[i], in order."""
        if self._state_pool is None:
            raise DeviceError(f"the {self.name} device holds no recurrent-state slots")
        base, slots = self._state_pool, self.runner.state_slots
        if len(src) != len(dst) or any(not (0 <= s < slots and 0 <= d < slots) for s, d in zip(src, dst)):
            raise DeviceError(f"a state copy names slots outside the {slots} of this device")
        size = self._plan.state.slot_bytes
        for s, d in zip(src, dst):
            if s != d:
                self._driver.copy_on_device_async(base + d * size, base + s * size, size, self.runner.stream)

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, from the driver (/health's gpu.memory)."""
        return self._driver.memory_info()

    def close(self) -> None:
        self._driver.synchronize()
        self.runner.close()
        self._memory.close()


class GpuMemory:
    """What a GPU target keeps on the device besides the step program's arena: the weights it
    reads, uploaded once at aligned offsets, and the paged KV cache ([layer, slot, row] for K
    and for V: a row of the plan's KV dtype, or of q8_0 / q4_0 blocks as `cache_types` say,
    its real bytes: KvCacheTypes.row_bytes)."""

    def __init__(
        self,
        driver: Driver,
        bundle: Bundle,
        entry: TargetEntry,
        kv: KVSpec,
        num_blocks: int,
        block_size: int,
        cache_types: KvCacheTypes = KvCacheTypes(),
    ):
        if kv.dtype not in _KV_ITEMSIZE:
            raise DeviceError(f"no GPU KV cache of {kv.dtype} (supported: {', '.join(_KV_ITEMSIZE)})")
        self._driver = driver
        self._owned: list[int] = []
        self._weight_of = _weight_map(bundle, entry)
        self._device_offset: dict[str, int] = {}
        self.weights = self._upload_weights(bundle)
        self.slots = num_blocks * block_size
        self.row_bytes = {"k": _row_bytes(kv, cache_types.k), "v": _row_bytes(kv, cache_types.v)}
        self.k_cache = self._alloc(max(1, kv.n_layers * self.slots * self.row_bytes["k"]))
        self.v_cache = self._alloc(max(1, kv.n_layers * self.slots * self.row_bytes["v"]))

    def _alloc(self, nbytes: int) -> int:
        ptr = self._driver.malloc(nbytes)
        self._owned.append(ptr)
        return ptr

    def _upload_weights(self, bundle: Bundle) -> int:
        """Uploads the entries this target reads, packed at aligned offsets: a bundle with cpu
        targets too holds layouts of the same weights the GPU never reads."""
        if bundle.weights is None:
            return 0
        host = np.frombuffer(bundle.weights, dtype=np.uint8)
        spans, total = weight_spans(bundle, self._weight_of)
        ptr = self._alloc(max(1, total))
        for at, e in spans:
            self._device_offset[e.name] = at
            self._driver.copy_to_device(ptr + at, host[e.offset : e.offset + e.nbytes])
        return ptr

    def weight_entry(self, name: str) -> str:
        """The layout entry this target reads for plan weight `name` (a layout entry: itself)."""
        return self._weight_of.get(name, name)

    def weight_address(self, name: str) -> int:
        """Device address of a plan weight or of a layout entry this target reads."""
        return self.weights + self._device_offset[self.weight_entry(name)]

    def kv_address(self, which: str, layer: int) -> int:
        """Device address of layer `layer` of the K ("k") or V ("v") cache."""
        return (self.k_cache if which == "k" else self.v_cache) + layer * self.slots * self.row_bytes[which]

    def close(self) -> None:
        for p in self._owned:
            self._driver.free(p)
        self._owned.clear()


def _row_bytes(kv: KVSpec, t: CacheType) -> int:
    """Bytes of one token's K or V row of one layer stored as `t` (f16: the plan's KV dtype)."""
    width = kv.n_kv_heads * kv.head_dim
    return width * _KV_ITEMSIZE[kv.dtype] if t is CacheType.F16 else t.row_bytes(width)


def takes_kv_types(launches: Iterable[Launch]) -> bool:
    """Whether every launch that reads or writes the KV cache takes its types (the k_type
    scalar): bundles compiled before quantized GPU caches have F16-only kernels."""
    return all(
        any(a.kind is ArgKind.SCALAR and a.ref == "k_type" for a in launch.args)
        for launch in launches
        if any(a.kind is ArgKind.KV for a in launch.args)
    )


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


def device_weight_bytes(bundle: Bundle, entry: TargetEntry) -> int:
    """Device bytes of the weights a GPU target uploads (kv_budget's resident bytes)."""
    return weight_spans(bundle, _weight_map(bundle, entry))[1] if bundle.weights is not None else 0


def _weight_map(bundle: Bundle, entry: TargetEntry) -> dict[str, str]:
    """Plan weight -> the layout entry this target's kernels read (its step program's map: a
    bundle with cpu targets too stores the GPU layouts as variant entries), checked against
    the layout."""
    if not entry.program:
        return {}
    try:
        weights = unpack_program(bundle.file(entry.program).read_bytes()).weights
        check_weight_map(weights, bundle.plan, bundle.layout, f"bundle target {entry.name}")
    except BundleError as e:
        raise DeviceError(str(e)) from None
    return weights


# -- load-time checks: what is launched against the code object --------------------------------------


def check_kernels(entry: TargetEntry, launches: Iterable[Launch], code: dict[str, KernelInfo]) -> None:
    """Each launch's kernel against the code object: its argument layout as the manifest
    declares it, its threads and the target's wave size. DeviceError naming the first mismatch."""
    where = f"bundle target {entry.name}"
    for launch in launches:
        layout = _layout(entry, launch.kernel)
        check_code_object_args(where, launch.kernel, layout, code.get(launch.kernel))
        check_launch(where, launch.kernel, launch.threads, code[launch.kernel], entry.wave_size)


def _layout(entry: TargetEntry, kernel: str) -> tuple[KernelArg, ...]:
    layout = entry.kernel_args.get(kernel)
    if layout is None:
        raise DeviceError(f"step program: kernel {kernel} has no argument layout in the manifest")
    return layout


def check_code_object_args(where: str, kernel: str, declared: tuple[KernelArg, ...], info: KernelInfo | None) -> None:
    if info is None:
        raise DeviceError(f"{where}: kernel {kernel} is not in the code object")
    if len(info.args) != len(declared):
        raise DeviceError(
            f"{where}: kernel {kernel} takes {len(info.args)} arguments in the code object, "
            f"{len(declared)} in the manifest"
        )
    for j, (arg, (name, size, offset)) in enumerate(zip(info.args, declared)):
        if (arg.size, arg.offset) != (size, offset) or (arg.name is not None and arg.name != name):
            raise DeviceError(
                f"{where}: kernel {kernel} argument {j} ({name}): the code object has "
                f"{arg.name or '?'} ({arg.size} bytes at offset {arg.offset}), the manifest "
                f"{name} ({size} bytes at offset {offset})"
            )


def check_launch(where: str, kernel: str, threads: int, info: KernelInfo, wave: int | None) -> None:
    if info.max_threads is not None and threads > info.max_threads:
        raise DeviceError(f"{where}: kernel {kernel} launches {threads} threads, built for at most {info.max_threads}")
    if info.wave_size is not None and wave is not None and info.wave_size != wave:
        raise DeviceError(f"{where}: kernel {kernel} was built for wave {info.wave_size}, the target says {wave}")
