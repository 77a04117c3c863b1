"""A structural walk over a GGUF before anything else reads it.

A GGUF is untrusted input, and the `gguf` package trusts its counts: a tensor count of 2^40
or a string length past the end of the file becomes a loop or an allocation before any
check. This walk reads only the header, every metadata entry and every tensor description,
bounding each count and length by the bytes actually left in the file, and checks that every
tensor's data lies inside the file. Only a file that passes is handed to `gguf.GGUFReader`.
"""

import re
import struct
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from rfc.compiler.errors import CompileError

SUPPORTED_VERSIONS = (2, 3)
MAX_KEY = 1 << 16  # bytes in a metadata key or tensor name
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 2
DEFAULT_ALIGNMENT = 32
# Keys and tensor names are identifiers in every real GGUF; anything else (newlines, terminal
# escapes, path separators) is refused here so no name can smuggle text into messages or files.
_NAME = re.compile(rb"[A-Za-z0-9_.\-+:]{1,512}")

# value type id -> bytes of a fixed-size value (STRING = 8 and ARRAY = 9 are variable)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MIN_ENTRY = {**_FIXED, _STRING: 8, _ARRAY: 12}


class _Corrupt(Exception):
    pass


@dataclass(frozen=True)
class GGUFShape:
    version: int
    tensor_count: int
    kv_count: int
    data_offset: int


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.left():
            raise _Corrupt(f"a field at byte {self.pos} runs past the end of the file")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self, limit: int | None = None) -> bytes:
        n = self.u64()
        if limit is not None and n > limit:
            raise _Corrupt(f"a string of {n} bytes at byte {self.pos} is longer than {limit}")
        return self.take(n)


def check_gguf_structure(header: bytes, file_size: int, name: str) -> GGUFShape:
    """`header` holds at least the file's metadata and tensor descriptions (the caller passes
    the whole file or a memory map). Raises CompileError naming the first problem."""
    try:
        return _walk(_Cursor(header), file_size)
    except _Corrupt as e:
        raise CompileError(f"{name}: truncated or corrupt GGUF ({e})") from None


def _walk(c: _Cursor, file_size: int) -> GGUFShape:
    if c.take(4) != b"GGUF":
        raise _Corrupt("bad magic")
    version = c.u32()
    if version not in SUPPORTED_VERSIONS:
        raise _Corrupt(f"GGUF version {version} is not supported (big-endian files are not either)")
    tensor_count, kv_count = c.u64(), c.u64()
    # Each entry takes some bytes: the counts cannot exceed what the file can hold.
    if kv_count > c.left() // 13 or tensor_count > c.left() // 24:
        raise _Corrupt(f"{tensor_count} tensors / {kv_count} metadata entries cannot fit in {file_size} bytes")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = _name(c.string(MAX_KEY), "metadata key")
        vtype = c.u32()
        value = _value(c, vtype, 0)
        if key == b"general.alignment":
            if vtype != 4 or not value or value & (value - 1):
                raise _Corrupt("general.alignment is not a power of two (u32)")
            alignment = value
    infos = []
    for _ in range(tensor_count):
        tname = _name(c.string(MAX_KEY), "tensor name")
        n_dims = c.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Corrupt(f"tensor {tname[:64]!r} has {n_dims} dimensions")
        dims = [c.u64() for _ in range(n_dims)]
        ttype, offset = c.u32(), c.u64()
        infos.append((tname, dims, ttype, offset))
    data_offset = -(-c.pos // alignment) * alignment
    for tname, dims, ttype, offset in infos:
        nbytes = _tensor_bytes(tname, dims, ttype)
        if offset % alignment or data_offset + offset + nbytes > file_size:
            raise _Corrupt(f"tensor {tname[:64]!r} ends past the end of the file or is misaligned")
    return GGUFShape(version, tensor_count, kv_count, data_offset)


def _name(raw: bytes, what: str) -> bytes:
    if not _NAME.fullmatch(raw):
        raise _Corrupt(f"a {what} is not a plain identifier: {raw[:40]!r}")
    return raw


def _value(c: _Cursor, vtype: int, depth: int):
    if vtype in _FIXED:
        raw = c.take(_FIXED[vtype])
        return int.from_bytes(raw, "little") if vtype == 4 else None
    if vtype == _STRING:
        c.string()
        return None
    if vtype == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise _Corrupt("metadata arrays nested too deep")
        etype, count = c.u32(), c.u64()
        if etype not in _MIN_ENTRY:
            raise _Corrupt(f"unknown metadata array element type {etype}")
        if count > c.left() // _MIN_ENTRY[etype]:
            raise _Corrupt(f"a metadata array of {count} entries cannot fit in the file")
        if etype in _FIXED:
            c.take(count * _FIXED[etype])
        else:
            for _ in range(count):
                _value(c, etype, depth + 1)
        return None
    raise _Corrupt(f"unknown metadata value type {vtype}")


def _tensor_bytes(name: bytes, dims: list[int], ttype: int) -> int:
    try:
        block_elems, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
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
