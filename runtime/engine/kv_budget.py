"""How many KV-cache blocks a model gets when no `--kv-pages` names them: from a memory
budget, not from the context length (docs/design.md: the engine).

- GPU (hip, cuda): as vLLM. The server may use `utilization × total` bytes of device memory;
  what is already in use (other processes, models loaded before this one) and what this model
  keeps resident besides its KV cache (weights, the step program's activation arena) come
  off it, and the rest is the KV pool:
  `utilization × total − (total − free) − resident`. `free`/`total` come from the driver
  just before the device is created, so `resident` is counted from the bundle rather than
  measured after the allocation. The pool is capped at what the server can use: its
  `max_sequences` full contexts, so a small model does not take the whole GPU.
- Host (cpu, ref): a byte budget (`--kv-memory`: bytes, or a fraction of the host's
  physical memory; default 25 %), capped at 4 full contexts (the default before budgets).

Several models on one server follow the `--kv-pages` policy: models given pages get exactly
those; the budget is split evenly over the others. On a GPU the budget is measured as each
model loads (in order), so a model takes `1/k` of what is left, k being the budgeted models
that load from it on, after reserving the weights of every model still to load.

A hybrid model's recurrent-state slots (one per sequence that may run at once, each the
plan's StateSpec.slot_bytes) come off the budget first; the KV pages get the rest.

A budget that does not hold one full context of one sequence refuses the model (vLLM's
"max_model_len ... larger than the maximum number of tokens that can be stored in KV cache").
A full context is the served one: `--ctx-size` (vLLM's `--max-model-len`) shortens it, and
with it the pool's cap and the least budget a model needs.
"""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from rfc.artifacts.kv_cache_type import CacheType, KvCacheTypes
from rfc.artifacts.plan import KVSpec
from rfc.runtime.devices import DeviceKind

DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_HOST_KV_FRACTION = 0.25
HOST_CONTEXTS = 4  # the host pool's cap, in full contexts (the default before budgets)
GPU_FAMILIES = tuple(k.value for k in DeviceKind if k.is_gpu)  # the --device names whose KV lives on a GPU
_KV_ITEMSIZE = {"f16": 2, "f32": 4}
_SIZE = re.compile(r"(\d+)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class KvBudgetError(ValueError):
    """The budget cannot hold one full context: the model cannot be served as configured."""


@dataclass(frozen=True)
class KvShare:
    """This model's part of the budget: `models` budgeted models in all, `left` of them (this
    one included) loading from this one on, and `reserve_bytes` of device memory to leave for
    the weights of the models loading after it."""

    models: int = 1
    left: int = 1
    reserve_bytes: int = 0


def parse_utilization(value: object) -> float:
    """--gpu-memory-utilization: a number in (0, 1]."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        f = float("nan")
    if not 0.0 < f <= 1.0:  # also refuses nan
        raise ValueError(f"--gpu-memory-utilization {value}: expected a fraction of device memory in (0, 1], e.g. 0.9")
    return f


def parse_kv_memory(value: str) -> float | int:
    """--kv-memory: a fraction of host memory in (0, 1] ("0.25"), or a size in bytes with an
    optional binary unit ("8GiB", "512M", "1073741824")."""
    text = str(value).strip()
    if "." in text:
        try:
            f = float(text)
        except ValueError:
            f = float("nan")
        if 0.0 < f <= 1.0:
            return f
    else:
        m = _SIZE.fullmatch(text)
        if m:
            n = int(m.group(1)) * _UNITS[(m.group(2) or "")[:1].lower()]
            if n > 0:
                return n
    raise ValueError(
        f"--kv-memory {value}: expected a fraction of host memory in (0, 1] (e.g. 0.25) or a size (e.g. 8GiB)"
    )


def kv_itemsize(device: str, kv: KVSpec) -> int:
    """Bytes per cached K or V element on `device`: the cpu device stores f16 always."""
    return 2 if device == "cpu" else _KV_ITEMSIZE.get(kv.dtype, 4)


def block_bytes(kv: KVSpec, block_size: int, itemsize: int) -> int:
    """Bytes of one KV block: K and V of every layer for block_size tokens."""
    return 2 * kv.n_layers * block_size * kv.n_kv_heads * kv.head_dim * itemsize


def token_bytes(device: str, kv: KVSpec, types: KvCacheTypes = KvCacheTypes()) -> int:
    """Bytes one cached token takes on `device`: K and V of every layer in the chosen cache
    types (a q8_0 row is 34 bytes per 32 values, q4_0 18, f16 the device's own itemsize)."""
    width = kv.n_kv_heads * kv.head_dim
    itemsize = kv_itemsize(device, kv)
    rows = (width * itemsize if t is CacheType.F16 else t.row_bytes(width) for t in (types.k, types.v))
    return kv.n_layers * sum(rows)


def gpu_budget(free: int, total: int, utilization: float, resident: int, share: KvShare = KvShare()) -> int:
    """Bytes of KV cache this model may have on a GPU (may be negative: nothing fits)."""
    left = int(utilization * total) - (total - free) - resident - share.reserve_bytes
    return left // max(1, share.left) if left > 0 else left


def host_budget(kv_memory: float | int | None, host_total: int, share: KvShare = KvShare()) -> int:
    """Bytes of KV cache this model may have in host memory."""
    if kv_memory is None:
        kv_memory = DEFAULT_HOST_KV_FRACTION
    total = int(kv_memory * host_total) if isinstance(kv_memory, float) else int(kv_memory)
    return total // max(1, share.models)


def blocks_within(
    budget: int, per_block: int, context_length: int, block_size: int, cap_contexts: int, hint: str
) -> int:
    """The blocks a budget holds, at most `cap_contexts` full contexts; KvBudgetError when it
    holds less than one."""
    context_blocks = -(-context_length // block_size)
    need = context_blocks * per_block
    if budget < need:
        raise KvBudgetError(
            f"not enough memory for the KV cache: one full context of {context_length} tokens needs "
            f"{fmt_bytes(need)} ({need} bytes), the budget is {fmt_bytes(max(budget, 0))} "
            f"({max(budget, 0)} bytes); {hint}"
        )
    if per_block == 0:  # no attention layer (mamba2): the blocks only count positions, at no cost
        return cap_contexts * context_blocks
    return max(context_blocks, min(budget // per_block, cap_contexts * context_blocks))


def fmt_bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.2f} {unit}"
    return f"{n} B"


def host_memory_bytes() -> int:
    """Physical memory of this host."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


@dataclass(frozen=True)
class KvSizing:
    """The inputs the loader has for sizing the pool of one model."""

    device: str  # the DeviceChoice's name
    kv: KVSpec
    block_size: int
    context_length: int  # the served context (--ctx-size, else the trained one): one full context is this many tokens
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    kv_memory: float | int | None = None
    max_sequences: int = HOST_CONTEXTS
    share: KvShare = KvShare()
    state_bytes: int = 0  # the recurrent-state pool of a hybrid model: taken from the budget before the KV pages
    cache_types: KvCacheTypes = KvCacheTypes()  # --cache-type-k/-v: a quantized cache holds more pages per byte


def budget_blocks(
    s: KvSizing,
    memory_info: Callable[[], tuple[int, int]] | None = None,
    resident_bytes: int = 0,
    host_total: int | None = None,
) -> tuple[int, int]:
    """(blocks, budget bytes) for one model. `memory_info` gives (free, total) device bytes
    (a GPU device); `resident_bytes` is what the model keeps on the device besides the KV."""
    per_block = s.block_size * token_bytes(s.device, s.kv, s.cache_types)
    if s.device in GPU_FAMILIES and memory_info is not None:
        free, total = memory_info()
        budget = gpu_budget(free, total, s.gpu_memory_utilization, resident_bytes, s.share)
        cap = max(1, s.max_sequences)
        hint = (
            f"raise --gpu-memory-utilization (now {s.gpu_memory_utilization:g}; {fmt_bytes(free)} of "
            f"{fmt_bytes(total)} free, {fmt_bytes(resident_bytes)} of weights and activations), set --kv-pages, "
            f"or serve a shorter context with --ctx-size"
        )
    else:
        budget = host_budget(s.kv_memory, host_total if host_total is not None else host_memory_bytes(), s.share)
        cap = HOST_CONTEXTS
        hint = "raise --kv-memory, set --kv-pages, or serve a shorter context with --ctx-size"
    budget -= s.state_bytes
    return blocks_within(budget, per_block, s.context_length, s.block_size, cap, hint), budget
