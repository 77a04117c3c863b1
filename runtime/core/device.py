"""The device interface: what one engine step needs of a device. Knows nothing about model architectures.

`Device` is what the engine needs of one (the Executor is one too). Every device runs whole
steps (docs/design.md: the step program):
- a compiled target's step program: one ctypes call on cpu (devices/cpu_step.py), one graph
  launch on a GPU (devices/gpu.py);
- the numpy reference (devices/reference.py), the oracle, interprets the plan op by op: it
  implements the ops (`OpDevice`) and inherits its step from `InterpretedDevice`, as the
  kernel tests' per-op devices do (tests/kernels/kit/).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rfc.artifacts.plan import Buffer, Op, Plan
from rfc.runtime.core.step import StepBatch

if TYPE_CHECKING:
    from rfc.runtime.core.sampling_kernels import SamplingKernels


class DeviceError(Exception):
    """No usable device, or a device failed; the message names what was looked for."""


class StepRefused(DeviceError):
    """launch_sampled declined to queue a step ahead for what this step holds (nothing was
    queued): the caller runs it after reading the step before instead."""


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


class PendingRows(Protocol):
    """A step queued by launch_sampled."""

    def result(self) -> SampledRows: ...


class Device(Protocol):
    """One step at a time on a model's device: what the engine reads. Every device declares
    every member; those it lacks a use for keep their stated defaults."""

    @property
    def samples_on_device(self) -> bool:  # False: forward_sampled refuses (DeviceError)
        ...

    @property
    def host_sampling(self) -> "SamplingKernels | None":  # the library's host sampling kernels, or None
        ...

    def forward(self, batch: StepBatch) -> np.ndarray:
        """Logits float32[R, vocab] for the batch's logit rows."""
        ...

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        """The final normalized hidden states float32[R, n_embd] for the batch's logit rows
        (what the output norm writes: llama.cpp's embeddings)."""
        ...

    def forward_scores(self, batch: StepBatch) -> np.ndarray:
        """A reranker's classifier outputs float32[R, labels] for the batch's logit rows (the
        plan's output_scores)."""
        ...

    def forward_sampled(self, batch: StepBatch, rows: list) -> SampledRows:
        """One step on a `samples_on_device` device; rows[i] is (Sampler, wants its logprob)
        for a row the device may sample, None for a row the host must (grammar, logit_bias,
        top logprobs)."""
        ...

    @property
    def runs_ahead(self) -> bool:  # False: launch_sampled refuses (DeviceError)
        ...

    def launch_sampled(self, batch: StepBatch, rows: list, feed: tuple[tuple[int, int], ...] = ()) -> "PendingRows":
        """forward_sampled queued: returns before the step has run, its result() waits. With
        `feed`, (token index, row) pairs, the step may be queued while the last one runs, each
        of those tokens being the token the last step sampled for that row (decode queued
        ahead: runtime/devices/gpu_program.py StepRunner.launch_sampled)."""
        ...

    @property
    def copies_kv(self) -> bool:  # False: copy_kv refuses (DeviceError), no reuse to the token
        ...

    @property
    def copies_state(self) -> bool:  # False: copy_state refuses (DeviceError), no state checkpoints
        ...

    def copy_state(self, src: list[int], dst: list[int]) -> None:
        """Recurrent-state slot src[i] into slot dst[i], in order."""
        ...

    def copy_kv(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Every layer's K and V of KV slots `src` copied into slots `dst` (int32 arrays of one
        length, the two sets disjoint), whatever bytes a slot holds: the copy-on-write of the
        prefix cache's reuse to the token (runtime/engine/prefix_cache.py)."""
        ...


# -- the plan interpreted op by op -----------------------------------------------------------------


class OpDevice(Protocol):
    """What the plan interpreter needs from a device that runs single ops."""

    def alloc(self, shape: tuple[int, ...], dtype: str): ...

    def upload_batch(self, batch: StepBatch): ...

    def weight(self, name: str): ...

    def launch(self, op: Op, outs: list, ins: list, weights: list, batch) -> None: ...

    def download(self, buf, rows: int) -> np.ndarray: ...


def require_scores(plan: Plan) -> None:
    """Refuses a scores step of a plan without a classifier (not a reranker)."""
    if not plan.output_scores:
        raise DeviceError("this model is not a reranker: it has no classifier head")


def require_logits(plan: Plan) -> None:
    """Refuses a logits step of an encoder's plan (embeddings only)."""
    if not plan.generates:
        raise DeviceError("this model is an encoder: it computes embeddings, not logits")


class InterpretedDevice:
    """A Device whose step interprets its plan op by op: subclasses implement OpDevice."""

    samples_on_device = False
    host_sampling: "SamplingKernels | None" = None
    copies_kv = False  # a subclass whose KV cache is host arrays copies rows (copy_kv)

    def __init__(self, plan: Plan):
        self._plan = plan
        self._ops: list[tuple[Op, list]] | None = None  # weight handles resolved on the first step

    def forward(self, batch: StepBatch) -> np.ndarray:
        require_logits(self._plan)
        return self._interpret(batch, self._plan.output_logits)

    def forward_hidden(self, batch: StepBatch) -> np.ndarray:
        return self._interpret(batch, self._plan.output_hidden)

    def forward_scores(self, batch: StepBatch) -> np.ndarray:
        require_scores(self._plan)
        return self._interpret(batch, self._plan.output_scores)

    def forward_sampled(self, batch: StepBatch, rows: list) -> SampledRows:
        raise DeviceError(f"the {type(self).__name__} does not sample: the host samples every row")

    runs_ahead = False

    def launch_sampled(self, batch: StepBatch, rows: list, feed: tuple[tuple[int, int], ...] = ()) -> PendingRows:
        raise DeviceError(f"the {type(self).__name__} queues no step ahead")

    def copy_kv(self, src: np.ndarray, dst: np.ndarray) -> None:
        raise DeviceError(f"the {type(self).__name__} does not copy KV slots")

    def _interpret(self, batch: StepBatch, output: str) -> np.ndarray:
        dev: OpDevice = self  # type: ignore[assignment]  (subclasses implement it)
        if self._ops is None:  # per-step work stays a walk over the ops
            self._ops = [(op, [dev.weight(w) for w in op.weights]) for op in self._plan.ops]
        sizes = {"T": batch.num_tokens, "R": batch.num_rows}
        bufs = {b.name: dev.alloc(_resolve(b, sizes), b.dtype) for b in self._plan.buffers}
        dev_batch = dev.upload_batch(batch)
        bufs[self._plan.input_tokens] = dev_batch.tokens
        # Stop at the last op writing the output: the hidden state needs no lm head.
        last = max(i for i, (op, _) in enumerate(self._ops) if output in op.outputs)
        for op, weights in self._ops[: last + 1]:
            dev.launch(op, [bufs[n] for n in op.outputs], [bufs[n] for n in op.inputs], weights, dev_batch)
        return dev.download(bufs[output], batch.num_rows)


def _resolve(buffer: Buffer, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d] if isinstance(d, str) else d for d in buffer.shape)
