"""Weight formats: the one table of how a tensor's elements are stored in bytes, and of which
kernels read them (ggml's type_traits: one row per format, the kernels found through it).

The compiler reads GGUF tensors in these formats, plans kernels and repacks weights with it,
and renders each row's constants into the kernels' preludes (templates/rfc_formats.h.j2,
cpu_formats.h.j2); the runtime validates layouts (shape x format = bytes) and dequantizes
with it. A format is a run of fixed-size blocks along a tensor's last dimension; the float
formats are blocks of one element. A *packed* format is a target layout the weight planner
produces from a GGUF format: the same blocks, rearranged so that `group_rows` rows are
interleaved (a tensor's rows are padded up to a whole number of groups, padding bytes zero).
A *planar* format (the GPU targets' layouts) keeps rows apart but splits each row into
planes: one field of every block after another, each plane padded to PLANE_ALIGN bytes
(row_nbytes). A packed or planar row is also the repack policy: the weight planner stores a
GGUF format's weights in the layout row whose `kernels` are a target's and whose `ops` read
all that reads the weight (compiler/weight_plan.py).

`activation` names how kernels that take int8 dot products round the activations paired
with a format (llama.cpp's vec_dot_type): "q8_0" (int8, one f16 scale per 32), "q8_1"
(also the block's sum), "q8_k" (int8, one f32 scale per 256, with 16-element sums), or
None for formats whose kernels read float activations. Tests derive error bounds from it;
the GPU int8 matmuls take every format that has one.

A new format is its row here, its block decoder (kernels/rfc_blocks.h, runtime/model/quants.py),
its dot kernels where its row says it has them, and its tests.
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Flag, auto
from math import prod

from rfc.artifacts.errors import BundleError
from rfc.artifacts.targets import Family

# Tensors are bounded long before these: they only stop arithmetic on hostile shapes from
# producing numbers no allocation or offset could mean.
MAX_DIM = 1 << 31
MAX_TENSOR_BYTES = 1 << 40


class FormatError(BundleError):
    """An unknown format, or a shape the format cannot store."""


class Kernels(Flag):
    """The kernels that read a format: the cpu targets' C library, the GPU targets' source
    (gfx* and sm_* build the same one). No flag: only the numpy reference reads it."""

    NONE = 0
    CPU = auto()
    GPU = auto()

    @staticmethod
    def of(family: Family) -> "Kernels":
        return Kernels.CPU if family is Family.CPU else Kernels.GPU


CPU, GPU = Kernels.CPU, Kernels.GPU
MATMUL_OPS = frozenset({"matmul", "moe_matmul"})  # the op kinds that take a weight matrix


@dataclass(frozen=True)
class WeightFormat:
    name: str
    block_elems: int  # elements per block along the last dimension
    block_bytes: int  # bytes per block
    activation: str | None  # int8 activation rounding of its kernels; None: float activations
    kernels: Kernels = Kernels.NONE  # the targets with kernels for it
    # the int8 activations the AVX2 cpu dot reads (cpu_act.h rfc_quantize_row_<kind>: q8_32,
    # q8_32p, q8_k); None: float activations, as every cpu dot without AVX2 reads
    cpu_act: str | None = None
    cpu_unit: int | None = None  # elements per step of the cpu dot, where not one block
    # the AVX2 cpu dot unpacks each 32-element sub-block to int8 values and half scales
    # (kernels/cpu_dot_lut.h rfc_u32_<fmt>), one generic kernel over them all; needs cpu_act q8_32
    cpu_unpack: bool = False
    base: str | None = None  # packed and planar formats: the GGUF format whose blocks they rearrange
    ops: frozenset[str] = frozenset()  # packed and planar formats: the op kinds whose kernels read them
    group_rows: int = 1  # packed formats: rows interleaved per group
    head_bytes: int = 0  # packed formats: bytes of f16 fields (scale, minimum) that start a base block
    # packed formats: a layout of its own, dotted a column at a time (cpu_dot.h rfc_x8col_<base>)
    column_dot: bool = False
    planes: tuple[int, ...] = ()  # planar formats: bytes per base block of each plane, in row order
    ggml_type: int | None = None  # GGUF formats: the tensor type id a GGUF file stores it under (ggml.h's ggml_type)

    def __post_init__(self) -> None:
        assert not self.planes or sum(self.planes) == self.block_bytes, f"{self.name}: planes add up to the block"
        assert (self.base is None) == (not self.ops), f"{self.name}: a layout names its base and its readers"

    @property
    def is_float(self) -> bool:
        return self.block_elems == 1

    @property
    def is_gguf(self) -> bool:
        return self.base is None

    @property
    def is_packed(self) -> bool:
        return self.base is not None and not self.planes

    @property
    def is_planar(self) -> bool:
        return bool(self.planes)

    @property
    def cpu_dot_step(self) -> tuple[int, int]:
        """(elements, bytes) of one step of the cpu dot along a row (RFC_UNIT_<FMT>,
        RFC_UNIT_BYTES_<FMT>): one block, or cpu_unit elements of a float format."""
        elems = self.cpu_unit or self.block_elems
        return elems, elems // self.block_elems * self.block_bytes


# Packed target layouts (the cpu targets' matmul weights).
#
# Q4_0x8 / Q4_1x8 / Q8_0x8: rows in groups of 8; a group is its blocks column by column, and
# each column of 8 blocks is stored as the 8 scales (f16), for Q4_1 then the 8 minimums
# (f16), then chunks of 32 bytes where chunk j holds bytes 4j..4j+3 of each row's quant bytes
# (16 for the 4-bit formats: 4 chunks; 32 for Q8_0: 8 chunks), row after row. One 32-byte
# load is then 4 quant bytes of every row of the group (4-bit: elements 4j..4j+3 low,
# 16+4j..16+4j+3 high; Q8_0: elements 4j..4j+3), which the AVX2 kernel dots with 4 activation
# bytes broadcast: each lane is one row, no horizontal sums, and the scales of 8 rows convert
# in one instruction. Same bytes per block as the base. The embedding lookup gathers a row's
# blocks back from such a group, so a tied embedding (the output matmul's weight too) is
# repacked as well: single-thread rfc_matmul on SmolLM2's tied 49152 x 576 Q8_0 table took
# 0.82x the GGUF layout's time for one token and 0.46x for eight. Decode with the
# row-interleaved kernels measured faster than the single-row ones (docs/benchmarks-log.md).
#
# Q4_Kx8: rows in groups of 8, a column is one super-block of each of the 8 rows, stored as
# the 8 scales d (f16), the 8 dmin (f16), the sub-block scales decoded to bytes [sub-block
# 0..7][row], the sub-block minimums decoded to bytes [pair 0..3][row][2 sub-blocks], then
# per pair c of sub-blocks (GGUF qs bytes 32c..32c+31: low nibbles sub-block 2c, high 2c+1)
# 8 chunks of 32 bytes, chunk j holding bytes 4j..4j+3 of every row. 1184 bytes per column
# (148 per row and super-block: the 12 bytes of packed 6-bit scales become 16).
Q4_KX8_COLUMN_BYTES = 16 + 16 + 64 + 64 + 1024
#
# Q5_Kx8: Q4_Kx8's column of the same super-blocks (d, dmin, decoded scales and minimums, the
# low 4 bits in its chunks), then the fifth bits: 8 chunks of 32 bytes, chunk j holding bytes
# 4j..4j+3 of every row's 32 GGUF qh bytes, so byte for byte in line with chunk j of every pair
# (bit 2c of a byte: the fifth bit of the value in the low nibble of pair c's byte there, bit
# 2c+1: the high nibble's). 1440 bytes per column (180 per row and super-block).
Q5_KX8_COLUMN_BYTES = Q4_KX8_COLUMN_BYTES + 256
#
# Q6_Kx8: rows in groups of 8, a column is one super-block of each of the 8 rows, stored as
# the 8 scales d (f16), the 16 sub-block scales (int8, as GGUF has them) [sub-block 0..15][row],
# then GGUF's ql bytes in 32 chunks of 32 bytes (chunk m holding bytes 4m..4m+3 of every row:
# Q4_0x8's chunks), then its qh bytes in 16 such chunks: the same bytes as the GGUF blocks, 1680
# a column (210 per row and super-block). ql chunk m of half h = m // 16 (i = m % 16) holds the
# low 4 bits of elements 128h + 4i.. (low nibbles) and 128h + 64 + 4i.. (high nibbles); qh chunk
# 8h + i % 8 holds their top 2 bits, at bits 2(i // 8) and 4 + 2(i // 8). Unsigned 6-bit values
# q (weight d * scale * (q - 32)) for vpdpbusd / maddubs against q8_k activations; the -32 comes
# off as 32 x the activations' 16-value sums (exact in int32: the whole super-block sums in
# integers up to one float multiply-add, kernels/cpu_q6k_x8.h).
Q6_KX8_COLUMN_BYTES = 16 + 128 + 1024 + 512
#
# IQ4_XSx8: rows in groups of 8, a column is one super-block of each of the 8 rows, stored as
# the 8 scales d (f16), the sub-block scales decoded to int8 (ls - 32, -32..31) [sub-block
# 0..7][row], then per sub-block s (GGUF qs bytes 16s..16s+15: low nibbles elements 0-15,
# high 16-31) 4 chunks of 32 bytes, chunk j holding bytes 4j..4j+3 of every row (Q4_0x8's
# chunks). 1104 bytes per column (138 per row and super-block: the 6 bytes of packed 6-bit
# scales become 8). IQ4_NLx8 is Q4_0x8's layout of IQ4_NL blocks. Both are dotted a column at
# a time (kernels/cpu_iq_x8.h): the 4-bit indices looked up into int8 weights in the lanes.
IQ4_XSX8_COLUMN_BYTES = 16 + 64 + 1024
_X8 = {"group_rows": 8, "kernels": CPU}
# the op kinds that read x8 layouts: moe_matmul reads an [E, N, K] tensor's E * N rows as each
# expert's slice repacked (N a multiple of 8: groups never span experts; weight_plan.py)
_X8_CHUNKS = {**_X8, "ops": frozenset({"matmul", "moe_matmul", "embed"})}

# Planar GPU layouts (gfx* / sm_* matmul weights; kernels/rfc_gpu_planar.h decodes them). A
# row of nb blocks is stored plane after plane, each plane holding one field of every block
# of the row in block order and starting PLANE_ALIGN-aligned (padding bytes zero); rows
# follow one another, each a multiple of PLANE_ALIGN bytes, so with 256-aligned tensors every
# plane of every row is 16-byte aligned. A GPU matmul walks a row with adjacent lanes on
# adjacent 32-element sub-blocks: lane l's piece of each plane sits right after lane l-1's,
# so a wave's loads of a plane are one contiguous run (coalesced), and the 16- and 32-byte
# pieces are 128-bit loads, which the GGUF blocks (18, 20, 22, 24, 34, 84, 110, 210 bytes)
# never align to. Q4_K and Q5_K blocks (144 and 176 bytes) are aligned, but a sub-block's
# quants are the low or the high nibbles of 32 bytes that it shares with its neighbour: each
# lane loaded 32 bytes to use 16, and adjacent lanes loaded the same 32. Only
# matmuls read them: the embed kernel gathers GGUF rows. Pieces of a 32-element sub-block,
# element e in 0..31:
#   nib16: 16 bytes, byte j = element j (low nibble) | element j+16 (high nibble)
#          (Q4_0's own order)
#   q32:   32 bytes, byte e = element e (int8)
#   crumb8: 8 bytes, byte j bits 2t..2t+1 = element j + 8t (t = 0..3)
#   bit4:  4 bytes, byte j bit t = element j + 4t (t = 0..7)
# Planes per format (per block; "d"/"m" are the block's f16 fields as GGUF stores them):
#   Q4_0p: d (2) | nib16 (16)                 Q4_1p: d, m (4) | nib16 (16)
#   Q5_0p: d (2) | bit4 fifth bits (4) | nib16 low bits (16)
#   Q5_1p: d, m (4) | bit4 (4) | nib16 (16)   Q8_0p: d (2) | q32 (32)
#   Q2_Kp: d, dmin (4) | the 16 scale bytes as GGUF has them (16) | crumb8 per sub-block (64)
#   Q3_Kp: d (2) | the 12 scale bytes as GGUF has them (12; decoding them to 16 would cost
#          3.6% more bytes streamed) | crumb8 low 2 bits (64) | bit4 high bits (32)
#   Q6_Kp: d (2) | the 16 int8 scales (16) | nib16 low 4 bits (128) | crumb8 high 2 bits (64)
#   Q4_Kp: d, dmin (4) | the 12 packed scale bytes as GGUF has them (12) | nib16 (128)
#   Q5_Kp: d, dmin (4) | the 12 scale bytes (12) | bit4 fifth bits (32) | nib16 low bits (128)
# The planar layouts hold the same bytes as their GGUF blocks, plus the planes' padding.
# K-quant scales stay indexed as in GGUF: scale 2s + h is half h of sub-block s.
PLANE_ALIGN = 16
_PLANAR = {"kernels": GPU, "ops": MATMUL_OPS}

# The table. GGUF formats (base None) are what `rfc compile` accepts in a model file; the
# float formats' cpu dot steps through 8 elements (one vector) at a time.
FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("F32", 1, 4, None, CPU | GPU, cpu_unit=8, ggml_type=0),
        WeightFormat("F16", 1, 2, None, CPU | GPU, cpu_unit=8, ggml_type=1),
        WeightFormat("BF16", 1, 2, None, CPU | GPU, cpu_unit=8, ggml_type=30),
        WeightFormat("Q8_0", 32, 34, "q8_0", CPU | GPU, cpu_act="q8_32", ggml_type=8),
        WeightFormat("Q4_0", 32, 18, "q8_0", CPU | GPU, cpu_act="q8_32p", ggml_type=2),
        WeightFormat("Q4_1", 32, 20, "q8_1", CPU | GPU, cpu_act="q8_32p", ggml_type=3),
        WeightFormat("Q5_0", 32, 22, "q8_0", CPU | GPU, cpu_act="q8_32p", ggml_type=6),
        WeightFormat("Q5_1", 32, 24, "q8_1", CPU | GPU, cpu_act="q8_32p", ggml_type=7),
        WeightFormat("Q2_K", 256, 84, "q8_k", CPU | GPU, cpu_act="q8_k", ggml_type=10),
        WeightFormat("Q3_K", 256, 110, "q8_k", CPU | GPU, cpu_act="q8_k", ggml_type=11),
        WeightFormat("Q4_K", 256, 144, "q8_k", CPU | GPU, cpu_act="q8_k", ggml_type=12),
        WeightFormat("Q5_K", 256, 176, "q8_k", CPU | GPU, cpu_act="q8_k", ggml_type=13),
        WeightFormat("Q6_K", 256, 210, "q8_k", CPU | GPU, cpu_act="q8_k", ggml_type=14),
        # Formats whose cpu dot unpacks sub-blocks (cpu_unpack; most decode through tables,
        # artifacts/quant_tables.py). They read q8_32 activations, one scale per 32: finer than
        # llama.cpp's q8_K for the 256-element ones, and what their sub-blocks' scales need.
        WeightFormat("IQ4_NL", 32, 18, "q8_0", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=20),
        WeightFormat("IQ4_XS", 256, 136, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=23),
        WeightFormat("MXFP4", 32, 17, "q8_0", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=39),
        WeightFormat("NVFP4", 64, 36, "q8_0", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=40),
        WeightFormat("TQ1_0", 256, 54, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=34),
        WeightFormat("TQ2_0", 256, 66, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=35),
        WeightFormat("Q1_0", 128, 18, "q8_0", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=41),
        WeightFormat("Q2_0", 64, 18, "q8_0", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=42),
        WeightFormat("IQ2_XXS", 256, 66, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=16),
        WeightFormat("IQ2_XS", 256, 74, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=17),
        WeightFormat("IQ2_S", 256, 82, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=22),
        WeightFormat("IQ3_XXS", 256, 98, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=18),
        WeightFormat("IQ3_S", 256, 110, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=21),
        WeightFormat("IQ1_S", 256, 50, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=19),
        WeightFormat("IQ1_M", 256, 56, "q8_k", CPU | GPU, cpu_act="q8_32", cpu_unpack=True, ggml_type=29),
        # packed cpu layouts
        WeightFormat("Q4_0x8", 32, 18, "q8_0", cpu_act="q8_32", base="Q4_0", head_bytes=2, **_X8_CHUNKS),
        WeightFormat("Q4_1x8", 32, 20, "q8_1", cpu_act="q8_32", base="Q4_1", head_bytes=4, **_X8_CHUNKS),
        WeightFormat("Q8_0x8", 32, 34, "q8_0", cpu_act="q8_32", base="Q8_0", head_bytes=2, **_X8_CHUNKS),
        WeightFormat("Q4_Kx8", 256, Q4_KX8_COLUMN_BYTES // 8, "q8_k", cpu_act="q8_k", base="Q4_K", column_dot=True,
                     ops=MATMUL_OPS, **_X8),
        WeightFormat("Q5_Kx8", 256, Q5_KX8_COLUMN_BYTES // 8, "q8_k", cpu_act="q8_k", base="Q5_K", column_dot=True,
                     ops=frozenset({"matmul"}), **_X8),
        WeightFormat("Q6_Kx8", 256, Q6_KX8_COLUMN_BYTES // 8, "q8_k", cpu_act="q8_k", base="Q6_K", column_dot=True,
                     ops=frozenset({"matmul"}), **_X8),
        WeightFormat("IQ4_XSx8", 256, IQ4_XSX8_COLUMN_BYTES // 8, "q8_k", cpu_act="q8_k", base="IQ4_XS",
                     column_dot=True, ops=frozenset({"matmul"}), **_X8),
        WeightFormat("IQ4_NLx8", 32, 18, "q8_0", cpu_act="q8_32", base="IQ4_NL", head_bytes=2, column_dot=True,
                     ops=frozenset({"matmul"}), **_X8),
        # planar GPU layouts
        WeightFormat("Q4_0p", 32, 18, "q8_0", base="Q4_0", planes=(2, 16), **_PLANAR),
        WeightFormat("Q4_1p", 32, 20, "q8_1", base="Q4_1", planes=(4, 16), **_PLANAR),
        WeightFormat("Q5_0p", 32, 22, "q8_0", base="Q5_0", planes=(2, 4, 16), **_PLANAR),
        WeightFormat("Q5_1p", 32, 24, "q8_1", base="Q5_1", planes=(4, 4, 16), **_PLANAR),
        WeightFormat("Q8_0p", 32, 34, "q8_0", base="Q8_0", planes=(2, 32), **_PLANAR),
        WeightFormat("Q2_Kp", 256, 84, "q8_k", base="Q2_K", planes=(4, 16, 64), **_PLANAR),
        WeightFormat("Q3_Kp", 256, 110, "q8_k", base="Q3_K", planes=(2, 12, 64, 32), **_PLANAR),
        WeightFormat("Q6_Kp", 256, 210, "q8_k", base="Q6_K", planes=(2, 16, 128, 64), **_PLANAR),
        WeightFormat("Q4_Kp", 256, 144, "q8_k", base="Q4_K", planes=(4, 12, 128), **_PLANAR),
        WeightFormat("Q5_Kp", 256, 176, "q8_k", base="Q5_K", planes=(4, 12, 32, 128), **_PLANAR),
    )
}  # fmt: skip


class _Rows(Mapping[str, WeightFormat]):
    """The rows of FORMATS of one kind, read from it at every access (so a row added to the
    table is in its kind's view too)."""

    def __init__(self, kind: Callable[[WeightFormat], bool]):
        self._kind = kind

    def __getitem__(self, name: str) -> WeightFormat:
        f = FORMATS[name]
        if not self._kind(f):
            raise KeyError(name)
        return f

    def __iter__(self) -> Iterator[str]:
        return (name for name, f in FORMATS.items() if self._kind(f))

    def __len__(self) -> int:
        return sum(1 for _ in self)


GGUF_FORMATS: Mapping[str, WeightFormat] = _Rows(lambda f: f.is_gguf)  # what a model file may hold
PACKED_FORMATS: Mapping[str, WeightFormat] = _Rows(lambda f: f.is_packed)
PLANAR_FORMATS: Mapping[str, WeightFormat] = _Rows(lambda f: f.is_planar)


def target_layout(fmt: str, kernels: Kernels) -> WeightFormat | None:
    """The layout row that repacks GGUF format `fmt` for `kernels` (None: they read `fmt`)."""
    found = [f for f in FORMATS.values() if f.base == fmt and f.kernels == kernels]
    assert len(found) <= 1, f"{fmt} has {len(found)} layouts for {kernels}"
    return found[0] if found else None


def gguf_format_of_type(type_id: int) -> WeightFormat | None:
    """The GGUF format a file's tensor type id names (None: none rfc reads)."""
    found = [f for f in GGUF_FORMATS.values() if f.ggml_type == type_id]
    return found[0] if found else None


def weight_format(name: str) -> WeightFormat:
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise FormatError(f"unknown weight format {name!r} (known: {', '.join(FORMATS)})") from None


def check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A tensor shape: 1 to 4 positive dimensions, each below MAX_DIM."""
    if not isinstance(shape, (tuple, list)) or not 1 <= len(shape) <= 4:
        raise FormatError(f"tensor shape {shape!r} must have 1 to 4 dimensions")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 < d < MAX_DIM:
            raise FormatError(f"tensor shape {list(shape)} has a dimension that is not a positive integer below 2^31")
    return tuple(shape)


def row_nbytes(fmt: WeightFormat | str, n: int) -> int:
    """Bytes of one row of n elements."""
    f = fmt if isinstance(fmt, WeightFormat) else weight_format(fmt)
    if n % f.block_elems:
        raise FormatError(f"a {f.name} row of {n} elements is not a whole number of {f.block_elems}-element blocks")
    if f.planes:
        return sum(_plane_bytes(f, n))
    return n // f.block_elems * f.block_bytes


def _plane_bytes(f: WeightFormat, n: int) -> list[int]:
    nb = n // f.block_elems
    return [-(-nb * p // PLANE_ALIGN) * PLANE_ALIGN for p in f.planes]


def plane_offsets(fmt: WeightFormat | str, n: int) -> tuple[int, ...]:
    """Byte offsets, within a row of n elements, of each plane of a planar format."""
    f = fmt if isinstance(fmt, WeightFormat) else weight_format(fmt)
    row_nbytes(f, n)  # n is whole blocks
    offsets, at = [], 0
    for size in _plane_bytes(f, n):
        offsets.append(at)
        at += size
    return tuple(offsets)


def tensor_nbytes(fmt: WeightFormat | str, shape: tuple[int, ...]) -> int:
    """Bytes of a whole tensor of `shape` (the last dimension contiguous) stored in `fmt`."""
    f = fmt if isinstance(fmt, WeightFormat) else weight_format(fmt)
    shape = check_shape(shape)
    rows = prod(shape[:-1])
    rows = -(-rows // f.group_rows) * f.group_rows
    nbytes = rows * row_nbytes(f, shape[-1])
    if nbytes > MAX_TENSOR_BYTES:
        raise FormatError(f"a {f.name} tensor of shape {list(shape)} would take {nbytes} bytes")
    return nbytes
