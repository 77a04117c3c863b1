"""Dequantization of the ternary, binary and fp4 formats (TQ1_0, TQ2_0, Q1_0, Q2_0, MXFP4, NVFP4),
in numpy.

Each decoder follows ggml's dequantize_row_* (and gguf-py's, where gguf-py has one: not Q1_0 nor
Q2_0, which tests/unit/test_quants.py checks against llama.cpp's own decoder instead) float32
operation by operation, so the values are bit-identical to theirs. runtime/model/quants.py merges
CODECS into its table.
"""

import numpy as np

from rfc.artifacts.quant_tables import KVALUES_FP4

_F16 = "<f2"
_KVALUES_FP4 = np.array(KVALUES_FP4, np.int8)
_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)[:, None]


def _trits(qs: np.ndarray, digits: int) -> np.ndarray:
    """[n, m] bytes of base-3 digits -> [n, digits * m] values -1..1, digit k of every byte after
    digit k - 1 of every byte (ggml: q = byte * 3^k mod 256, digit = q * 3 >> 8)."""
    q = (qs[:, None, :] * _POW3[:digits, None]).reshape(len(qs), -1)  # uint8: wraps as ggml's does
    return ((q.astype(np.uint16) * 3) >> 8).astype(np.int8) - np.int8(1)


def _decode_tq1_0(b: np.ndarray) -> np.ndarray:
    q = np.concatenate([_trits(b["qs"][:, :32], 5), _trits(b["qs"][:, 32:], 5), _trits(b["qh"], 4)], axis=1)
    return _f32(b["d"]) * q.astype(np.float32)


def _crumbs_by_32(qs: np.ndarray) -> np.ndarray:
    """[n, 32 k] bytes -> [n, 128 k] 2-bit values: per 32 bytes, bits 0-1 of each, then 2-3, ..."""
    n = len(qs)
    return ((qs.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3).reshape(n, -1)


def _decode_tq2_0(b: np.ndarray) -> np.ndarray:
    return _f32(b["d"]) * (_crumbs_by_32(b["qs"]).astype(np.int8) - np.int8(1)).astype(np.float32)


def _decode_q1_0(b: np.ndarray) -> np.ndarray:
    """Bit j (little-endian within each byte) of qs: +d when set, -d when clear."""
    bits = np.unpackbits(b["qs"], axis=1, bitorder="little").astype(bool)
    d = _f32(b["d"])
    return np.where(bits, d, -d)


def _decode_q2_0(b: np.ndarray) -> np.ndarray:
    """Element j is bits 2(j % 4) of byte j // 4: 0, 1, 2, 3 mean -1, 0, 1, 2 times d."""
    q = (b["qs"][:, :, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    return (q.reshape(len(b), -1).astype(np.int32) - 1).astype(np.float32) * _f32(b["d"])


def _e8m0_half(e: np.ndarray) -> np.ndarray:
    """ggml_e8m0_to_fp32_half: 2^(e - 128) as float32 (exponents 0 and 1 subnormal)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _fp4(qs: np.ndarray) -> np.ndarray:
    """[..., 2 m] bytes -> [..., 4 m] values: per m bytes, the low nibbles, then the high ones."""
    return _KVALUES_FP4[np.concatenate([qs & 0x0F, qs >> 4], axis=-1)].astype(np.float32)


def _decode_mxfp4(b: np.ndarray) -> np.ndarray:
    return _e8m0_half(b["e"])[:, None] * _fp4(b["qs"])


def _ue4m3_half(x: np.ndarray) -> np.ndarray:
    """ggml_ue4m3_to_fp32: unsigned E4M3 (bias 7) times 0.5; codes 0 and 0x7F decode to 0. Every
    value is exact in float32."""
    e, m = (x >> 3).astype(np.int32) & 0xF, (x & 7).astype(np.float64)
    raw = np.where(e == 0, m * 2.0**-9, (1.0 + m / 8.0) * np.exp2(e - 7.0))
    return np.where((x == 0) | (x == 0x7F), 0.0, raw * 0.5).astype(np.float32)


def _decode_nvfp4(b: np.ndarray) -> np.ndarray:
    """4 sub-blocks of 16, each an UE4M3 scale and 8 bytes of fp4 (low nibbles first)."""
    n = len(b)
    return (_ue4m3_half(b["d"])[:, :, None] * _fp4(b["qs"].reshape(n, 4, 8))).reshape(n, 64)


# name -> (the block's fields, the decoder: (n_blocks,) blocks -> (n_blocks, block_elems) float32)
CODECS = {
    "TQ1_0": ([("qs", "u1", (48,)), ("qh", "u1", (4,)), ("d", _F16)], _decode_tq1_0),
    "TQ2_0": ([("qs", "u1", (64,)), ("d", _F16)], _decode_tq2_0),
    "Q1_0": ([("d", _F16), ("qs", "u1", (16,))], _decode_q1_0),
    "Q2_0": ([("d", _F16), ("qs", "u1", (16,))], _decode_q2_0),
    "MXFP4": ([("e", "u1"), ("qs", "u1", (16,))], _decode_mxfp4),
    "NVFP4": ([("d", "u1", (4,)), ("qs", "u1", (32,))], _decode_nvfp4),
}  # fmt: skip
