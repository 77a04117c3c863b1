"""What recipes build with: the plan's buffers and ops, and the weights they read.

A recipe asks for GGUF tensors by name with the shape its hyperparameters imply; the builder
checks each against the file (present, shape, a supported format) the moment it is asked for,
so a recipe never plans around a tensor that is not there. Weights can also be made from rows
of tensors (split a fused tensor, concatenate several): see compiler/weights.py.

Never silently wrong: the builder records every tensor of the file the recipe consumed (as a
weight, or as a value read at compile time: `scalar`), and `finish` refuses the model when any
other tensor is left, unless the recipe named it as known and unused, with the reason
(`unused`, `unused_layers`), or it is one that no recipe applies (KNOWN_UNUSED_SUFFIXES). A
tensor the recipe does not know may change the math (a bias, a weight scale): computing without
it would give wrong logits without a word.
"""

from math import prod

import numpy as np

from rfc.artifacts.plan import Buffer, KVSpec, Op, Plan, StateSpec, StateTensor
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel, SourceTensor
from rfc.compiler.spec import HParams, ModelSpec
from rfc.compiler.weights import ElementRange, Fill, RowRange, WeightUse, ZeroRows, whole

# Tensors llama.cpp loads for every architecture and never applies, by the end of their name.
KNOWN_UNUSED_SUFFIXES = {
    ".input_scale": "a matmul's activation scale (FP8 / NVFP4 checkpoints): llama.cpp loads it and never applies it",
}
MAX_SCALAR = 1e6  # |value| of a scalar read into the plan (an op attribute's bound)
MAX_SMALL_VALUES = 1 << 20  # elements of a tensor read at compile time (small_values)
SMALL_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


