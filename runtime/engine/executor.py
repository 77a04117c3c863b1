"""Runs one engine step on a device: the engine's handle on its model's device (the device
interface is runtime/core/device.py)."""

from typing import TYPE_CHECKING

import numpy as np

from rfc.artifacts.plan import Plan
from rfc.runtime.core.device import Device, PendingRows, SampledRows
from rfc.runtime.core.step import StepBatch

if TYPE_CHECKING:
    from rfc.runtime.core.sampling_kernels import SamplingKernels


class Executor:
    """The engine's handle on its model's device: a Device that hands every call on."""

    def __init__(self, plan: Plan, device: Device):
        self.plan = plan
        self.device = device

    @property
    def samples_on_device(self) -> bool:
        return self.device.samples_on_device

    @property
    def host_sampling(self) -> "SamplingKernels | None":
        return self.device.host_sampling

    def forward(self, batch: StepBatch) -> np.ndarray:
        return self.device.forward(batch)

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        return self.device.forward_hidden(batch)

    def forward_scores(self, batch: StepBatch) -> np.ndarray:
        return self.device.forward_scores(batch)

    def forward_sampled(self, batch: StepBatch, rows: list) -> SampledRows:
        return self.device.forward_sampled(batch, rows)

    @property
    def runs_ahead(self) -> bool:
        return self.device.runs_ahead

    def launch_sampled(self, batch: StepBatch, rows: list, feed: tuple[tuple[int, int], ...] = ()) -> PendingRows:
        return self.device.launch_sampled(batch, rows, feed)

    @property
    def copies_kv(self) -> bool:
        return self.device.copies_kv

    def copy_kv(self, src: np.ndarray, dst: np.ndarray) -> None:
        self.device.copy_kv(src, dst)

    @property
    def copies_state(self) -> bool:
        """The device copies recurrent-state slots (copy_state): prefix caching's checkpoints."""
        return self.device.copies_state

    def copy_state(self, src: list[int], dst: list[int]) -> None:
        """Recurrent-state slot src[i] into slot dst[i], in order (prefix caching's checkpoints
        and restores, runtime/engine/state_cache.py): devices of plans with state have it."""
        self.device.copy_state(src, dst)
