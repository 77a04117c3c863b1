"""Dequantization of ggml's i-quants (IQ4_NL ... IQ1_M), in numpy: the formats decoded through
the codebooks and lattice grids of artifacts/quant_tables.py.

Each decoder follows gguf-py's (and ggml's dequantize_row_*) float32 operations in their order,
so the values are bit-identical to theirs (tests/unit/test_quants.py). Blocks are numpy
structured dtypes, as in runtime/model/quants.py, which merges CODECS into its table.
"""

import numpy as np

from rfc.artifacts.quant_tables import GRIDS, KVALUES_IQ4NL, ksigns

_F16 = "<f2"
_KVALUES_IQ4NL = np.array(KVALUES_IQ4NL, np.int8)
_GRIDS = {name: np.array(g.entries, np.float32) for name, g in GRIDS.items()}  # [entries, width]
_KSIGNS = np.array(ksigns(), np.uint8)
_BITS = np.arange(8, dtype=np.uint8)


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)[:, None]


def _nibbles16(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] 4-bit values: low nibbles (elements 0-15), then high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _signs(bits: np.ndarray) -> np.ndarray:
    """[...] sign bytes -> [..., 8] float32 factors: bit j set means element j is negative."""
    return np.where((bits[..., None] >> _BITS) & 1, np.float32(-1), np.float32(1))


def _decode_iq4_nl(b: np.ndarray) -> np.ndarray:
    q = _KVALUES_IQ4NL[_nibbles16(b["qs"])].astype(np.float32)
    return _f32(b["d"]) * q