class ModelBuilder:
    def __init__(self, model: GGUFModel):
        self.model = model
        self.path = model.path.name
        self._weights: dict[str, WeightUse] = {}
        self._sources: dict[str, SourceTensor] = {}
        self._buffers: dict[str, Buffer] = {}
        self._ops: list[Op] = []
        self._state: list[StateTensor] = []
        self._read: set[str] = set()  # tensors whose values the plan holds (scalar)
        self._unused: dict[str, str] = {}  # known tensors the plan does not need: name -> why

    # -- tensors of the GGUF ----------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.model.tensors

    def source(self, name: str, shape: tuple[int, ...]) -> SourceTensor:
        t = self.model.tensors.get(name)
        if t is None:
            raise CompileError(f"{self.path}: missing tensor {name}")
        if t.shape != tuple(shape):
            raise CompileError(f"{self.path}: shape mismatch for {name}: expected {list(shape)}, found {list(t.shape)}")
        self._sources[name] = t
        return t

    def tensor(self, name: str, role: str, shape: tuple[int, ...]) -> str:
        """A GGUF tensor used as it is; returns its name in the plan (the same)."""
        if name not in self._weights:
            t = self.source(name, shape)
            self._add(WeightUse(name, role, t.format, t.shape, (whole(t),)))
        return name

    def tensor_as(self, name: str, role: str, shape: tuple[int, ...]) -> str:
        """A GGUF tensor used as `shape`, also when the file stores it without shape's leading
        1s: ggml drops trailing unit dimensions when it writes a tensor, so a [1, N, K] weight
        (deepseek2's attn_k_b with one head) is a 2-D [N, K] in the file. The same bytes either way."""
        t = self.model.tensors.get(name)
        squeezed = tuple(shape)
        while len(squeezed) > 1 and squeezed[0] == 1:
            squeezed = squeezed[1:]
        if t is None or t.shape == tuple(shape) or t.shape != squeezed or name in self._weights:
            return self.tensor(name, role, shape)
        t = self.source(name, squeezed)
        self._add(WeightUse(name, role, t.format, tuple(shape), (whole(t),)))
        return name

    def optional_tensor(self, name: str, role: str, shape: tuple[int, ...]) -> str | None:
        return self.tensor(name, role, shape) if self.has(name) else None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element F32 tensor (a learned scalar: a matmul's weight scale, a
        layer's output scale), read now for an op attribute; None when the file has no such
        tensor. Finite and at most MAX_SCALAR in magnitude, like any number of a plan."""
        if name not in self.model.tensors:
            return None
        return self.scalars(name, 1)[0]

    def scalars(self, name: str, n: int) -> tuple[float, ...]:
        """The n values of an F32 tensor [n] (hy_v4's hyper-connection scales, [2]), read now for
        op attributes; each finite and at most MAX_SCALAR in magnitude (small_values' rule)."""
        t = self.model.tensors.get(name)
        if t is None:
            raise CompileError(f"{self.path}: missing tensor {name}")
        if t.shape != (n,) or t.format != "F32":
            what = "one F32 value" if n == 1 else f"{n} F32 values"
            raise CompileError(f"{self.path}: {name} is {t.format} {list(t.shape)}, not {what}")
        return tuple(self._values(t).tolist())

    def small_values(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The values of a small GGUF tensor of `shape` stored one element per block (F32, F16, BF16;
        at most MAX_SMALL_VALUES of them), read now as float32 (exact) for op attributes (scalars) or a
        weight the recipe computes from them at compile time (T5's position-bias table); each finite
        and at most MAX_SCALAR in magnitude, like any number of a plan."""
        t = self.source(name, shape)  # a source of the plan's weights (the manifest counts its parameters)
        if t.format not in SMALL_DTYPES or prod(shape) > MAX_SMALL_VALUES:
            raise CompileError(f"{self.path}: {name} is {t.format} {list(t.shape)}, not a small F32, F16 or BF16 table")
        return self._values(t).reshape(shape)

    def _values(self, t: SourceTensor) -> np.ndarray:
        """Tensor t's values (SMALL_DTYPES), bounded as small_values says; t counts as read."""
        n, name = prod(t.shape), t.name
        with open(self.model.path, "rb") as f:
            f.seek(t.offset)
            raw = f.read(2 * n if t.format != "F32" else 4 * n)
        if len(raw) != (2 * n if t.format != "F32" else 4 * n):
            raise CompileError(f"{self.path}: {name} lies past the end of the file")
        if t.format == "BF16":  # the high half of a float32
            values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(raw, SMALL_DTYPES[t.format]).astype(np.float32)
        bad = ~np.isfinite(values) | (np.abs(values) > MAX_SCALAR)
        if bad.any():
            raise CompileError(f"{self.path}: {name} = {values[bad][0]} is not a finite number in "
                               f"[-{MAX_SCALAR:g}, {MAX_SCALAR:g}]")  # fmt: skip
        self._read.add(name)
        return values

    def unused(self, name: str, why: str) -> None:
        """Declares a tensor of the file known and not needed by the plan (llama.cpp loads it
        and does not use it either, or the plan computes the same without it)."""
        if self.has(name):
            self._unused[name] = why

    def unused_layers(self, layers: range, why: str) -> None:
        """Every tensor of blocks `layers` known and unused (multi-token prediction heads)."""
        prefixes = tuple(f"blk.{i}." for i in layers)
        for name in self.model.tensors:
            if name.startswith(prefixes):
                self._unused[name] = why

    def unaccounted(self) -> list[str]:
        """The tensors of the file neither consumed nor declared known and unused, in file order."""
        return [n for n in self.model.tensors if n not in self._sources and n not in self._read and
                n not in self._unused and not n.endswith(tuple(KNOWN_UNUSED_SUFFIXES))]  # fmt: skip

    def constant(self, name: str, role: str, shape: tuple[int, ...], value: float) -> str:
        """A float32 weight of `shape` filled with `value`, not read from the file (a norm the
        architecture applies without a weight); `name` must not be a GGUF tensor's."""
        if name not in self._weights:
            if self.has(name):
                raise CompileError(f"{self.path}: {name} is a tensor of the file, not a constant")
            self._add(WeightUse(name, role, "F32", tuple(shape), (Fill(float(value), prod(shape)),)))
        return name

    def filled(self, name: str, role: str, shape: tuple[int, ...], runs: list[tuple[float, int]]) -> str:
        """A float32 weight of `shape` made at compile time from runs of equal values, in row-major
        order ((value, count), ...: a block-diagonal matrix's zeros and entries), not read from the file."""
        if name not in self._weights:
            if self.has(name):
                raise CompileError(f"{self.path}: {name} is a tensor of the file, not a constant")
            if sum(n for _, n in runs) != prod(shape):
                raise CompileError(f"{self.path}: the runs of {name} do not fill {list(shape)}")  # a recipe bug
            self._add(WeightUse(name, role, "F32", tuple(shape), tuple(Fill(float(v), n) for v, n in runs if n)))
        return name

    def flat(self, name: str, role: str, shape: tuple[int, ...]) -> str:
        """A GGUF tensor of `shape` read as one vector of all its elements (Mamba2's ssm_a and
        ssm_d, stored [n_head, 1]; its grouped ssm_norm [n_group, d_inner / n_group]): the same
        bytes, for formats of one element per block (the vectors kernels read as floats)."""
        t = self.source(name, shape)
        if t.format not in ("F32", "F16", "BF16"):
            raise CompileError(f"{self.path}: {name} is stored as {t.format}; a vector must be F32, F16 or BF16")
        if name not in self._weights:
            self._add(WeightUse(name, role, t.format, (prod(shape),), (whole(t),)))
        return name

    def rows(self, name: str, role: str, source: str, source_shape: tuple[int, ...], start: int, stop: int) -> str:
        """A weight made of rows [start, stop) of a 2-D GGUF tensor (a slice of a fused one)."""
        t = self.source(source, source_shape)
        if len(t.shape) != 2 or not 0 <= start < stop <= t.shape[0]:
            raise CompileError(f"{self.path}: cannot take rows {start}..{stop} of {source} {list(t.shape)}")
        self._add(WeightUse(name, role, t.format, (stop - start, t.shape[1]), (RowRange(source, start, stop),)))
        return name

    def row_ranges(
        self,
        name: str,
        role: str,
        source: str,
        source_shape: tuple[int, ...],
        ranges: list[tuple[int, int]],
        *,
        pad: int = 0,
    ) -> str:
        """A weight made of several row ranges of one 2-D GGUF tensor, in order (qwen35's query
        rows of each head, apart from the output gate's rows interleaved with them); with `pad`,
        each range followed by that many zero rows (values narrower than the keys, padded to the
        key's head size: Sizes.v_dim)."""
        t = self.source(source, source_shape)
        if len(t.shape) != 2 or not ranges or any(not 0 <= a < z <= t.shape[0] for a, z in ranges):
            raise CompileError(f"{self.path}: cannot take rows {ranges[:2]}... of {source} {list(t.shape)}")
        rows = sum(z - a + pad for a, z in ranges)
        parts = tuple(p for a, z in ranges for p in (RowRange(source, a, z), *((ZeroRows(pad),) if pad else ())))
        self._add(WeightUse(name, role, t.format, (rows, t.shape[1]), parts))
        return name

    def vector_ranges(
        self, name: str, role: str, source: str, n: int, ranges: list[tuple[int, int]], *, pad: int = 0
    ) -> str:
        """A vector made of several element ranges of one GGUF vector [n], in order (qwen35's
        attn_q.bias: each head's query entries, apart from the output gate's interleaved with
        them); the vector must be stored one element per block (F32, F16, BF16). With `pad`, each
        range followed by that many zeros (row_ranges)."""
        t = self.source(source, (n,))
        if t.format not in ("F32", "F16", "BF16") or not ranges or any(not 0 <= a < z <= n for a, z in ranges):
            raise CompileError(f"{self.path}: cannot take elements {ranges[:2]}... of {source} ({t.format} [{n}])")
        parts = tuple(p for a, z in ranges for p in (ElementRange(source, a, z), *((ZeroRows(pad),) if pad else ())))
        self._add(WeightUse(name, role, t.format, (sum(z - a + pad for a, z in ranges),), parts))
        return name

    def negated(self, name: str, role: str, source: str, shape: tuple[int, ...]) -> str:
        """A GGUF vector of one element per block (F32, F16, BF16; shape [n] or a column [n, 1]) with
        every element negated (its sign bit flipped: exact), as a vector [n] named `name`."""
        t = self.source(source, shape)
        if t.format not in ("F32", "F16", "BF16") or not (len(shape) == 1 or shape[1:] == (1,)):
            raise CompileError(
                f"{self.path}: {source} is {t.format} {list(t.shape)}, not a vector of one element per block"
            )
        self._add(WeightUse(name, role, t.format, (shape[0],), (ElementRange(source, 0, shape[0], negate=True),)))
        return name

    def head_gains(self, name: str, role: str, source: str, n_heads: int, head_dim: int) -> str:
        """A vector [n_heads * head_dim] of a GGUF per-head scalar (shape [n_heads] or [n_heads, 1]:
        talkie's attn_q_norm), each head's value repeated over its head_dim entries: what a per-head
        scalar gain is as the weight of an RMS norm per head."""
        t = self.model.tensors.get(source)
        if t is None:
            raise CompileError(f"{self.path}: missing tensor {source}")
        shape = (n_heads,) if len(t.shape) == 1 else (n_heads, 1)
        t = self.source(source, shape)
        if t.format not in ("F32", "F16", "BF16"):
            raise CompileError(f"{self.path}: {source} is {t.format}, not one element per block")
        parts = tuple(ElementRange(source, h, h + 1, repeat=head_dim) for h in range(n_heads))
        self._add(WeightUse(name, role, t.format, (n_heads * head_dim,), parts))
        return name

    def expert_rows(
        self, name: str, role: str, source: str, source_shape: tuple[int, int, int], start: int, stop: int
    ) -> str:
        """An expert weight [E, stop - start, K] made of rows [start, stop) of every expert's
        [N, K] slice of a 3-D GGUF tensor [E, N, K] (a fused ffn_gate_up_exps split into gate and up)."""
        t = self.source(source, source_shape)
        n_expert, n = source_shape[0], source_shape[1]
        if not 0 <= start < stop <= n:
            raise CompileError(
                f"{self.path}: cannot take rows {start}..{stop} of each expert of {source} {list(t.shape)}"
            )
        parts = tuple(RowRange(source, e * n + start, e * n + stop) for e in range(n_expert))
        self._add(WeightUse(name, role, t.format, (n_expert, stop - start, source_shape[2]), parts))
        return name

    def row_vector(self, name: str, role: str, source: str, source_shape: tuple[int, int], row: int) -> str:
        """Row `row` of a 2-D GGUF tensor of one element per block (F32, F16, BF16) as a vector
        [source_shape[1]] (bert's token type 0: one row of `token_types`, added to every token)."""
        t = self.source(source, source_shape)
        if t.format not in ("F32", "F16", "BF16") or not 0 <= row < source_shape[0]:
            raise CompileError(
                f"{self.path}: cannot take row {row} of {source} ({t.format} {list(t.shape)}) as a vector"
            )
        self._add(WeightUse(name, role, t.format, (source_shape[1],), (RowRange(source, row, row + 1),)))
        return name

    def vector_row(self, name: str, role: str, n: int) -> str:
        """A GGUF vector [n] (or [1, n]) used as the [1, n] weight of a matmul to one column:
        qwen35moe's shared-expert gate, one logit per token (llama.cpp multiplies by it as a matrix)."""
        if name not in self._weights:
            t = self.model.tensors.get(name)
            t = self.source(name, (1, n) if t is not None and len(t.shape) == 2 else (n,))
            self._add(WeightUse(name, role, t.format, (1, n), (whole(t),)))
        return name

    def concat(self, name: str, role: str, sources: list[tuple[str, tuple[int, ...]]]) -> str | None:
        """One weight made of 2-D GGUF tensors stacked by rows (Q, K, V -> QKV), or None when
        they cannot be stacked (different formats): the recipe then keeps them apart."""
        ts = [self.source(n, shape) for n, shape in sources]
        if (
            len({t.format for t in ts}) != 1
            or len({t.shape[1:] for t in ts}) != 1
            or any(len(t.shape) != 2 for t in ts)
        ):
            return None
        shape = (sum(t.shape[0] for t in ts), ts[0].shape[1])
        self._add(WeightUse(name, role, ts[0].format, shape, tuple(whole(t) for t in ts)))
        return name

    def stacked(self, name: str, role: str, sources: list[tuple[str, tuple[int, ...]]], width: int) -> str:
        """One [rows, width] weight of GGUF tensors of one format stacked by rows, each flattened
        to rows of its last dimension `width` (kimi-linear's three conv kernels [C, 1, K] -> [3 C, K])."""
        ts = [self.source(n, shape) for n, shape in sources]
        if len({t.format for t in ts}) != 1 or any(t.shape[-1] != width for t in ts):
            raise CompileError(
                f"{self.path}: cannot stack {', '.join(n for n, _ in sources)} (formats or widths differ)"
            )
        rows = sum(prod(t.shape[:-1]) for t in ts)
        self._add(WeightUse(name, role, ts[0].format, (rows, width), tuple(whole(t) for t in ts)))
        return name

    def vectors(self, name: str, role: str, sources: list[tuple[str, tuple[int, ...]]]) -> str:
        """One vector of GGUF vectors of one format and one element per block (F32, F16, BF16), end to
        end, each of the shape given (unit dimensions allowed): rwkv6's five lerps as its fused one."""
        ts = [self.source(n, shape) for n, shape in sources]
        if len({t.format for t in ts}) != 1 or ts[0].format not in ("F32", "F16", "BF16"):
            raise CompileError(f"{self.path}: cannot join {', '.join(n for n, _ in sources)} (formats differ or "
                               "are not one element per block)")  # fmt: skip
        self._add(WeightUse(name, role, ts[0].format, (sum(prod(t.shape) for t in ts),), tuple(whole(t) for t in ts)))
        return name

    def _add(self, use: WeightUse) -> None:
        if use.name in self._weights:
            raise CompileError(f"{self.path}: weight {use.name} is defined twice")
        self._weights[use.name] = use

    # -- the plan ---------------------------------------------------------------------------
    def buffer(self, name: str, *shape: str | int, dtype: str = "f32") -> str:
        b = Buffer(name, tuple(shape), dtype)
        if self._buffers.setdefault(name, b) != b:
            raise CompileError(f"buffer {name} declared with two shapes")  # a recipe bug
        return name

    def state(self, layer: int, shape: tuple[int, ...]) -> int:
        """Declares a per-sequence recurrent state tensor of `layer` (float32, `shape` per
        sequence); returns the index a stateful op names as its `state` attribute."""
        self._state.append(StateTensor(layer, tuple(shape)))
        return len(self._state) - 1

    def op(
        self, kind: str, inputs: tuple[str, ...], outputs: tuple[str, ...], weights: tuple[str, ...] = (), **attrs
    ) -> None:
        self._ops.append(Op(kind, tuple(inputs), tuple(outputs), tuple(weights), dict(attrs)))

    def finish(
        self,
        hparams: HParams,
        *,
        input_tokens: str,
        output_logits: str,
        output_hidden: str,
        kv: KVSpec,
        output_scores: str = "",
        scores_softmax: bool = False,
    ) -> ModelSpec:
        left = self.unaccounted()
        if left:
            more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
            raise CompileError(
                f"{self.path}: tensor {left[0][:80]}{more} is not used by rfc's {hparams.architecture} "
                f"recipe: "
                "refused rather than computed without it"
            )
        plan = Plan(
            buffers=tuple(self._buffers.values()),
            ops=tuple(self._ops),
            kv=kv,
            input_tokens=input_tokens,
            output_logits=output_logits,
            output_hidden=output_hidden,
            vocab_size=hparams.vocab_size,
            n_embd=hparams.n_embd,
            context_length=hparams.context_length,
            state=StateSpec(tuple(self._state)),
            output_scores=output_scores,
            scores_softmax=scores_softmax,
        )
        return ModelSpec(hparams=hparams, plan=plan, weights=tuple(self._weights.values()), sources=dict(self._sources))


def n_rows(shape: tuple[int, ...]) -> int:
    return prod(shape[:-1]) if len(shape) > 1 else 1
