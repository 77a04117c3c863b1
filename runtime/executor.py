"""Runs one engine step on a device. Knows nothing about model architectures.

Two kinds of device (../shared/DESIGN.md §1):
- a *step-program* device (a compiled target whose program runs a whole step: one ctypes call
  on cpu, one graph launch on a GPU) implements `forward(batch) -> logits` and
  `forward_hidden(batch) -> hidden` itself;
- an *op* device (the numpy reference, the oracle) implements the ops one by one, and the
  executor interprets the plan on it, op by op.
"""

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
