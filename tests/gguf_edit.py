"""Writing altered copies of a GGUF for bad-input tests (metadata or tensors changed)."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter


def rewrite_gguf(
    src: Path,
    dst: Path,
    metadata: dict | None = None,
    drop_tensors: tuple[str, ...] = (),
    drop_keys: tuple[str, ...] = (),
    add_tensors: dict[str, np.ndarray] | None = None,
    tensor_fn: Callable[[str, np.ndarray, GGMLQuantizationType], tuple[np.ndarray, GGMLQuantizationType]] | None = None,
) -> Path:
    """Copies src to dst; `metadata` overrides or adds values (strings, ints; floats and lists of
    booleans are added as such), `drop_keys` removes keys; tensor_fn may replace tensors, `add_tensors` adds float32 ones."""
    reader = GGUFReader(src)
    arch = metadata.get("general.architecture") if metadata and "general.architecture" in metadata else reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    overrides = dict(metadata or {})
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_keys:
            continue
        value = overrides.pop(key, field.contents())
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for key, value in overrides.items():
        if isinstance(value, list):
            writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
        elif isinstance(value, float):
            writer.add_key_value(key, value, GGUFValueType.FLOAT32)
        else:
            writer.add_key_value(key, value, GGUFValueType.STRING if isinstance(value, str) else GGUFValueType.UINT32)
    for t in reader.tensors:
        if t.name in drop_tensors:
            continue
        data, qtype = np.array(t.data), t.tensor_type
        if tensor_fn is not None:
            data, qtype = tensor_fn(t.name, data, qtype)
        writer.add_tensor(t.name, data, raw_dtype=qtype)
    for name, data in (add_tensors or {}).items():  # float32 tensors
        writer.add_tensor(name, np.asarray(data, dtype=np.float32), raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
