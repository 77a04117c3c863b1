"""Dequantization of GGUF weight formats, in numpy.

The runtime reads weights in their GGUF block layout and must not import `gguf` (the
runtime/compiler boundary), so the block formats are decoded here. Each format is data: a
numpy structured dtype that names the fields of one block, plus a decoder that turns an
array of such blocks into `block_elems` float32 values per block. Decoders are vectorized
over blocks and follow ggml's `dequantize_row_*` operation by operation (same products in
the same order, in float32), so the results are bit-identical to ggml's reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rfc.artifacts.formats import FORMATS as _TABLE
from rfc.artifacts.formats import GGUF_FORMATS, PACKED_FORMATS, PLANAR_FORMATS, Q4_KX8_COLUMN_BYTES, WeightFormat
from rfc.artifacts.formats import row_nbytes as _table_row_nbytes
from rfc.runtime.model import quants_iq, quants_small
from rfc.runtime.model.quants_planar import unpack_planar

QK_K = 256  # elements in one k-quant super-block

# Decode at most this many blocks at a time: the k-quant decoders build temporaries a few
# times the size of their output, and weights can be gigabytes.
_CHUNK_BLOCKS = 1 << 15


class QuantError(ValueError):
    """An unknown weight format, or bytes that do not match the shape asked for."""


def _f32(x: np.ndarray) -> np.ndarray:
    """fp16 block fields as float32 columns, shaped (n_blocks, 1) to broadcast over a block."""
    return x.astype(np.float32)[:, None]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Low nibbles of every byte first, then high nibbles: ggml's 4-bit element order."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(words: np.ndarray, count: int) -> np.ndarray:
    """Bit i of each little-endian uint32 in `words`, for i < count, as uint8 columns."""
    shifts = np.arange(count, dtype=np.uint32)
    return ((words[:, None] >> shifts) & 1).astype(np.uint8)


def _decode_q8_0(b: np.ndarray) -> np.ndarray:
    return b["qs"].astype(np.float32) * _f32(b["d"])


def _decode_q4_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b["qs"]).astype(np.int8) - np.int8(8)
    return _f32(b["d"]) * q.astype(np.float32)


def _decode_q4_1(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b["qs"]).astype(np.float32)
    return _f32(b["d"]) * q + _f32(b["m"])


def _q5_values(b: np.ndarray) -> np.ndarray:
    return _nibbles(b["qs"]) | (_bits(b["qh"], 32) << np.uint8(4))


def _decode_q5_0(b: np.ndarray) -> np.ndarray:
    q = _q5_values(b).astype(np.int8) - np.int8(16)
    return _f32(b["d"]) * q.astype(np.float32)


def _decode_q5_1(b: np.ndarray) -> np.ndarray:
    return _f32(b["d"]) * _q5_values(b).astype(np.float32) + _f32(b["m"])


def _crumbs(qs: np.ndarray, groups: int) -> np.ndarray:
    """2-bit fields of `qs` in k-quant order: each run of 32 bytes yields its bits 0-1 for
    all 32 bytes, then bits 2-3, 4-5 and 6-7. Returns (n_blocks, groups, 16)."""
    n = qs.shape[0]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = (qs.reshape(n, -1, 1, 32) >> shifts) & np.uint8(3)
    return q.reshape(n, groups, 16)


def _decode_q2_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    sc = b["scales"]
    dl = (_f32(b["d"]) * (sc & 0x0F).astype(np.float32)).reshape(n, 16, 1)
    ml = (_f32(b["dmin"]) * (sc >> 4).astype(np.float32)).reshape(n, 16, 1)
    q = _crumbs(b["qs"], 16).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """16 signed 6-bit scales packed in 12 bytes: low nibbles in bytes 0-7 (low halves
    first), high 2-bit pairs in bytes 8-11 (2 bits per scale, 4 scales per shift)."""
    low = _nibbles(s[:, :8])
    high = (s[:, None, 8:12] >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, :, None]) & 3
    return (low | (high.reshape(-1, 16) << np.uint8(4))).astype(np.int8) - np.int8(32)


def _decode_q3_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    dl = (_f32(b["d"]) * _q3_k_scales(b["scales"]).astype(np.float32)).reshape(n, 16, 1)
    low = _crumbs(b["qs"], 16)
    # hmask bit j of byte l is the high bit of element l of the j-th run of 32 elements;
    # a clear bit means "subtract 4".
    hbit = (b["hmask"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    sub = ((hbit ^ np.uint8(1)) << np.uint8(2)).reshape(n, 16, 16)
    q = (low.astype(np.int8) - sub.astype(np.int8)).astype(np.float32)
    return (dl * q).reshape(n, QK_K)


def _k4_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4 for all 8 sub-blocks: 6-bit scales and mins in 12 bytes."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _k4_values(b: np.ndarray) -> np.ndarray:
    """4-bit values of Q4_K/Q5_K, (n_blocks, 8, 32): each run of 32 bytes gives its low
    nibbles to one sub-block and its high nibbles to the next."""
    n = b.shape[0]
    qs = b["qs"].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (qs & np.uint8(0x0F)).reshape(n, 8, 32)


def _k4_affine(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    sc, mn = _k4_scales_mins(b["scales"])
    d = (_f32(b["d"]) * sc.astype(np.float32)).reshape(n, 8, 1)
    dm = (_f32(b["dmin"]) * mn.astype(np.float32)).reshape(n, 8, 1)
    return (d * q.astype(np.float32) - dm).reshape(n, QK_K)


def _decode_q4_k(b: np.ndarray) -> np.ndarray:
    return _k4_affine(b, _k4_values(b))


def _decode_q5_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    hbit = (b["qh"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    return _k4_affine(b, _k4_values(b) | (hbit.reshape(n, 8, 32) << np.uint8(4)))


def _decode_q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d = (_f32(b["d"]) * b["scales"].astype(np.float32)).reshape(n, 16, 1)
    # Per half of 128 elements: 4 runs of 32, low nibbles from ql[0:32], ql[32:64] then
    # high nibbles of the same bytes; 2 high bits from qh[0:32] at shifts 0, 2, 4, 6.
    ql = b["ql"].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    ql = (ql & np.uint8(0x0F)).reshape(n, 8, 32)
    qh = b["qh"].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    qh = (qh & np.uint8(0x03)).reshape(n, 8, 32)
    q = (ql | (qh << np.uint8(4))).astype(np.int8) - np.int8(32)
    return (d * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


def _decode_float(b: np.ndarray) -> np.ndarray:
    return b["v"].astype(np.float32)


def _decode_bf16(b: np.ndarray) -> np.ndarray:
    # bf16 is the top half of a float32.
    return (b["v"].astype(np.uint32) << np.uint32(16)).view(np.float32)


@dataclass(frozen=True)
class _Codec:
    block: np.dtype  # one block's fields, packed
    decode: Callable[[np.ndarray], np.ndarray]  # (n_blocks,) blocks -> (n_blocks, block_elems)


def _block(*fields: tuple) -> np.dtype:
    return np.dtype(list(fields))


_F16 = "<f2"
_CODECS: dict[str, _Codec] = {
    "F32": _Codec(_block(("v", "<f4", (1,))), _decode_float),
    "F16": _Codec(_block(("v", _F16, (1,))), _decode_float),
    "BF16": _Codec(_block(("v", "<u2", (1,))), _decode_bf16),
    "Q8_0": _Codec(_block(("d", _F16), ("qs", "i1", (32,))), _decode_q8_0),
    "Q4_0": _Codec(_block(("d", _F16), ("qs", "u1", (16,))), _decode_q4_0),
    "Q4_1": _Codec(_block(("d", _F16), ("m", _F16), ("qs", "u1", (16,))), _decode_q4_1),
    "Q5_0": _Codec(_block(("d", _F16), ("qh", "<u4"), ("qs", "u1", (16,))), _decode_q5_0),
    "Q5_1": _Codec(_block(("d", _F16), ("m", _F16), ("qh", "<u4"), ("qs", "u1", (16,))), _decode_q5_1),
    "Q2_K": _Codec(
        _block(("scales", "u1", (16,)), ("qs", "u1", (64,)), ("d", _F16), ("dmin", _F16)),
        _decode_q2_k,
    ),
    "Q3_K": _Codec(
        _block(("hmask", "u1", (32,)), ("qs", "u1", (64,)), ("scales", "u1", (12,)), ("d", _F16)),
        _decode_q3_k,
    ),
    "Q4_K": _Codec(
        _block(("d", _F16), ("dmin", _F16), ("scales", "u1", (12,)), ("qs", "u1", (128,))),
        _decode_q4_k,
    ),
    "Q5_K": _Codec(
        _block(
            ("d", _F16),
            ("dmin", _F16),
            ("scales", "u1", (12,)),
            ("qh", "u1", (32,)),
            ("qs", "u1", (128,)),
        ),
        _decode_q5_k,
    ),
    "Q6_K": _Codec(
        _block(("ql", "u1", (128,)), ("qh", "u1", (64,)), ("scales", "i1", (16,)), ("d", _F16)),
        _decode_q6_k,
    ),
}

# the formats of the other modules: ggml's i-quants; the ternary, binary and fp4 formats
for _module in (quants_iq, quants_small):
    _CODECS.update({name: _Codec(np.dtype(fields), decode) for name, (fields, decode) in _module.CODECS.items()})

# The GGUF formats decoded here: rows of the one format table (rfc.artifacts.formats), whose
# block geometry the codecs above must agree with byte for byte. Packed and planar layouts
# (its PACKED_FORMATS, PLANAR_FORMATS) decode by undoing the rearrangement into their base
# format's blocks (unpack_x8, unpack_planar), then that format's decoder.
FORMATS: dict[str, WeightFormat] = {name: GGUF_FORMATS[name] for name in _CODECS}
assert all(_CODECS[n].block.itemsize == f.block_bytes for n, f in FORMATS.items()), "codec/table mismatch"


def unpack_x8(data: np.ndarray, fmt: str, rows: int, n: int) -> np.ndarray:
    """The bytes of `rows` rows of n elements in packed format `fmt` (Q4_0x8, Q4_1x8, Q8_0x8), rows
    padded to whole groups, back in the base format's row-major block layout (padding dropped)."""
    f = PACKED_FORMATS[fmt]
    g, nb, bb = f.group_rows, n // f.block_elems, f.block_bytes
    groups = -(-rows // g)
    if f.base == "Q4_K":
        return _unpack_q4_k_x8(data.reshape(groups, nb, g * bb)).reshape(groups * g, -1)[:rows]
    if f.base == "Q5_K":
        return _unpack_q5_k_x8(data.reshape(groups, nb, g * bb)).reshape(groups * g, -1)[:rows]
    if f.base == "Q6_K":
        return _unpack_q6_k_x8(data.reshape(groups, nb, g * bb)).reshape(groups * g, -1)[:rows]
    if f.base == "IQ4_XS":
        return _unpack_iq4_xs_x8(data.reshape(groups, nb, g * bb)).reshape(groups * g, -1)[:rows]
    head = f.head_bytes  # scale fields per block (2: d; 4: d, m), stored as g values each
    qb = bb - head  # quant bytes per block, in chunks of 4 bytes of every row
    cols = data.reshape(groups, nb, g * bb)
    out = np.empty((groups, g, nb, bb), np.uint8)
    for i in range(head // 2):  # field i: g f16 values, one per row
        out[..., 2 * i : 2 * i + 2] = (
            cols[..., 2 * g * i : 2 * g * (i + 1)].reshape(groups, nb, g, 2).transpose(0, 2, 1, 3)
        )
    qs = cols[..., head * g :].reshape(groups, nb, qb // 4, g, 4)  # [chunk j][row][byte i]
    out[..., head:] = qs.transpose(0, 3, 1, 2, 4).reshape(groups, g, nb, qb)
    return out.reshape(groups * g, nb * bb)[:rows]


def _unpack_q4_k_x8(cols: np.ndarray) -> np.ndarray:
    """Q4_Kx8 columns [group, column, bytes] back to Q4_K blocks [group, row, column, 144]:
    the decoded scales and minimums packed again into ggml's 12 bytes (an exact inverse)."""
    ng, nb = cols.shape[:2]
    out = np.empty((ng, nb, 8, 144), np.uint8)
    out[..., 0:2] = cols[..., 0:16].reshape(ng, nb, 8, 2)
    out[..., 2:4] = cols[..., 16:32].reshape(ng, nb, 8, 2)
    sc = cols[..., 32:96].reshape(ng, nb, 8, 8).transpose(0, 1, 3, 2)  # [row][sub-block]
    mn = cols[..., 96:160].reshape(ng, nb, 4, 8, 2).transpose(0, 1, 3, 2, 4).reshape(ng, nb, 8, 8)
    out[..., 4:8] = (sc[..., 0:4] & 63) | ((sc[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (mn[..., 0:4] & 63) | ((mn[..., 4:8] >> 4) << 6)
    out[..., 12:16] = (sc[..., 4:8] & 0xF) | ((mn[..., 4:8] & 0xF) << 4)
    out[..., 16:] = cols[..., 160:].reshape(ng, nb, 4, 8, 8, 4).transpose(0, 1, 4, 2, 3, 5).reshape(ng, nb, 8, 128)
    return out.transpose(0, 2, 1, 3)


def _unpack_q5_k_x8(cols: np.ndarray) -> np.ndarray:
    """Q5_Kx8 columns [group, column, bytes] back to Q5_K blocks [group, row, column, 176]:
    Q4_Kx8's part as Q4_K's fields, the qh chunks back to each row's 32 bytes."""
    ng, nb = cols.shape[:2]
    q4 = _unpack_q4_k_x8(cols[..., :Q4_KX8_COLUMN_BYTES])  # [group, row, column, 144]
    qh = cols[..., Q4_KX8_COLUMN_BYTES:].reshape(ng, nb, 8, 8, 4).transpose(0, 3, 1, 2, 4).reshape(ng, 8, nb, 32)
    return np.concatenate([q4[..., :16], qh, q4[..., 16:]], axis=-1)


def _unpack_q6_k_x8(cols: np.ndarray) -> np.ndarray:
    """Q6_Kx8 columns [group, column, bytes] back to Q6_K blocks [group, row, column, 210]."""
    ng, nb = cols.shape[:2]
    out = np.empty((ng, nb, 8, 210), np.uint8)
    out[..., 208:210] = cols[..., 0:16].reshape(ng, nb, 8, 2)
    out[..., 192:208] = cols[..., 16:144].reshape(ng, nb, 16, 8).transpose(0, 1, 3, 2)
    out[..., 0:128] = cols[..., 144:1168].reshape(ng, nb, 32, 8, 4).transpose(0, 1, 3, 2, 4).reshape(ng, nb, 8, 128)
    out[..., 128:192] = cols[..., 1168:].reshape(ng, nb, 16, 8, 4).transpose(0, 1, 3, 2, 4).reshape(ng, nb, 8, 64)
    return out.transpose(0, 2, 1, 3)


def _unpack_iq4_xs_x8(cols: np.ndarray) -> np.ndarray:
    """IQ4_XSx8 columns [group, column, bytes] back to IQ4_XS blocks [group, row, column, 136]:
    the int8 sub-block scales packed again into ggml's scales_h and scales_l (an exact inverse)."""
    ng, nb = cols.shape[:2]
    out = np.empty((ng, nb, 8, 136), np.uint8)
    out[..., 0:2] = cols[..., 0:16].reshape(ng, nb, 8, 2)
    # [row][sub-block]
    ls = (cols[..., 16:80].view(np.int8).astype(np.int32) + 32).reshape(ng, nb, 8, 8).transpose(0, 1, 3, 2)
    high = (((ls >> 4) & 3) << (2 * np.arange(8))).sum(axis=-1)
    out[..., 2], out[..., 3] = high & 0xFF, high >> 8
    out[..., 4:8] = (ls[..., 0::2] & 0xF) | ((ls[..., 1::2] & 0xF) << 4)
    out[..., 8:] = cols[..., 80:].reshape(ng, nb, 8, 4, 8, 4).transpose(0, 1, 4, 2, 3, 5).reshape(ng, nb, 8, 128)
    return out.transpose(0, 2, 1, 3)


def _format(fmt: str) -> WeightFormat:
    """The table's row of `fmt`, a format decoded here or a layout of one."""
    f = _TABLE.get(fmt) if isinstance(fmt, str) else None
    if f is None or (f.base or fmt) not in _CODECS:
        known = ", ".join(n for n, g in _TABLE.items() if (g.base or n) in _CODECS)
        raise QuantError(f"unknown weight format {fmt!r} (known: {known})")
    return f


def row_nbytes(fmt: str, n: int) -> int:
    """Bytes of one row of `n` elements stored in `fmt`."""
    f = _format(fmt)
    if n % f.block_elems != 0:
        raise QuantError(f"a {fmt} row of {n} elements is not a whole number of {f.block_elems}-element blocks")
    return _table_row_nbytes(fmt, n)  # the format table's arithmetic (planar rows are padded)


def dequantize(raw: np.ndarray, fmt: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode `raw`, a tensor's bytes in GGUF block layout (rows contiguous, the last
    dimension of `shape` being GGUF's ne[0]), into a float32 array of `shape`."""
    f = _format(fmt)
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise QuantError("dequantize needs a shape with at least one dimension")
    rows = math.prod(shape[:-1])
    packed = PACKED_FORMATS.get(fmt)
    padded = -(-rows // packed.group_rows) * packed.group_rows if packed else rows
    nbytes = padded * row_nbytes(fmt, shape[-1])
    data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if data.size != nbytes:
        raise QuantError(f"{fmt} tensor of shape {shape} needs {nbytes} bytes, got {data.size}")
    if packed:
        data = np.ascontiguousarray(unpack_x8(data, fmt, rows, shape[-1])).reshape(-1)
        fmt = packed.base
    elif fmt in PLANAR_FORMATS:
        data = np.ascontiguousarray(unpack_planar(data, fmt, rows, shape[-1])).reshape(-1)
        fmt = PLANAR_FORMATS[fmt].base
    codec = _CODECS[fmt]
    blocks = data.view(codec.block)
    out = np.empty((blocks.size, f.block_elems), dtype=np.float32)
    for start in range(0, blocks.size, _CHUNK_BLOCKS):
        stop = start + _CHUNK_BLOCKS
        out[start:stop] = codec.decode(blocks[start:stop])
    return out.reshape(shape)
