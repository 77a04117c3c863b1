"""Stage 4: the weight planner. Streams every tensor the plan uses into weights.bin.

Each tensor starts on an ALIGNMENT boundary, in the byte layout the target kernels read
(for now the GGUF block layout, unchanged). Tensors are copied with plain file reads in
bounded chunks, so compiling a model of any size needs little memory: pages of the source
are never pinned in this process's resident set.
"""

import hashlib
from collections.abc import Callable
from pathlib import Path

from rfc.artifacts.layout import ALIGNMENT, TensorEntry, WeightLayout, align_up
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

_CHUNK = 8 << 20


def write_weights(
    model: GGUFModel,
    spec: ModelSpec,
    out_path: Path,
    on_tensor: Callable[[str], None] = lambda name: None,
) -> WeightLayout:
    entries = []
    offset = 0
    with open(model.path, "rb") as src, open(out_path, "wb") as dst:
        for name, t in spec.tensors.items():
            aligned = align_up(offset, ALIGNMENT)
            dst.write(b"\0" * (aligned - offset))
            digest = hashlib.sha256()
            src.seek(t.offset)
            remaining = t.nbytes
            while remaining:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    raise OSError(f"{model.path}: unexpected end of file in tensor {name}")
                digest.update(chunk)
                dst.write(chunk)
                remaining -= len(chunk)
            entries.append(
                TensorEntry(
                    name=name,
                    role=spec.roles[name],
                    format=t.format,
                    shape=t.shape,
                    offset=aligned,
                    nbytes=t.nbytes,
                    sha256=digest.hexdigest(),
                )
            )
            offset = aligned + t.nbytes
            on_tensor(name)
        dst.write(b"\0" * (align_up(offset, ALIGNMENT) - offset))
    return WeightLayout(alignment=ALIGNMENT, tensors=tuple(entries))
