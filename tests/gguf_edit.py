"""Writing altered copies of a GGUF for bad-input tests (metadata or tensors changed)."""

import struct
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
    """Copies src to dst; `metadata` overrides or adds values (strings, ints; booleans, floats, bytes
    (uint8 arrays), lists of booleans and lists of ints (int32) are added as such; an existing key
    keeps its type), `drop_keys` removes keys; tensor_fn may replace tensors,
    `add_tensors` adds float32 ones."""
    reader = GGUFReader(src)
    arch = (
        metadata.get("general.architecture")
        if metadata and "general.architecture" in metadata
        else reader.fields["general.architecture"].contents()
    )
    writer = GGUFWriter(dst, arch)
    overrides = dict(metadata or {})
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_keys:
            continue
        value = overrides.pop(key, field.contents())
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY and not value:  # the gguf package writes no empty array (the
            continue  # saver's classifier.output_labels): left out
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for key, value in overrides.items():
        if isinstance(value, bytes):  # an array of uint8 (a precompiled charsmap)
            writer.add_key_value(key, list(value), GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT8)
        elif isinstance(value, bool):
            writer.add_key_value(key, value, GGUFValueType.BOOL)
        elif isinstance(value, list):
            ints = value and not any(isinstance(v, bool) for v in value) and all(isinstance(v, int) for v in value)
            writer.add_key_value(
                key, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32 if ints else GGUFValueType.BOOL
            )
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


def spec_of(src: Path, tmp_path: Path | None = None, **edits):
    """The recipe's ModelSpec of src, rewritten with `edits` (rewrite_gguf's keywords) into tmp_path
    first when there are any (the arch unit tests' plan checks)."""
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.spec import build_spec

    return build_spec(read_gguf(rewrite_gguf(src, tmp_path / "edited.gguf", **edits) if edits else src))


def assert_spec_refused(src: Path, tmp_path: Path, edits: dict, message: str) -> None:
    """src rewritten with `edits` (rewrite_gguf's keywords) is refused by its recipe with one line
    holding `message` (the arch unit tests' malformed-file cases)."""
    import pytest

    from rfc.compiler.errors import CompileError

    with pytest.raises(CompileError) as e:
        spec_of(src, tmp_path, **edits)
    assert message in str(e.value) and "\n" not in str(e.value)


def put_raw_array(src: Path, dst: Path, key: str, etype: GGUFValueType, count: int, payload: bytes) -> Path:
    """Copies src to dst with metadata `key` set to an array of `count` `etype` elements whose
    encoded bytes are `payload` (replacing the key's value where src has it, else added after the
    last entry). Bytes are spliced in as they are, so an array of millions of elements is written
    in a moment and no reader in the test materializes it."""
    data = Path(src).read_bytes()
    reader = GGUFReader(src)
    fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]
    entry = _string_bytes(key) + struct.pack("<IIQ", GGUFValueType.ARRAY, etype, count) + payload
    old = reader.fields.get(key)
    start = old.offset if old is not None else _end(fields[-1])
    stop = _end(old) if old is not None else start
    infos_end = _end(reader.tensors[-1].field) if reader.tensors else _end(fields[-1])
    head = bytearray(data[:start] + entry + data[stop:infos_end])
    if old is None:
        struct.pack_into("<Q", head, 16, len(fields) + 1)  # kv_count
    head += bytes(-len(head) % reader.alignment)  # tensor data starts aligned
    Path(dst).write_bytes(bytes(head) + data[reader.data_offset :])
    return Path(dst)


def string_array_payload(count: int, text: bytes = b"t") -> bytes:
    """`count` copies of `text` as GGUF strings (u64 length, bytes), built without a Python loop."""
    item = np.dtype([("n", "<u8"), ("s", f"S{len(text)}")]) if text else np.dtype([("n", "<u8")])
    items = np.zeros(count, dtype=item)
    items["n"] = len(text)
    if text:
        items["s"] = text
    return items.tobytes()


def _string_bytes(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _end(field) -> int:
    return field.offset + sum(int(p.nbytes) for p in field.parts)
