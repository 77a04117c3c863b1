"""Stage 4, its bytes: streams every weight the weight planner (weight_plan.py) chose into
weights.bin.

A weight is made of parts: row ranges of GGUF tensors, written one after the other. One
whole tensor is the common case; a row range splits a fused tensor (phi3's attn_qkv into
Q, K and V); several parts concatenate tensors (Q, K and V into one matmul). Rows of the
block formats are independent runs of bytes, so both are byte copies. A weight may also be
repacked into a target layout (PACKED_FORMATS for the cpu targets, PLANAR_FORMATS for the
GPU ones). Each weight starts on an ALIGNMENT boundary. Tensors are copied with plain file
reads in bounded chunks, so compiling a model of any size needs little memory.
"""

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from rfc.artifacts.formats import FORMATS, PACKED_FORMATS, Q4_KX8_COLUMN_BYTES, row_nbytes, tensor_nbytes
from rfc.artifacts.layout import ALIGNMENT, TensorEntry, WeightLayout, align_up
from rfc.artifacts.limits import MAX_HEAD_DIM
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel, SourceTensor
from rfc.compiler.weights_planar import pack_planar

_CHUNK = 8 << 20


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of a GGUF tensor, its dimensions but the last flattened into rows."""

    tensor: str
    start: int
    stop: int


@dataclass(frozen=True)
class ElementRange:
    """Elements [start, stop) of a 1-D GGUF tensor (or a column [n, 1]) of one element per block (F32,
    F16, BF16): a slice of a vector (qwen35's attn_q.bias, its query and gate entries interleaved per
    head); with `repeat` the range's bytes stand that many times in a row (talkie's per-head gains:
    one element per head, spread over the head's values); with `negate` each element's sign bit flipped, an
    exact negation (Kimi-K3's KDA decay reads -ssm_a where bailingmoe3's reads ssm_a)."""

    tensor: str
    start: int
    stop: int
    repeat: int = 1
    negate: bool = False


@dataclass(frozen=True)
class Fill:
    """`count` float32 values all equal to `value`: a weight the architecture implies but the file
    does not hold (llama4's Q/K RMS norms without a weight are norms with a weight of ones)."""

    value: float
    count: int


@dataclass(frozen=True)
class ZeroRows:
    """`rows` rows of zeros in the weight's own format and row width (elements, for a vector of
    one element per block): all-zero bytes are a block of zeros in every GGML format (its scales
    are 0). Rows the file does not hold that must not change the math: value rows padded to the
    key's head size (attention with narrower values: minicpm3, mimo2)."""

    rows: int


def zero_rows_bytes(use: "WeightUse", rows: int) -> int:
    """The bytes of `rows` zero rows of `use` (zero elements of a vector)."""
    if len(use.shape) == 1:
        return rows * FORMATS[use.format].block_bytes
    return rows * row_nbytes(use.format, use.shape[-1])


@dataclass(frozen=True)
class WeightUse:
    """One weight of the bundle: its name in the plan, what it is, and where its bytes come from."""

    name: str
    role: str
    format: str
    shape: tuple[int, ...]
    parts: tuple[RowRange | ElementRange | Fill | ZeroRows, ...]
    packed: str | None = None  # a packed or planar layout (artifacts/formats.py) to repack `format`'s rows into

    @property
    def stored_format(self) -> str:
        return self.packed or self.format


def pack_x8(rows: np.ndarray, packed: str) -> np.ndarray:
    """Rows of base-format blocks (uint8 [rows, row_bytes], rows a multiple of the group) in
    the packed layout `packed` (artifacts/formats.py describes it; runtime/model/quants.py
    unpack_x8 is the inverse, which the tests check)."""
    f = PACKED_FORMATS[packed]
    if f.base == "Q4_K":
        return _pack_q4_k_x8(rows)
    if f.base == "Q5_K":
        return _pack_q5_k_x8(rows)
    if f.base == "Q6_K":
        return _pack_q6_k_x8(rows)
    if f.base == "IQ4_XS":
        return _pack_iq4_xs_x8(rows)
    g, bb = f.group_rows, f.block_bytes
    n_rows, row_bytes = rows.shape
    nb = row_bytes // bb
    blocks = rows.reshape(n_rows // g, g, nb, bb).transpose(0, 2, 1, 3)  # [group, column, row, byte]
    head = f.head_bytes
    fields = [blocks[..., 2 * i : 2 * i + 2].reshape(n_rows // g, nb, 2 * g) for i in range(head // 2)]
    qb = bb - head  # quant bytes per block: chunks of 4 bytes of every row
    qs = (
        blocks[..., head:]
        .reshape(n_rows // g, nb, g, qb // 4, 4)
        .transpose(0, 1, 3, 2, 4)
        .reshape(n_rows // g, nb, qb * g)
    )
    return np.concatenate([*fields, qs], axis=-1).reshape(n_rows, row_bytes)


def _pack_q4_k_x8(rows: np.ndarray) -> np.ndarray:
    """Q4_K rows in the Q4_Kx8 layout (artifacts/formats.py): scales and minimums decoded."""
    n_rows, row_bytes = rows.shape
    nb, ng = row_bytes // 144, n_rows // 8
    b = rows.reshape(ng, 8, nb, 144).transpose(0, 2, 1, 3)  # [group, column, row, byte]
    q = b[..., 4:16].astype(np.uint8)  # ggml's get_scale_min_k4, for all 8 sub-blocks
    sc = np.concatenate([q[..., 0:4] & 63, (q[..., 8:12] & 0xF) | ((q[..., 0:4] >> 6) << 4)], axis=-1)
    mn = np.concatenate([q[..., 4:8] & 63, (q[..., 8:12] >> 4) | ((q[..., 4:8] >> 6) << 4)], axis=-1)
    parts = [
        b[..., 0:2].reshape(ng, nb, 16),
        b[..., 2:4].reshape(ng, nb, 16),
        sc.transpose(0, 1, 3, 2).reshape(ng, nb, 64),  # [sub-block][row]
        mn.reshape(ng, nb, 8, 4, 2).transpose(0, 1, 3, 2, 4).reshape(ng, nb, 64),  # [pair][row][2]
        # [pair][chunk][row][4]
        b[..., 16:].reshape(ng, nb, 8, 4, 8, 4).transpose(0, 1, 3, 4, 2, 5).reshape(ng, nb, 1024),
    ]
    return np.concatenate(parts, axis=-1).reshape(n_rows, -1)


def _pack_q5_k_x8(rows: np.ndarray) -> np.ndarray:
    """Q5_K rows in the Q5_Kx8 layout (artifacts/formats.py): Q4_Kx8's column of the block
    without its qh bytes, then the qh bytes in chunks of 4 bytes of every row."""
    n_rows, row_bytes = rows.shape
    nb, ng = row_bytes // 176, n_rows // 8
    b = rows.reshape(n_rows, nb, 176)
    q4 = _pack_q4_k_x8(np.concatenate([b[..., 0:16], b[..., 48:]], axis=-1).reshape(n_rows, nb * 144))
    qh = b[..., 16:48].reshape(ng, 8, nb, 8, 4).transpose(0, 2, 3, 1, 4).reshape(ng, nb, 256)  # [chunk][row][4]
    return np.concatenate([q4.reshape(ng, nb, Q4_KX8_COLUMN_BYTES), qh], axis=-1).reshape(n_rows, -1)


def _pack_q6_k_x8(rows: np.ndarray) -> np.ndarray:
    """Q6_K rows in the Q6_Kx8 layout (artifacts/formats.py): GGUF's bytes rearranged, d and
    the int8 scales first, then the ql and qh bytes in chunks of 4 bytes of every row."""
    n_rows, row_bytes = rows.shape
    nb, ng = row_bytes // 210, n_rows // 8
    b = rows.reshape(ng, 8, nb, 210).transpose(0, 2, 1, 3)  # [group, column, row, byte]
    parts = [
        b[..., 208:210].reshape(ng, nb, 16),
        b[..., 192:208].transpose(0, 1, 3, 2).reshape(ng, nb, 128),  # [sub-block][row]
        b[..., 0:128].reshape(ng, nb, 8, 32, 4).transpose(0, 1, 3, 2, 4).reshape(ng, nb, 1024),  # ql [chunk][row][4]
        b[..., 128:192].reshape(ng, nb, 8, 16, 4).transpose(0, 1, 3, 2, 4).reshape(ng, nb, 512),  # qh [chunk][row][4]
    ]
    return np.concatenate(parts, axis=-1).reshape(n_rows, -1)


def _pack_iq4_xs_x8(rows: np.ndarray) -> np.ndarray:
    """IQ4_XS rows in the IQ4_XSx8 layout (artifacts/formats.py): the 6-bit sub-block scales
    decoded to int8 ls - 32, the indices in chunks of 4 bytes of every row."""
    n_rows, row_bytes = rows.shape
    nb, ng = row_bytes // 136, n_rows // 8
    b = rows.reshape(ng, 8, nb, 136).transpose(0, 2, 1, 3)  # [group, column, row, byte]
    high = b[..., 2].astype(np.int16) | (b[..., 3].astype(np.int16) << 8)  # scales_h: 2 bits per sub-block
    sub = np.arange(8)
    low = (b[..., 4 + sub // 2] >> (4 * (sub % 2))) & 0xF  # scales_l: a nibble per sub-block
    ls = low.astype(np.int16) | (((high[..., None] >> (2 * sub)) & 3) << 4)  # [group, column, row, sub-block]
    parts = [
        b[..., 0:2].reshape(ng, nb, 16),
        (ls - 32).astype(np.int8).view(np.uint8).transpose(0, 1, 3, 2).reshape(ng, nb, 64),  # [sub-block][row]
        # [sub-block][chunk][row][4]
        b[..., 8:].reshape(ng, nb, 8, 8, 4, 4).transpose(0, 1, 3, 4, 2, 5).reshape(ng, nb, 1024),
    ]
    return np.concatenate(parts, axis=-1).reshape(n_rows, -1)


def whole(t: SourceTensor) -> RowRange:
    return RowRange(t.name, 0, prod(t.shape[:-1]) if len(t.shape) > 1 else 1)


def part_bytes(t: SourceTensor, part: RowRange | ElementRange) -> tuple[int, int]:
    """(absolute file offset, byte count) of a row range (or an element range) of `t`."""
    if isinstance(part, ElementRange):
        row = FORMATS[t.format].block_bytes  # one element per block (check_use)
    else:
        row = row_nbytes(t.format, t.shape[-1]) if len(t.shape) > 1 else t.nbytes
    return t.offset + part.start * row, (part.stop - part.start) * row


def check_use(model: GGUFModel, use: WeightUse) -> None:
    """The parts exist, fit their tensors, share the format and add up to the shape."""
    # row groups interleave 2-D matrices, or experts [E, N, K] whose N rows are whole groups (the
    # planner's groups_fit); a planar layout keeps rows whole (experts: any leading dimensions)
    f = FORMATS.get(use.packed)
    grouped = f is not None and f.group_rows > 1
    if use.packed is not None and (
        f is None
        or f.base != use.format
        or (grouped and not (len(use.shape) == 2 or len(use.shape) == 3 and use.shape[1] % f.group_rows == 0))
    ):
        raise CompileError(f"{use.name}: cannot repack {use.format} {list(use.shape)} into {use.packed}")
    total = 0
    for part in use.parts:
        if isinstance(part, Fill):
            if use.format != "F32" or use.packed is not None:
                raise CompileError(f"{use.name}: a filled weight is plain F32")
            total += 4 * part.count
            continue
        if isinstance(part, ZeroRows):
            if part.rows < 1 or (len(use.shape) == 1 and FORMATS[use.format].block_elems != 1):
                raise CompileError(f"{use.name}: cannot pad it with {part.rows} zero rows")
            total += zero_rows_bytes(use, part.rows)
            continue
        t = model.tensors[part.tensor]
        if isinstance(part, ElementRange):
            if (
                not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1))  # a vector, or a column [n, 1]
                or len(use.shape) != 1
                or t.format != use.format
                or FORMATS[t.format].block_elems != 1
                or not 0 <= part.start < part.stop <= t.shape[0]
                or not 1 <= part.repeat <= MAX_HEAD_DIM
            ):
                raise CompileError(
                    f"{model.path.name}: {use.name} cannot be made from elements {part.start}..{part.stop} of {t.name}"
                )
            total += part_bytes(t, part)[1] * part.repeat
            continue
        rows = prod(t.shape[:-1]) if len(t.shape) > 1 else 1
        # a vector read from whole tensors of one element per block, whatever their shapes (ModelBuilder.flat:
        # Mamba2's ssm_a [n, 1]; ModelBuilder.vectors: rwkv6's lerps [1, 1, n] end to end)
        flat = (
            len(use.shape) == 1
            and (part.start, part.stop) == (0, rows)
            and prod(t.shape) <= use.shape[0]
            and FORMATS[t.format].block_elems == 1
        )
        if (
            t.format != use.format
            or not 0 <= part.start < part.stop <= rows
            or (t.shape[-1] != use.shape[-1] and not flat)
        ):
            raise CompileError(
                f"{model.path.name}: {use.name} cannot be made from rows {part.start}..{part.stop} of {t.name}"
            )
        total += part_bytes(t, part)[1]
    if total != tensor_nbytes(use.format, use.shape):
        raise CompileError(f"{model.path.name}: the parts of {use.name} do not add up to its shape {list(use.shape)}")


def _read_parts(src, model: GGUFModel, use: WeightUse, chunk: int) -> Iterator[bytes]:
    for part in use.parts:
        if isinstance(part, Fill):
            yield np.full(part.count, part.value, dtype="<f4").tobytes()
            continue
        if isinstance(part, ZeroRows):
            yield bytes(zero_rows_bytes(use, part.rows))
            continue
        start, remaining = part_bytes(model.tensors[part.tensor], part)
        src.seek(start)
        if isinstance(part, ElementRange) and (part.repeat > 1 or part.negate):  # a few elements
            data = src.read(remaining)
            if len(data) != remaining:
                raise CompileError(f"{model.path}: unexpected end of file in tensor {part.tensor}")
            if part.negate:  # the sign bit: the last byte of each little-endian element
                size = FORMATS[use.format].block_bytes
                flipped = np.frombuffer(data, np.uint8).copy()
                flipped[size - 1 :: size] ^= 0x80
                data = flipped.tobytes()
            yield data * part.repeat
            continue
        while remaining:
            data = src.read(min(chunk, remaining))
            if not data:
                raise CompileError(f"{model.path}: unexpected end of file in tensor {part.tensor}")
            remaining -= len(data)
            yield data


def _repack_stream(chunks: Iterator[bytes], use: WeightUse) -> Iterator[bytes]:
    """The bytes of `use` in its packed layout, a whole number of row groups at a time; the
    last group is padded with zero rows (scale 0: those rows are 0 and never read)."""
    f = FORMATS[use.packed]
    pack = pack_planar if f.is_planar else pack_x8
    row = row_nbytes(use.format, use.shape[-1])
    step = row * f.group_rows * max(1, _CHUNK // (row * f.group_rows))
    pending = bytearray()
    for data in chunks:
        pending += data
        while len(pending) >= step:
            # packed from a view of the pending bytes (no copy), released before they move
            rows = np.frombuffer(pending, np.uint8, count=step).reshape(-1, row)
            packed = pack(rows, use.packed).tobytes()
            del rows
            yield packed
            del pending[:step]
    if pending:
        whole = -(-len(pending) // (row * f.group_rows)) * row * f.group_rows
        pending += b"\0" * (whole - len(pending))
        yield pack(np.frombuffer(bytes(pending), np.uint8).reshape(-1, row), use.packed).tobytes()


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
            chunks = _read_parts(src, model, use, _CHUNK)
            if use.packed is not None:
                chunks = _repack_stream(chunks, use)
            for data in chunks:
                digest.update(data)
                dst.write(data)
                nbytes += len(data)
            fmt = use.stored_format
            if nbytes != tensor_nbytes(fmt, use.shape):
                raise CompileError(
                    f"{use.name}: wrote {nbytes} bytes, its shape in {fmt} is {tensor_nbytes(fmt, use.shape)}"
                )
            entries.append(TensorEntry(use.name, use.role, fmt, use.shape, aligned, nbytes, digest.hexdigest()))
            offset = aligned + nbytes
            on_tensor(use.name)
        dst.write(b"\0" * (align_up(offset, ALIGNMENT) - offset))
    return WeightLayout(alignment=ALIGNMENT, tensors=tuple(entries))
