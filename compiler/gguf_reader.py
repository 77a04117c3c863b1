"""Stage 1: open a GGUF file and read what the compiler needs from it.

gguf_check.py walks the file's structure (every count bounded by the file before it is used)
and gguf_metadata.py decodes the metadata rfc reads; tensor data is not read here (weights.py
reads it from the file by the offsets below).
"""

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from rfc.artifacts.formats import GGUF_FORMATS, gguf_format_of_type
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_check import GGUFIndex, index_gguf
from rfc.compiler.gguf_metadata import decode_metadata

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
    # `<arch>.*` arrays over their bound, left undecoded: key -> the refusal a read of it gets
    unread: dict[str, str] = field(default_factory=dict)
    # the metadata keys the recipe asked for (arch/metadata.py records them): a math-changing
    # key it never asked for is refused unless it holds its neutral value (arch/accounting.py)
    keys_read: set[str] = field(default_factory=set)


def read_gguf(path: Path) -> GGUFModel:
    path = Path(path)
    if not path.is_file():
        raise CompileError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CompileError(f"{path}: not a GGUF file (bad magic)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            index = index_gguf(data, size, str(path))
            unread: dict[str, str] = {}
            metadata = decode_metadata(data, index, str(path), unread)
    return GGUFModel(path=path, size=size, metadata=metadata, tensors=_tensors(index, path), unread=unread)


def _tensors(index: GGUFIndex, path: Path) -> dict[str, SourceTensor]:
    tensors = {}
    for t in index.tensors:
        if t.name in tensors:
            raise CompileError(f"{path}: tensor {t.name[:64]} appears twice")
        ours = gguf_format_of_type(t.ttype)
        # the walk refused type ids neither the format table nor the gguf package knows
        fmt = ours.name if ours else GGMLQuantizationType(t.ttype).name
        if fmt not in SUPPORTED_FORMATS:
            raise CompileError(f"{path}: unsupported tensor type {fmt} (tensor {t.name})")
        shape = tuple(reversed(t.dims))
        tensors[t.name] = SourceTensor(name=t.name, format=fmt, shape=shape, offset=t.offset, nbytes=t.nbytes)
    return tensors
