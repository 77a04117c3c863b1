"""A structural walk over a GGUF, the only reader of its header.

A GGUF is untrusted input, and its counts are not to be trusted: a tensor count of 2^40 or a
string length past the end of the file must not become a loop or an allocation. This walk
reads the header, every metadata entry and every tensor description, bounding each count and
length by the bytes actually left in the file (and the entry and tensor counts by constants),
checks that every tensor's data lies inside the file, and returns an index: where each
metadata value and each tensor's data lies. It decodes no metadata value (gguf_metadata.py
decodes the ones rfc reads); arrays are stepped over, a string array one length at a time.
"""

import re
import struct
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from rfc.artifacts.formats import gguf_format_of_type

from rfc.compiler.errors import CompileError

SUPPORTED_VERSIONS = (2, 3)
MAX_KEY = 1 << 16  # bytes in a metadata key or tensor name
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 2
# Real GGUFs hold tens of metadata entries and at most a few thousand tensors (a 405B model:
# 1,138); a file with more is refused before a Python object is made for each.
MAX_ENTRIES = 1 << 16
MAX_TENSORS = 1 << 16
DEFAULT_ALIGNMENT = 32
# Keys and tensor names are identifiers in every real GGUF; anything else (newlines, terminal
# escapes, path separators) is refused here so no name can smuggle text into messages or files.
_NAME = re.compile(rb"[A-Za-z0-9_.\-+:]{1,512}")

# value type id -> bytes of a fixed-size value (STRING = 8 and ARRAY = 9 are variable)
FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
_UINT32 = 4
_MIN_ENTRY = {**FIXED_SIZES, STRING: 8, ARRAY: 12}
_U64 = struct.Struct("<Q")


class _Corrupt(Exception):
    pass


@dataclass(frozen=True)
class MetadataEntry:
    """Where one metadata value lies. For an array, `pos` is its first element's offset."""

    key: str
    vtype: int
    pos: int
    etype: int | None = None  # arrays: the element type
    count: int = 1  # arrays: the element count


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dims: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    ttype: int
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class GGUFIndex:
    version: int
    data_offset: int
    entries: dict[str, MetadataEntry]  # in file order
    tensors: tuple[TensorEntry, ...]  # in file order


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def skip(self, n: int) -> int:
        """Steps over n bytes; returns where they start."""
        if n < 0 or n > self.left():
            raise _Corrupt(f"a field at byte {self.pos} runs past the end of the file")
        start = self.pos
        self.pos += n
        return start

    def take(self, n: int) -> bytes:
        start = self.skip(n)
        return self.data[start : self.pos]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self, limit: int | None = None) -> bytes:
        n = self.u64()
        if limit is not None and n > limit:
            raise _Corrupt(f"a string of {n} bytes at byte {self.pos} is longer than {limit}")
        return self.take(n)

    def skip_strings(self, count: int) -> None:
        """Steps over `count` strings, reading only their lengths (the loop a string array of
        millions of entries costs; nothing is copied)."""
        data, pos, end, unpack = self.data, self.pos, len(self.data), _U64.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                raise _Corrupt(f"a string array at byte {self.pos} runs past the end of the file")
            pos += 8 + unpack(data, pos)[0]
        if pos > end:
            raise _Corrupt(f"a string array at byte {self.pos} runs past the end of the file")
        self.pos = pos


def index_gguf(data: bytes, file_size: int, name: str) -> GGUFIndex:
    """`data` holds at least the file's metadata and tensor descriptions (the caller passes
    the whole file or a memory map). Raises CompileError naming the first problem."""
    try:
        return _walk(_Cursor(data), file_size)
    except _Corrupt as e:
        raise CompileError(f"{name}: truncated or corrupt GGUF ({e})") from None


