"""The planar GPU layouts (artifacts/formats.py PLANAR_FORMATS) back into GGUF blocks.

The numpy reference decodes a planar tensor by undoing the planes into its base format's
blocks (an exact inverse of the compiler's pack_planar: only bits move), then decoding those
as ggml does. The runtime cannot import the compiler, so the inverse is written here from
the format table's description.
"""

import numpy as np

from rfc.artifacts.formats import PLANAR_FORMATS, plane_offsets, row_nbytes


def _un_nib16(p: np.ndarray) -> np.ndarray:
    """[..., 16] nib16 bytes -> [..., 32] 4-bit values."""
    return np.concatenate([p & 0xF, p >> 4], axis=-1)


def _un_crumb8(p: np.ndarray) -> np.ndarray:
    """[..., 8] crumb8 bytes -> [..., 32] 2-bit values (element j + 8t in bits 2t of byte j)."""
    return ((p[..., None, :] >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3).reshape(*p.shape[:-1], 32)


def _un_bit4(p: np.ndarray) -> np.ndarray:
    """[..., 4] bit4 bytes -> [..., 32] bits (element j + 4t in bit t of byte j)."""
    return ((p[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1).reshape(*p.shape[:-1], 32)


def _k_qs(crumbs: np.ndarray) -> np.ndarray:
    """[..., 8 sub-blocks, 32] 2-bit values -> Q2_K/Q3_K's 64 qs bytes (sub-block g in bits
    2(g % 4) of bytes 32(g // 4) ..)."""
    c = crumbs.reshape(*crumbs.shape[:-2], 2, 4, 32)
    return (c[..., 0, :] | (c[..., 1, :] << 2) | (c[..., 2, :] << 4) | (c[..., 3, :] << 6)).reshape(
        *crumbs.shape[:-2], 64
    )


def _blocks(base: str, p: list[np.ndarray]) -> list[np.ndarray]:
    """The GGUF block fields, in block order, from the planes [rows, blocks, piece bytes]."""
    if base in ("Q4_0", "Q4_1", "Q8_0"):
        return p
    r, nb = p[0].shape[:2]
    if base in ("Q5_0", "Q5_1"):
        qh = np.packbits(_un_bit4(p[1]), axis=-1, bitorder="little")
        return [p[0], qh, p[2]]
    if base == "Q2_K":
        return [p[1], _k_qs(_un_crumb8(p[2].reshape(r, nb, 8, 8))), p[0]]
    if base == "Q3_K":
        high = _un_bit4(p[3].reshape(r, nb, 8, 4))  # [sub-block g][element l]
        hmask = np.packbits(np.swapaxes(high, -1, -2), axis=-1, bitorder="little").reshape(r, nb, 32)
        return [hmask, _k_qs(_un_crumb8(p[2].reshape(r, nb, 8, 8))), p[1], p[0]]
    if base == "Q6_K":
        low = _un_nib16(p[2].reshape(r, nb, 8, 16)).reshape(r, nb, 2, 2, 2, 32)  # [nh][k // 2][k % 2][l]
        ql = (low[..., 0, :, :] | (low[..., 1, :, :] << 4)).reshape(r, nb, 128)
        high = _un_crumb8(p[3].reshape(r, nb, 8, 8)).reshape(r, nb, 2, 4, 32)  # [nh][k][l]
        qh = (high[..., 0, :] | (high[..., 1, :] << 2) | (high[..., 2, :] << 4) | (high[..., 3, :] << 6)).reshape(
            r, nb, 64
        )
        return [ql, qh, p[1], p[0]]
    if base in ("Q4_K", "Q5_K"):
        low = _un_nib16(p[-1].reshape(r, nb, 8, 16)).reshape(r, nb, 4, 2, 32)  # [pair][nibble][l]
        qs = (low[..., 0, :] | (low[..., 1, :] << 4)).reshape(r, nb, 128)
        if base == "Q4_K":
            return [p[0], p[1], qs]
        high = _un_bit4(p[2].reshape(r, nb, 8, 4))  # [sub-block g][element l]
        qh = np.packbits(np.swapaxes(high, -1, -2), axis=-1, bitorder="little").reshape(r, nb, 32)
        return [p[0], p[1], qh, qs]
    raise AssertionError(f"no planar layout of {base}")


def unpack_planar(data: np.ndarray, fmt: str, rows: int, n: int) -> np.ndarray:
    """The bytes of `rows` rows of n elements in planar format `fmt`, back in the base
    format's row-major blocks (uint8 [rows, base row bytes])."""
    f = PLANAR_FORMATS[fmt]
    nb = n // f.block_elems
    planar = data.reshape(rows, row_nbytes(f, n))
    planes = [planar[:, at : at + nb * size].reshape(rows, nb, size)
              for at, size in zip(plane_offsets(f, n), f.planes)]  # fmt: skip
    fields = _blocks(f.base, planes)
    return np.concatenate([x.astype(np.uint8) for x in fields], axis=-1).reshape(rows, row_nbytes(f.base, n))
