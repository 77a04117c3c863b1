"""Weight layout: where every tensor lives in weights.bin and how its bytes are laid out.

`shape` is the logical row-major shape, outermost first; the last dimension is contiguous
(GGUF's ne[0]). Quantized formats store whole blocks along that last dimension, in the
byte layout named by `format` (artifacts/formats.py: a GGUF block layout, or a target layout
the weight planner repacked it into: packed rows for the cpu targets, planar rows for the GPU
ones). A plan weight's entry has the plan's name; a bundle whose targets read different
layouts of one weight also holds the others as variant entries "<name>#<format>", which a
target's step program maps its plan weights to (StepProgram.weights).
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


_FIELDS = {"name": str, "role": str, "format": str, "shape": list, "offset": int, "nbytes": int, "sha256": str}
MAX_TENSORS = 1 << 20


def unpack_layout(data: bytes) -> WeightLayout:
    """Parses layout.msgpack, checking every field's type (sizes are checked against the
    formats and weights.bin by rfc.artifacts.validate.check_layout)."""
    try:
        raw = msgpack.unpackb(data, strict_map_key=True, max_array_len=MAX_TENSORS, max_map_len=64)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise BundleError(f"{LAYOUT_FILE} is not valid msgpack: {e}") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("tensors"), list)
        or not isinstance(raw.get("alignment"), int)
    ):
        raise BundleError(f"{LAYOUT_FILE} is malformed: no tensor list or alignment")
    tensors = []
    for i, t in enumerate(raw["tensors"]):
        if not isinstance(t, dict) or set(t) != set(_FIELDS):
            raise BundleError(
                f"{LAYOUT_FILE} is malformed: tensor {i} does not have exactly the fields {sorted(_FIELDS)}"
            )
        for key, kind in _FIELDS.items():
            if not isinstance(t[key], kind) or isinstance(t[key], bool):
                raise BundleError(f"{LAYOUT_FILE} is malformed: tensor {i} {key} is not a {kind.__name__}")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in t["shape"]):
            raise BundleError(f"{LAYOUT_FILE} is malformed: tensor {i} shape is not a list of integers")
        tensors.append(TensorEntry(**dict(t, shape=tuple(t["shape"]))))
    return WeightLayout(alignment=raw["alignment"], tensors=tuple(tensors))


def align_up(offset: int, alignment: int = ALIGNMENT) -> int:
    return (offset + alignment - 1) // alignment * alignment
