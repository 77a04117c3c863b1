"""q8_0 / q4_0 rows of a quantized KV cache in numpy: what the reference device writes and
reads, and what the compiled kernels must agree with bit for bit.

The blocks are ggml's (artifacts/kv_cache_type.py): 32 values share an f16 scale d. q8_0:
d = amax / 127, q = the nearest integer to x / d; q4_0: d = (the value of largest magnitude)
/ -8, q = min(15, floor(x / d + 8.5)), stored low nibble for value j, high for j + 16. Every
step is float32 arithmetic in the order the C kernels do it (x * (1 / d), not x / d), and
q8_0 rounds half to even, as ggml's vector path (and rfc's kernels) do, not away from zero
as its scalar reference does: the two differ only on exact .5 quotients.
"""

import numpy as np

from rfc.artifacts.kv_cache_type import BLOCK_VALUES, CacheType


def _scales(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the f16 bits of each block's scale, the float32 reciprocal the quants are taken with)."""
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    return d.astype(np.float16).view(np.uint16), inv


def quantize_rows(x: np.ndarray, t: CacheType) -> np.ndarray:
    """float32 [n, width] -> uint8 [n, t.row_bytes(width)] (width a multiple of 32)."""
    n, width = x.shape
    b = np.ascontiguousarray(x, dtype=np.float32).reshape(n, width // BLOCK_VALUES, BLOCK_VALUES)
    if t is CacheType.Q8_0:
        d = (np.abs(b).max(axis=-1) / np.float32(127.0)).astype(np.float32)
        bits, inv = _scales(d)
        q = np.rint(b * inv[..., None]).astype(np.int8)
        out = np.concatenate([bits[..., None].view(np.uint8), q.view(np.uint8)], axis=-1)
    elif t is CacheType.Q4_0:
        at = np.abs(b).argmax(axis=-1)[..., None]  # the first of equal magnitudes, as ggml's strict <
        d = (np.take_along_axis(b, at, axis=-1)[..., 0] / np.float32(-8.0)).astype(np.float32)
        bits, inv = _scales(d)
        q = np.minimum(np.floor(b * inv[..., None] + np.float32(8.5)), 15).astype(np.uint8)
        half = BLOCK_VALUES // 2
        packed = q[..., :half] | (q[..., half:] << 4)
        out = np.concatenate([bits[..., None].view(np.uint8), packed], axis=-1)
    else:
        raise ValueError(f"{t} is not a quantized cache type")
    return out.reshape(n, t.row_bytes(width))


def dequantize_rows(raw: np.ndarray, t: CacheType, width: int) -> np.ndarray:
    """uint8 [n, t.row_bytes(width)] -> float32 [n, width]: float(d) * q, one float32 product."""
    n = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(n, width // BLOCK_VALUES, t.block_bytes)
    d = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # [n, blocks, 1]
    if t is CacheType.Q8_0:
        q = blocks[..., 2:].view(np.int8).astype(np.float32)
    elif t is CacheType.Q4_0:
        p = blocks[..., 2:]
        q = np.concatenate([p & 0x0F, p >> 4], axis=-1).astype(np.float32) - np.float32(8.0)
    else:
        raise ValueError(f"{t} is not a quantized cache type")
    return (d * q).astype(np.float32).reshape(n, width)


def hadamard(n: int) -> np.ndarray:
    """The n x n orthonormal Hadamard matrix of Sylvester's construction (n a power of two),
    float64: symmetric, its own inverse."""
    h = np.ones((1, 1))
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def rotate(x: np.ndarray, size: int) -> np.ndarray:
    """Rows of head_dim values (the last axis) rotated in blocks of `size` (0: unchanged),
    float64 math, float32 out. Rotating twice gives the rows back (to rounding)."""
    if not size:
        return x
    shape = x.shape
    return (x.reshape(-1, size).astype(np.float64) @ hadamard(size)).astype(np.float32).reshape(shape)
