"""Recurrent state in host memory: the pool of per-sequence state slots a host device keeps
beside its KV cache (the reference device's, and the cpu step program's, which gets the
pool's base address).

A slot is one float32 record holding every StateTensor of the plan (artifacts/plan.py
StateSpec), tensor i at `spec.offset(i)` floats. Which sequence holds which slot is the
BlockManager's business (runtime/engine/kv_cache.py); the batch names each sequence's slot
(StepBatch.state_slots). How an op uses its tensor:

    state = seq_state(pool, spec, attrs["state"], batch, s)  # sequence s's, writable; zeros
                                                             # when its chunk starts at position 0

Copies between slots (`copy`) checkpoint a state and restore it: the engine's prefix cache
keeps the state of a prompt prefix in a slot of its own.
"""

import numpy as np

from rfc.artifacts.plan import StateSpec
from rfc.runtime.devices import DeviceError


class HostStatePool:
    def __init__(self, spec: StateSpec, slots: int):
        self.spec = spec
        self.slots = slots
        self.floats = spec.slot_floats
        self.data = np.zeros((slots, self.floats), np.float32)
        self._offsets = [spec.offset(i) for i in range(len(spec.tensors))]

    def tensor(self, index: int, slot: int) -> np.ndarray:
        """State tensor `index` of `slot`: a writable view of its shape."""
        if not 0 <= slot < self.slots:
            raise DeviceError(
                f"state slot {slot} is not one of the {self.slots} this device holds "
                "(a plan with recurrent state runs only with a state slot per sequence)"
            )
        t = self.spec.tensors[index]
        off = self._offsets[index]
        return self.data[slot, off : off + t.elements].reshape(t.shape)

    def copy(self, src: list[int], dst: list[int]) -> None:
        """Slot src[i]'s whole state into slot dst[i] (checkpoint, restore)."""
        for s, d in zip(src, dst):
            if not (0 <= s < self.slots and 0 <= d < self.slots):
                raise DeviceError(f"state copy {s} -> {d} names a slot outside the {self.slots} of this device")
            self.data[d] = self.data[s]


class HostState:
    """The recurrent-state side of a host device (reference, cpu step program): its pool of
    slots in host memory, sized by the loader. A device using it names its plan's StateSpec
    (`state_spec`)."""

    state: HostStatePool | None = None
    copies_state = True  # host arrays: prefix caching's state checkpoints are numpy copies

    @property
    def state_spec(self) -> StateSpec:
        raise NotImplementedError

    def alloc_state(self, slots: int) -> None:
        self.state = HostStatePool(self.state_spec, slots)

    def copy_state(self, src: list[int], dst: list[int]) -> None:
        if self.state is not None:
            self.state.copy(src, dst)

    @property
    def state_pool(self) -> np.ndarray | None:
        """The pool's float32 [slots, slot floats] array (None: no pool)."""
        return self.state.data if self.state is not None else None


def seq_state(pool: "HostStatePool | None", spec: StateSpec, index: int, batch, s: int) -> np.ndarray:
    """Sequence s's StateTensor `index` for one op over the batch, writable: its slot's, zeroed
    when the chunk starts at position 0. With no pool or no slot (a caller that drives the
    device with whole prompts from position 0: teacher forcing, kernel tests), a fresh zero
    array; a chunk that continues a sequence then has no state to read: DeviceError."""
    fresh = int(batch.positions[batch.seq_start[s]]) == 0
    slot = int(batch.state_slots[s]) if len(batch.state_slots) > s else -1
    if pool is None or slot < 0:
        if not fresh:
            raise DeviceError("a recurrent layer needs the sequence's state, and the step names no state slot for it")
        return np.zeros(spec.tensors[index].shape, dtype=np.float32)
    view = pool.tensor(index, slot)
    if fresh:
        view[...] = 0.0
    return view
