"""Runs a plan, op by op, on a device. Knows nothing about model architectures."""

from typing import Protocol

import numpy as np

from rfc.artifacts.plan import Buffer, Op, Plan
from rfc.runtime.batch import StepBatch


class Device(Protocol):
    """What the executor needs from a device (reference, cpu, hip, cuda)."""

    name: str

    def alloc(self, shape: tuple[int, ...], dtype: str): ...

    def upload_batch(self, batch: StepBatch): ...

    def weight(self, name: str): ...

    def launch(self, op: Op, outs: list, ins: list, weights: list, batch) -> None: ...

    def download(self, buf, rows: int) -> np.ndarray: ...


class Executor:
    def __init__(self, plan: Plan, device: Device):
        self.plan = plan
        self.device = device
        # Resolve weight handles once: per-step work stays a walk over the ops.
        self._ops = [(op, [device.weight(w) for w in op.weights]) for op in plan.ops]

    def forward(self, batch: StepBatch) -> np.ndarray:
        """Logits float32[R, vocab] for the batch's logit rows."""
        sizes = {"T": batch.num_tokens, "R": batch.num_rows}
        dev = self.device
        bufs = {b.name: dev.alloc(_resolve(b, sizes), b.dtype) for b in self.plan.buffers}
        dev_batch = dev.upload_batch(batch)
        bufs[self.plan.input_tokens] = dev_batch.tokens
        for op, weights in self._ops:
            dev.launch(op, [bufs[n] for n in op.outputs], [bufs[n] for n in op.inputs], weights, dev_batch)
        return dev.download(bufs[self.plan.output_logits], batch.num_rows)

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        """The normalized final hidden state float32[R, n_embd] of the batch's logit rows:
        what the last rmsnorm writes (the output norm; only the lm head follows it). These
        are llama.cpp's embeddings. The lm head itself is skipped."""
        last = max((i for i, op in enumerate(self.plan.ops) if op.kind == "rmsnorm"), default=None)
        if last is None:
            raise ValueError("the plan has no rmsnorm op, so no final hidden state")
        sizes = {"T": batch.num_tokens, "R": batch.num_rows}
        dev = self.device
        bufs = {b.name: dev.alloc(_resolve(b, sizes), b.dtype) for b in self.plan.buffers}
        dev_batch = dev.upload_batch(batch)
        bufs[self.plan.input_tokens] = dev_batch.tokens
        for op, weights in self._ops[: last + 1]:
            dev.launch(op, [bufs[n] for n in op.outputs], [bufs[n] for n in op.inputs], weights, dev_batch)
        return dev.download(bufs[self._ops[last][0].outputs[0]], batch.num_rows)


def _resolve(buffer: Buffer, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d] if isinstance(d, str) else d for d in buffer.shape)
