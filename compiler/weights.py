"""Stage 4: the weight planner. Streams every weight the plan uses into weights.bin.

A weight is made of parts: row ranges of GGUF tensors, written one after the other. One
whole tensor is the common case; a row range splits a fused tensor (phi3's attn_qkv into
Q, K and V); several parts concatenate tensors (Q, K and V into one matmul). Rows of the
block formats are independent runs of bytes, so both are byte copies. Each weight starts on
an ALIGNMENT boundary. Tensors are copied with plain file reads in bounded chunks, so
compiling a model of any size needs little memory.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path

from rfc.artifacts.formats import row_nbytes, tensor_nbytes
from rfc.artifacts.layout import ALIGNMENT, TensorEntry, WeightLayout, align_up
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel, SourceTensor

_CHUNK = 8 << 20


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of a GGUF tensor, its dimensions but the last flattened into rows."""

    tensor: str
    start: int
    stop: int


@dataclass(frozen=True)
class WeightUse:
    """One weight of the bundle: its name in the plan, what it is, and where its bytes come from."""

    name: str
    role: str
    format: str
    shape: tuple[int, ...]
    parts: tuple[RowRange, ...]


def whole(t: SourceTensor) -> RowRange:
    return RowRange(t.name, 0, prod(t.shape[:-1]) if len(t.shape) > 1 else 1)


def part_bytes(t: SourceTensor, part: RowRange) -> tuple[int, int]:
    """(absolute file offset, byte count) of a row range of `t`."""
    row = row_nbytes(t.format, t.shape[-1]) if len(t.shape) > 1 else t.nbytes
    return t.offset + part.start * row, (part.stop - part.start) * row


def check_use(model: GGUFModel, use: WeightUse) -> None:
    """The parts exist, fit their tensors, share the format and add up to the shape."""
    total = 0
    for part in use.parts:
        t = model.tensors[part.tensor]
        rows = prod(t.shape[:-1]) if len(t.shape) > 1 else 1
        if t.format != use.format or not 0 <= part.start < part.stop <= rows or t.shape[-1] != use.shape[-1]:
            raise CompileError(f"{model.path.name}: {use.name} cannot be made from rows {part.start}..{part.stop} of {t.name}")
        total += part_bytes(t, part)[1]
    if total != tensor_nbytes(use.format, use.shape):
        raise CompileError(f"{model.path.name}: the parts of {use.name} do not add up to its shape {list(use.shape)}")


def write_weights(
    model: GGUFModel,
    uses: tuple[WeightUse, ...],
    out_path: Path,
    on_tensor: Callable[[str], None] = lambda name: None,
) -> WeightLayout:
    entries = []
    offset = 0
    with open(model.path, "rb") as src, open(out_path, "wb") as dst:
        for use in uses:
            check_use(model, use)
            aligned = align_up(offset, ALIGNMENT)
            dst.write(b"\0" * (aligned - offset))
            digest = hashlib.sha256()
            nbytes = 0
            for part in use.parts:
                start, remaining = part_bytes(model.tensors[part.tensor], part)
                src.seek(start)
                while remaining:
                    chunk = src.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise CompileError(f"{model.path}: unexpected end of file in tensor {part.tensor}")
                    digest.update(chunk)
                    dst.write(chunk)
                    remaining -= len(chunk)
                    nbytes += len(chunk)
            entries.append(TensorEntry(use.name, use.role, use.format, use.shape, aligned, nbytes, digest.hexdigest()))
            offset = aligned + nbytes
            on_tensor(use.name)
        dst.write(b"\0" * (align_up(offset, ALIGNMENT) - offset))
    return WeightLayout(alignment=ALIGNMENT, tensors=tuple(entries))
