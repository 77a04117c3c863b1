"""Runs one engine step on a device. Knows nothing about model architectures.

Two kinds of device (../shared/DESIGN.md §1):
- a *step-program* device (a compiled target whose program runs a whole step: one ctypes call
  on cpu, one graph launch on a GPU) implements `forward(batch) -> logits` and
  `forward_hidden(batch) -> hidden` itself;
- an *op* device (the numpy reference, the oracle) implements the ops one by one, and the
  executor interprets the plan on it, op by op.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rfc.artifacts.plan import Buffer, Op, Plan
from rfc.runtime.batch import StepBatch


class OpDevice(Protocol):
    """What the plan interpreter needs from a device that runs single ops."""

    name: str

    def alloc(self, shape: tuple[int, ...], dtype: str): ...

    def upload_batch(self, batch: StepBatch): ...

    def weight(self, name: str): ...

    def launch(self, op: Op, outs: list, ins: list, weights: list, batch) -> None: ...

    def download(self, buf, rows: int) -> np.ndarray: ...


class StepDevice(Protocol):
    """A device that runs a compiled step program."""

    name: str

    def forward(self, batch: StepBatch) -> np.ndarray: ...  # float32[R, vocab]

    def forward_hidden(self, batch: StepBatch) -> np.ndarray: ...  # float32[R, n_embd]


@dataclass(frozen=True)
class DeviceToken:
    """A token the device drew for a logit row; token < 0: the row had no finite largest logit."""

    token: int
    logprob: float  # its raw log-probability, when the row asked for it


@dataclass(frozen=True)
class SampledRows:
    """A step sampled on the device where it could (`samples_on_device` devices): per logit
    row a DeviceToken, or, for a row the host samples, that row's float32[vocab] logits."""

    tokens: np.ndarray  # int32[R]
    logprobs: np.ndarray  # float32[R]
    logits: dict[int, np.ndarray]  # host rows

    def row(self, i: int) -> "DeviceToken | np.ndarray":
        found = self.logits.get(i)
        return found if found is not None else DeviceToken(int(self.tokens[i]), float(self.logprobs[i]))


class Executor:
    def __init__(self, plan: Plan, device):
        self.plan = plan
        self.device = device
        self._step = device if callable(getattr(device, "forward", None)) else None
        # Resolve weight handles once: per-step work stays a walk over the ops.
        self._ops = [] if self._step else [(op, [device.weight(w) for w in op.weights]) for op in plan.ops]

    def forward(self, batch: StepBatch) -> np.ndarray:
        """Logits float32[R, vocab] for the batch's logit rows."""
        if self._step is not None:
            return self._step.forward(batch)
        return self._interpret(batch, self.plan.output_logits)

    @property
    def host_sampling(self):
        """The device's host sampling kernels (runtime/sampling_kernels.py), or None."""
        return getattr(self.device, "host_sampling", None)

    @property
    def samples_on_device(self) -> bool:
        return bool(getattr(self._step, "samples_on_device", False))

    def forward_sampled(self, batch: StepBatch, rows: list) -> SampledRows:
        """One step on a `samples_on_device` device; rows[i] is (Sampler, wants its logprob)
        for a row the device may sample, None for a row the host must (grammar, logit_bias,
        top logprobs)."""
        return self._step.forward_sampled(batch, rows)

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        """The final normalized hidden states float32[R, n_embd] for the batch's logit rows
        (what the output norm writes: llama.cpp's embeddings)."""
        if self._step is not None:
            return self._step.forward_hidden(batch)
        return self._interpret(batch, self.plan.output_hidden)

    def _interpret(self, batch: StepBatch, output: str) -> np.ndarray:
        sizes = {"T": batch.num_tokens, "R": batch.num_rows}
        dev = self.device
        bufs = {b.name: dev.alloc(_resolve(b, sizes), b.dtype) for b in self.plan.buffers}
        dev_batch = dev.upload_batch(batch)
        bufs[self.plan.input_tokens] = dev_batch.tokens
        # Stop at the last op writing the output: the hidden state needs no lm head.
        last = max(i for i, (op, _) in enumerate(self._ops) if output in op.outputs)
        for op, weights in self._ops[: last + 1]:
            dev.launch(op, [bufs[n] for n in op.outputs], [bufs[n] for n in op.inputs], weights, dev_batch)
        return dev.download(bufs[output], batch.num_rows)


def _resolve(buffer: Buffer, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d] if isinstance(d, str) else d for d in buffer.shape)
