"""Stage 1: open a GGUF file (memory-mapped, through the `gguf` package) and check it."""

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader

from rfc.artifacts.formats import GGUF_FORMATS
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_check import check_gguf_structure

GGUF_MAGIC = b"GGUF"

# The weight formats rfc compiles, by GGUF type name (the format table's GGUF formats).
SUPPORTED_FORMATS = tuple(GGUF_FORMATS)


@dataclass(frozen=True)
class SourceTensor:
    name: str
    format: str
    shape: tuple[int, ...]  # logical row-major shape: GGUF's ne reversed
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass
class GGUFModel:
    path: Path
    size: int
    metadata: dict[str, Any]
    tensors: dict[str, SourceTensor]
    reader: GGUFReader

    def tensor_bytes(self, t: SourceTensor) -> np.ndarray:
        """The tensor's raw bytes as a view of the memory map (nothing is copied)."""
        return self.reader.data[t.offset : t.offset + t.nbytes]


def read_gguf(path: Path) -> GGUFModel:
    path = Path(path)
    if not path.is_file():
        raise CompileError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CompileError(f"{path}: not a GGUF file (bad magic)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            # Every count and length bounded by the file before the gguf package sees it.
            check_gguf_structure(data, size, str(path))
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, IndexError, OverflowError, EOFError, KeyError, TypeError, MemoryError) as e:
        raise CompileError(f"{path}: truncated or corrupt GGUF ({str(e)[:200]})") from None
    metadata = _read_metadata(reader, path)
    tensors = {}
    for t in reader.tensors:
        offset = int(t.data_offset)
        nbytes = int(t.n_bytes)
        if offset + nbytes > size:
            raise CompileError(f"{path}: truncated GGUF (tensor {t.name} ends past the end of the file)")
        if t.name in tensors:
            raise CompileError(f"{path}: tensor {t.name[:64]} appears twice")
        fmt = t.tensor_type.name
        if fmt not in SUPPORTED_FORMATS:
            raise CompileError(f"{path}: unsupported tensor type {fmt} (tensor {t.name})")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = SourceTensor(name=t.name, format=fmt, shape=shape, offset=offset, nbytes=nbytes)
    return GGUFModel(path=path, size=size, metadata=metadata, tensors=tensors, reader=reader)


def _read_metadata(reader: GGUFReader, path: Path) -> dict[str, Any]:
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            metadata[key] = field.contents()
        except (ValueError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise CompileError(f"{path}: corrupt metadata value for {key[:64]} ({str(e)[:200]})") from None
    return metadata
