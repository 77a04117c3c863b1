"""The planar GPU layouts (artifacts/formats.py PLANAR_FORMATS): GGUF rows split into planes.

`pack_planar` turns rows of GGUF blocks into the layout the GPU matmuls read with aligned,
coalesced loads; runtime/model/quants_planar.py is its inverse (the tests check both ways). Every
rearrangement moves bits without changing them, so the decoded values are the GGUF ones
exactly. Work is on whole rows at a time: the weight planner streams a tensor in chunks of
rows, and a planar row depends on nothing outside itself.
"""

import numpy as np

from rfc.artifacts.formats import PLANAR_FORMATS, plane_offsets, row_nbytes


# -- pieces of one 32-element sub-block (formats.py names them: nib16, crumb8, bit4) -----------
def bit4(v: np.ndarray) -> np.ndarray:
    """[..., 32] 1-bit values -> [..., 4] bytes: byte j bit t = v[j + 4t]."""
    t = v.reshape(*v.shape[:-1], 8, 4).astype(np.uint8)
    return np.bitwise_or.reduce(t << np.arange(8, dtype=np.uint8)[:, None], axis=-2).astype(np.uint8)


def nib16_pair(q: np.ndarray) -> np.ndarray:
    """[..., 32] bytes, each holding two 4-bit values (low nibble, high nibble) -> [..., 2, 16]:
    nib16 of the 32 low nibbles, then of the 32 high ones, straight from the bytes (no array of
    values in between: the k-quants' repacking of an 8B model spent most of its time there)."""
    w = q.view("<u8")  # 8 bytes a word: the nibble masks and shifts act on each byte alike
    a, b = w[..., :2], w[..., 2:]
    out = np.empty((*q.shape[:-1], 2, 2), "<u8")
    m = np.uint64(0x0F0F0F0F0F0F0F0F)
    np.bitwise_or(a & m, (b & m) << np.uint64(4), out=out[..., 0, :])
    np.bitwise_or((a >> np.uint64(4)) & m, b & ~m, out=out[..., 1, :])
    return out.view(np.uint8)


def crumb8_quad(q: np.ndarray) -> np.ndarray:
    """[..., 32] bytes, each holding four 2-bit values (bits 2s..2s+1 for s = 0..3) -> [..., 4, 8]:
    crumb8 of the 32 values at bits 2s, for each s, straight from the bytes (byte j of piece s:
    bits 2t = bits 2s of byte j + 8t), on 8-byte words."""
    w = q.view("<u8")  # word t holds bytes 8t .. 8t + 7
    m = np.uint64(0x0303030303030303)
    out = np.zeros((*q.shape[:-1], 4), "<u8")
    for s in range(4):
        for t in range(4):
            out[..., s] |= ((w[..., t] >> np.uint64(2 * s)) & m) << np.uint64(2 * t)
    return out.view(np.uint8).reshape(*q.shape[:-1], 4, 8)


# -- GGUF fields as per-sub-block element values ([rows, blocks, subs, 32]) ---------------------
def _gguf_bits32(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1 qh (4 bytes, little-endian bit e = element e) -> [..., 32] bits."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _planes(fmt: str, b: np.ndarray) -> list[np.ndarray]:
    """The planes of `fmt` for GGUF blocks b [rows, blocks, block bytes], each [rows, blocks, piece]."""
    base = PLANAR_FORMATS[fmt].base
    if base == "Q4_0":
        return [b[..., 0:2], b[..., 2:18]]
    if base == "Q4_1":
        return [b[..., 0:4], b[..., 4:20]]
    if base == "Q8_0":
        return [b[..., 0:2], b[..., 2:34]]
    if base in ("Q5_0", "Q5_1"):
        head = 2 if base == "Q5_0" else 4
        return [b[..., 0:head], bit4(_gguf_bits32(b[..., head : head + 4])), b[..., head + 4 : head + 20]]
    r, nb = b.shape[:2]
    if base == "Q2_K":  # (_k_crumbs's sub-block order: [32-byte group][bit pair])
        return [b[..., 80:84], b[..., 0:16], crumb8_quad(b[..., 16:80].reshape(r, nb, 2, 32)).reshape(r, nb, 64)]
    if base == "Q3_K":
        hbits = np.unpackbits(b[..., 0:32, None], axis=-1, bitorder="little")  # [byte l][bit g]
        high = bit4(np.swapaxes(hbits, -1, -2)).reshape(r, nb, 32)  # sub-block g: bit g of bytes 0..31
        return [
            b[..., 108:110],
            b[..., 96:108],
            crumb8_quad(b[..., 32:96].reshape(r, nb, 2, 32)).reshape(r, nb, 64),
            high,
        ]
    if base == "Q6_K":
        # sub-block g = 4 nh + k: low nibbles k // 2 of ql bytes 64 nh + 32 (k % 2) .., high
        # bits 2k of qh bytes 32 nh ..
        # ([nh][k % 2][nibble k // 2] of nib16_pair, in [nh][k // 2][k % 2] order: [nh][k])
        ql = np.swapaxes(nib16_pair(b[..., 0:128].reshape(r, nb, 2, 2, 32)), -2, -3)
        return [
            b[..., 208:210],
            b[..., 192:208],
            ql.reshape(r, nb, 128),
            crumb8_quad(b[..., 128:192].reshape(r, nb, 2, 32)).reshape(r, nb, 64),  # [nh][k]: bits 2k of qh
        ]
    if base in ("Q4_K", "Q5_K"):
        # sub-block g = 2 p + h: nibble h of qs bytes 32 p .. 32 p + 31; Q5_K's fifth bits: bit g of qh bytes 0..31
        at = 16 if base == "Q4_K" else 48
        quants = nib16_pair(b[..., at : at + 128].reshape(r, nb, 4, 32)).reshape(r, nb, 128)  # [p][h]
        if base == "Q4_K":
            return [b[..., 0:4], b[..., 4:16], quants]
        hbits = np.unpackbits(b[..., 16:48, None], axis=-1, bitorder="little")  # [byte l][bit g]
        return [b[..., 0:4], b[..., 4:16], bit4(np.swapaxes(hbits, -1, -2)).reshape(r, nb, 32), quants]
    raise AssertionError(f"no planar packing for {fmt}")


def pack_planar(rows: np.ndarray, fmt: str) -> np.ndarray:
    """Rows of GGUF blocks (uint8 [rows, row bytes] of the base format) in planar layout `fmt`."""
    f = PLANAR_FORMATS[fmt]
    n_rows = rows.shape[0]
    nb = rows.shape[1] // row_nbytes(f.base, f.block_elems)
    n = nb * f.block_elems
    out = np.zeros((n_rows, row_nbytes(f, n)), np.uint8)
    planes = _planes(fmt, rows.reshape(n_rows, nb, -1))
    for at, per_block, plane in zip(plane_offsets(f, n), f.planes, planes):
        assert plane.shape[-1] == per_block, (fmt, plane.shape)
        out[:, at : at + nb * per_block] = plane.reshape(n_rows, nb * per_block)
    return out
