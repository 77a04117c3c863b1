"""Weight layout: where every tensor lives in weights.bin and how its bytes are laid out.

`shape` is the logical row-major shape, outermost first; the last dimension is contiguous
(GGUF's ne[0]). Quantized formats store whole blocks along that last dimension, in the
byte layout named by `format` (the GGUF block layouts, unless a later format says otherwise).
"""

from dataclasses import asdict, dataclass

import msgpack

from rfc.artifacts.errors import BundleError

LAYOUT_FILE = "layout.msgpack"
WEIGHTS_FILE = "weights.bin"
ALIGNMENT = 256


@dataclass(frozen=True)
class TensorEntry:
    name: str
    role: str
    format: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    sha256: str


@dataclass(frozen=True)
class WeightLayout:
    alignment: int
    tensors: tuple[TensorEntry, ...]

    def by_name(self) -> dict[str, TensorEntry]:
        return {t.name: t for t in self.tensors}

    def total_bytes(self) -> int:
        return max((t.offset + t.nbytes for t in self.tensors), default=0)


def pack_layout(layout: WeightLayout) -> bytes:
    tensors = [dict(asdict(t), shape=list(t.shape)) for t in layout.tensors]
    return msgpack.packb({"alignment": layout.alignment, "tensors": tensors})


def unpack_layout(data: bytes) -> WeightLayout:
    try:
        raw = msgpack.unpackb(data)
        tensors = tuple(TensorEntry(**dict(t, shape=tuple(t["shape"]))) for t in raw["tensors"])
        return WeightLayout(alignment=int(raw["alignment"]), tensors=tensors)
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise BundleError(f"{LAYOUT_FILE} is malformed: {e}") from e


def align_up(offset: int, alignment: int = ALIGNMENT) -> int:
    return (offset + alignment - 1) // alignment * alignment
