"""KV-cache storage types a runtime chooses at load (--cache-type-k / --cache-type-v, llama.cpp's
names), and the bytes they take.

The plan's KVSpec says what the model needs (layers, kv heads, head_dim); how a device stores
each cached K and V row is a serving choice, like the number of pages: "f16" (llama.cpp's
default), or ggml's q8_0 / q4_0 blocks of 32 values along head_dim (an f16 scale, then 32 int8
or 16 bytes of 4-bit pairs), so that a row of a kv head is whole blocks (head_dim % 32 == 0,
as llama.cpp requires). The cpu step program is given the type as a number (`code`), the same
on both sides of the ABI.
"""

from dataclasses import dataclass
from enum import Enum

from rfc.artifacts.plan import KVSpec

BLOCK_VALUES = 32  # values per q8_0 / q4_0 block, as ggml's QK8_0 / QK4_0
ROTATION_MIN = 64  # the smallest Hadamard rotation of a quantized cache's rows (KvCacheTypes.rotations)


class CacheTypeError(ValueError):
    """An unknown cache type, or one the model's head_dim cannot be stored in."""


class CacheType(str, Enum):
    F16 = "f16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"

    __str__ = str.__str__

    @property
    def code(self) -> int:
        """The number the cpu step program's k_type / v_type carry (templates/cpu_attention.c.j2)."""
        return _CODES[self]

    @property
    def block_bytes(self) -> int:
        """Bytes of BLOCK_VALUES values: an f16 scale and the quants (f16: the values)."""
        return _BLOCK_BYTES[self]

    def row_bytes(self, values: int) -> int:
        """Bytes of `values` cached values (a whole number of blocks when quantized)."""
        return values * 2 if self is CacheType.F16 else values // BLOCK_VALUES * self.block_bytes


_CODES = {CacheType.F16: 0, CacheType.Q8_0: 1, CacheType.Q4_0: 2}
_BLOCK_BYTES = {
    CacheType.F16: 2 * BLOCK_VALUES,
    CacheType.Q8_0: 2 + BLOCK_VALUES,
    CacheType.Q4_0: 2 + BLOCK_VALUES // 2,
}


def parse_cache_type(value: str, option: str = "--cache-type") -> CacheType:
    """A cache type by its llama.cpp name; CacheTypeError naming the option otherwise."""
    try:
        return CacheType(str(value).strip().lower())
    except ValueError:
        raise CacheTypeError(f"{option} {value}: expected one of {', '.join(t.value for t in CacheType)}") from None


@dataclass(frozen=True)
class KvCacheTypes:
    """How a device stores K and V (each row: n_kv_heads * head_dim values of one token)."""

    k: CacheType = CacheType.F16
    v: CacheType = CacheType.F16

    @property
    def quantized(self) -> bool:
        return self.k is not CacheType.F16 or self.v is not CacheType.F16

    def check(self, kv: KVSpec, geometries: set[tuple[int, int]] = frozenset()) -> None:
        """CacheTypeError unless every kv head's row is whole blocks of the chosen types, and
        (`geometries`: Plan.kv_geometries) every layer fills the whole row: quantized rows and
        their rotations are sized by one head_dim, which layers of different sizes (Gemma 4) lack."""
        if self.quantized and kv.head_dim % BLOCK_VALUES:
            raise CacheTypeError(
                f"a {self.k}/{self.v} KV cache needs head_dim to be a multiple of {BLOCK_VALUES}; "
                f"this model's is {kv.head_dim}"
            )
        if self.quantized and set(geometries) - {(kv.n_kv_heads, kv.head_dim)}:
            sizes = ", ".join(f"{n}x{d}" for n, d in sorted(geometries))
            raise CacheTypeError(
                f"--cache-type-k/--cache-type-v {self.k}/{self.v}: this model's layers differ in KV "
                f"heads x head size ({sizes}); only an f16 KV cache serves it"
            )

    def row_bytes(self, kv: KVSpec) -> tuple[int, int]:
        """Bytes of one token's K row and V row in one layer."""
        width = kv.n_kv_heads * kv.head_dim
        return self.k.row_bytes(width), self.v.row_bytes(width)

    def token_bytes(self, kv: KVSpec) -> int:
        """Bytes one cached token takes: K and V of every layer."""
        return kv.n_layers * sum(self.row_bytes(kv))

    def rotations(self, head_dim: int) -> tuple[int, int]:
        """Sizes of the Hadamard rotations K and V rows take before they are quantized (0: none),
        as llama.cpp's quantized caches do (llama-kv-cache.cpp attn_rot_k / attn_rot_v): an
        orthonormal rotation spreads an outlier dimension over the block, so one large value no
        longer sets the scale of all 32. K (and with it Q, so that Q.K is unchanged) rotates in
        the largest power of two >= 64 dividing head_dim, V in 64s (the attention output rotates
        back); a head_dim that is no multiple of 64 is not rotated."""
        if head_dim % ROTATION_MIN:
            return 0, 0
        k = ROTATION_MIN
        while head_dim % (2 * k) == 0:
            k *= 2
        return (k if self.k is not CacheType.F16 else 0), (ROTATION_MIN if self.v is not CacheType.F16 else 0)

    def describe(self) -> str:
        return f"K {self.k}, V {self.v}"