def _walk(c: _Cursor, file_size: int) -> GGUFIndex:
    if c.take(4) != b"GGUF":
        raise _Corrupt("bad magic")
    version = c.u32()
    if version not in SUPPORTED_VERSIONS:
        raise _Corrupt(f"GGUF version {version} is not supported (big-endian files are not either)")
    tensor_count, kv_count = c.u64(), c.u64()
    # Each entry takes some bytes: the counts cannot exceed what the file can hold.
    if kv_count > c.left() // 13 or tensor_count > c.left() // 24:
        raise _Corrupt(f"{tensor_count} tensors / {kv_count} metadata entries cannot fit in {file_size} bytes")
    if kv_count > MAX_ENTRIES:
        raise _Corrupt(f"{kv_count} metadata entries, more than {MAX_ENTRIES}")
    if tensor_count > MAX_TENSORS:
        raise _Corrupt(f"{tensor_count} tensors, more than {MAX_TENSORS}")
    entries: dict[str, MetadataEntry] = {}
    for _ in range(kv_count):
        key = _name(c.string(MAX_KEY), "metadata key")
        if key in entries:
            raise _Corrupt(f"metadata key {key[:64]} appears twice")
        entries[key] = _entry(c, key, c.u32())
    infos = []
    for _ in range(tensor_count):
        tname = _name(c.string(MAX_KEY), "tensor name")
        n_dims = c.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Corrupt(f"tensor {tname[:64]!r} has {n_dims} dimensions")
        dims = tuple(c.u64() for _ in range(n_dims))
        ttype, offset = c.u32(), c.u64()
        infos.append((tname, dims, ttype, offset))
    alignment = _alignment(c, entries.get("general.alignment"))
    data_offset = -(-c.pos // alignment) * alignment
    tensors = []
    for tname, dims, ttype, offset in infos:
        nbytes = _tensor_bytes(tname, dims, ttype)
        if offset % alignment or data_offset + offset + nbytes > file_size:
            raise _Corrupt(f"tensor {tname[:64]!r} ends past the end of the file or is misaligned")
        tensors.append(TensorEntry(tname, dims, ttype, data_offset + offset, nbytes))
    return GGUFIndex(version, data_offset, entries, tuple(tensors))


def _name(raw: bytes, what: str) -> str:
    if not _NAME.fullmatch(raw):
        raise _Corrupt(f"a {what} is not a plain identifier: {raw[:40]!r}")
    return raw.decode("ascii")


def _entry(c: _Cursor, key: str, vtype: int) -> MetadataEntry:
    if vtype != ARRAY:
        return MetadataEntry(key, vtype, _step_over(c, vtype, 0))
    etype, count = c.u32(), c.u64()
    pos = c.pos
    _step_over_array(c, etype, count, 1)
    return MetadataEntry(key, vtype, pos, etype, count)


def _step_over(c: _Cursor, vtype: int, depth: int) -> int:
    """Steps over one value; returns where it starts."""
    start = c.pos
    if vtype in FIXED_SIZES:
        c.skip(FIXED_SIZES[vtype])
    elif vtype == STRING:
        c.skip(c.u64())
    elif vtype == ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise _Corrupt("metadata arrays nested too deep")
        etype, count = c.u32(), c.u64()
        _step_over_array(c, etype, count, depth + 1)
    else:
        raise _Corrupt(f"unknown metadata value type {vtype}")
    return start


def _step_over_array(c: _Cursor, etype: int, count: int, depth: int) -> None:
    if etype not in _MIN_ENTRY:
        raise _Corrupt(f"unknown metadata array element type {etype}")
    if count > c.left() // _MIN_ENTRY[etype]:
        raise _Corrupt(f"a metadata array of {count} entries cannot fit in the file")
    if etype in FIXED_SIZES:
        c.skip(count * FIXED_SIZES[etype])
    elif etype == STRING:
        c.skip_strings(count)
    else:
        for _ in range(count):
            _step_over(c, etype, depth)


def _alignment(c: _Cursor, entry: MetadataEntry | None) -> int:
    if entry is None:
        return DEFAULT_ALIGNMENT
    value = int.from_bytes(c.data[entry.pos : entry.pos + 4], "little") if entry.vtype == _UINT32 else 0
    if not value or value & (value - 1):
        raise _Corrupt("general.alignment is not a power of two (u32)")
    return value


def _tensor_bytes(name: str, dims: tuple[int, ...], ttype: int) -> int:
    """Bytes of a tensor: the format table's block geometry for the types rfc reads (some, such
    as Q2_0, newer than the gguf package), the gguf package's for the others (refused later by
    name)."""
    ours = gguf_format_of_type(ttype)
    try:
        block_elems, block_bytes = (
            (ours.block_elems, ours.block_bytes) if ours else GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        )
    except (ValueError, KeyError):
        raise _Corrupt(f"tensor {name[:64]!r} has unknown type id {ttype}") from None
    n = 1
    for d in dims:
        if not 1 <= d < (1 << 40):
            raise _Corrupt(f"tensor {name[:64]!r} has a dimension of {d}")
        n *= d
        if n > (1 << 48):
            raise _Corrupt(f"tensor {name[:64]!r} has {n}+ elements")
    if dims[0] % block_elems:
        raise _Corrupt(f"tensor {name[:64]!r} rows of {dims[0]} are not whole blocks of {block_elems}")
    return n // block_elems * block_bytes