def _decode_iq4_xs(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    ib = np.arange(8)
    low = (b["scales_l"][:, ib // 2] >> (4 * (ib % 2)).astype(np.uint8)) & 0x0F
    high = (b["scales_h"][:, None] >> (2 * ib).astype(np.uint16)).astype(np.uint8) & 0x03
    ls = (low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)
    dl = (_f32(b["d"]) * ls.astype(np.float32))[:, :, None]
    q = _KVALUES_IQ4NL[_nibbles16(b["qs"].reshape(n, 8, 16))].astype(np.float32)
    return (dl * q).reshape(n, 256)


def _decode_iq2_xxs(b: np.ndarray) -> np.ndarray:
    """Per 32: 4 grid indices (bytes), then 4 x 7 sign bits (ksigns) and a 4-bit scale in a u32."""
    n = b.shape[0]
    aux = b["qs"].reshape(n, 8, 2)  # u32 pairs
    db = _f32(b["d"]) * (np.float32(0.5) + (aux[..., 1] >> np.uint32(28)).astype(np.float32)) * np.float32(0.25)
    idx = aux[..., 0].copy().view(np.uint8).reshape(n, 8, 4)
    signs = _KSIGNS[(aux[..., 1, None] >> np.array([0, 7, 14, 21], np.uint32)) & np.uint32(127)]
    return (db[:, :, None, None] * _GRIDS["iq2xxs"][idx] * _signs(signs)).reshape(n, 256)


def _decode_iq2_xs(b: np.ndarray) -> np.ndarray:
    """Per 8 values a u16: a 9-bit grid index and 7 sign bits; a 4-bit scale per 16."""
    n = b.shape[0]
    sc = (b["scales"][:, :, None] >> np.array([0, 4], np.uint8)) & 0x0F
    db = (_f32(b["d"])[:, :, None] * (np.float32(0.5) + sc) * np.float32(0.25)).reshape(n, 16, 1, 1)
    q = b["qs"].reshape(n, 16, 2)
    grid = _GRIDS["iq2xs"][q & np.uint16(511)]
    return (db * grid * _signs(_KSIGNS[q >> np.uint16(9)])).reshape(n, 256)


def _decode_iq2_s(b: np.ndarray) -> np.ndarray:
    """Per 8 values a grid index (8 bits in qs, 2 in qh) and 8 explicit sign bits; a scale per 16."""
    n = b.shape[0]
    sc = (b["scales"][:, :, None] >> np.array([0, 4], np.uint8)) & 0x0F
    db = (_f32(b["d"])[:, :, None] * (np.float32(0.5) + sc) * np.float32(0.25)).reshape(n, 16, 1, 1)
    high = (b["qh"][:, :, None] >> np.array([0, 2, 4, 6], np.uint8)) & 0x03
    idx = b["qs"].astype(np.uint16) | (high.astype(np.uint16) << np.uint16(8)).reshape(n, 32)
    grid = _GRIDS["iq2s"][idx].reshape(n, 16, 2, 8)
    return (db * grid * _signs(b["signs"]).reshape(n, 16, 2, 8)).reshape(n, 256)


def _decode_iq3_xxs(b: np.ndarray) -> np.ndarray:
    """Per 32: 8 grid indices (4 values each), then 4 x 7 sign bits and a 4-bit scale in a u32."""
    n = b.shape[0]
    aux = b["scales"]
    db = _f32(b["d"]) * (np.float32(0.5) + (aux >> np.uint32(28)).astype(np.float32)) * np.float32(0.5)
    signs = _KSIGNS[(aux[..., None] >> np.array([0, 7, 14, 21], np.uint32)) & np.uint32(127)]
    grid = _GRIDS["iq3xxs"][b["qs"].reshape(n, 8, 4, 2)].reshape(n, 8, 4, 8)
    return (db[:, :, None, None] * grid * _signs(signs)).reshape(n, 256)


def _decode_iq3_s(b: np.ndarray) -> np.ndarray:
    """Per 4 values a 9-bit grid index (8 bits in qs, the ninth in qh); 8 sign bits per 8; a
    4-bit odd scale (1 + 2s) per 32."""
    n = b.shape[0]
    sc = (b["scales"][:, :, None] >> np.array([0, 4], np.uint8)) & 0x0F
    db = (_f32(b["d"])[:, :, None] * (1 + 2 * sc)).reshape(n, 8, 1, 1)
    high = ((b["qh"][:, :, None] >> _BITS) & 1).astype(np.uint16).reshape(n, 64)
    idx = b["qs"].astype(np.uint16) | (high << np.uint16(8))
    grid = _GRIDS["iq3s"][idx].reshape(n, 8, 4, 8)
    return (db * grid * _signs(b["signs"]).reshape(n, 8, 4, 8)).reshape(n, 256)


_DELTA = np.float32(0.125)


def _decode_iq1_s(b: np.ndarray) -> np.ndarray:
    """Per 32 a u16: 4 x 3 high bits of the 11-bit grid indices, a 3-bit odd scale, the sign of
    the shift delta added to every value."""
    n = b.shape[0]
    qh = b["qh"]
    dl = (_f32(b["d"]) * (2 * ((qh >> np.uint16(12)) & 7) + 1)).reshape(n, 8, 1, 1)
    delta = np.where((qh & np.uint16(0x8000)) == 0, _DELTA, -_DELTA).reshape(n, 8, 1, 1)
    high = (qh[:, :, None] >> np.array([0, 3, 6, 9], np.uint16)) & 7
    idx = b["qs"].astype(np.uint16) | (high << np.uint16(8)).reshape(n, 32)
    grid = _GRIDS["iq1s"][idx].reshape(n, 8, 4, 8)
    return (dl * (grid + delta)).reshape(n, 256)


def _decode_iq1_m(b: np.ndarray) -> np.ndarray:
    """IQ1_S's grid with 3-bit scales per 16 and a delta sign per 8; the block's f16 scale is the
    top nibbles of the four u16 scale words."""
    n = b.shape[0]
    sc = b["scales"]
    bits = (sc & np.uint16(0xF000)) >> np.array([12, 8, 4, 0], np.uint16)
    d = (bits[:, 0] | bits[:, 1] | bits[:, 2] | bits[:, 3]).view(np.float16).astype(np.float32)[:, None]
    s3 = ((sc[:, :, None] >> np.array([0, 3, 6, 9], np.uint16)) & 7).reshape(n, 16)
    dl = (d * (2 * s3 + 1)).reshape(n, 8, 2, 1, 1)
    qh = (b["qh"][:, :, None] >> np.array([0, 4], np.uint8)).reshape(n, 32)
    idx = b["qs"].astype(np.uint16) | ((qh & 0x07).astype(np.uint16) << np.uint16(8))
    delta = np.where(qh & 0x08 == 0, _DELTA, -_DELTA).reshape(n, 8, 2, 2, 1)
    grid = _GRIDS["iq1s"][idx].reshape(n, 8, 2, 2, 8)
    return (dl * (grid + delta)).reshape(n, 256)


# name -> (the block's fields, the decoder: (n_blocks,) blocks -> (n_blocks, block_elems) float32)
CODECS = {
    "IQ4_NL": ([("d", _F16), ("qs", "u1", (16,))], _decode_iq4_nl),
    "IQ4_XS": ([("d", _F16), ("scales_h", "<u2"), ("scales_l", "u1", (4,)), ("qs", "u1", (128,))], _decode_iq4_xs),
    "IQ2_XXS": ([("d", _F16), ("qs", "<u4", (16,))], _decode_iq2_xxs),
    "IQ2_XS": ([("d", _F16), ("qs", "<u2", (32,)), ("scales", "u1", (8,))], _decode_iq2_xs),
    "IQ2_S": ([("d", _F16), ("qs", "u1", (32,)), ("signs", "u1", (32,)), ("qh", "u1", (8,)), ("scales", "u1", (8,))],
              _decode_iq2_s),
    "IQ3_XXS": ([("d", _F16), ("qs", "u1", (64,)), ("scales", "<u4", (8,))], _decode_iq3_xxs),
    "IQ3_S": ([("d", _F16), ("qs", "u1", (64,)), ("qh", "u1", (8,)), ("signs", "u1", (32,)), ("scales", "u1", (4,))],
              _decode_iq3_s),
    "IQ1_S": ([("d", _F16), ("qs", "u1", (32,)), ("qh", "<u2", (8,))], _decode_iq1_s),
    "IQ1_M": ([("qs", "u1", (32,)), ("qh", "u1", (16,)), ("scales", "<u2", (4,))], _decode_iq1_m),
}  # fmt: skip
