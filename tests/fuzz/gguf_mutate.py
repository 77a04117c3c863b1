"""GGUF mutations for fuzzing the compiler: byte flips, truncation, and structured edits of
the fields that steer a reader (counts, string lengths, type ids, tensor dims and offsets).

`locate` walks a valid GGUF and records where each such field is; `mutate` picks one of the
strategies with a seeded RNG, so a failing case can be regenerated from its seed alone.
"""

import random
import struct
from dataclasses import dataclass

_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@dataclass(frozen=True)
class Field:
    kind: str  # "count", "strlen", "vtype", "arrcount", "ndims", "dim", "ttype", "offset", "value"
    pos: int
    size: int


def locate(data: bytes) -> list[Field]:
    fields: list[Field] = []
    pos = 8
    (n_tensors,) = struct.unpack_from("<Q", data, pos)
    fields.append(Field("count", pos, 8))
    (n_kv,) = struct.unpack_from("<Q", data, pos + 8)
    fields.append(Field("count", pos + 8, 8))
    pos += 16

    def string(pos: int) -> int:
        fields.append(Field("strlen", pos, 8))
        (n,) = struct.unpack_from("<Q", data, pos)
        return pos + 8 + n

    def value(pos: int, vtype: int) -> int:
        if vtype in _FIXED:
            fields.append(Field("value", pos, _FIXED[vtype]))
            return pos + _FIXED[vtype]
        if vtype == 8:
            return string(pos)
        fields.append(Field("vtype", pos, 4))
        (etype,) = struct.unpack_from("<I", data, pos)
        fields.append(Field("arrcount", pos + 4, 8))
        (count,) = struct.unpack_from("<Q", data, pos + 4)
        pos += 12
        if etype in _FIXED:
            return pos + count * _FIXED[etype]
        for _ in range(count):
            pos = value(pos, etype)
        return pos

    for _ in range(n_kv):
        pos = string(pos)
        fields.append(Field("vtype", pos, 4))
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos = value(pos + 4, vtype)
    for _ in range(n_tensors):
        pos = string(pos)
        fields.append(Field("ndims", pos, 4))
        (nd,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for _ in range(nd):
            fields.append(Field("dim", pos, 8))
            pos += 8
        fields.append(Field("ttype", pos, 4))
        fields.append(Field("offset", pos + 4, 8))
        pos += 12
    return fields


_INTERESTING = [0, 1, 2, 3, 7, 8, 31, 32, 255, 256, 4095, 65535, 65536, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
                1 << 32, (1 << 40), (1 << 63) - 1, 1 << 63, (1 << 64) - 1]  # fmt: skip


def mutate(data: bytes, fields: list[Field], seed: int) -> tuple[bytes, str]:
    """A mutated copy of `data` and a one-line description of what changed."""
    rng = random.Random(seed)
    header_end = max(f.pos + f.size for f in fields)
    out = bytearray(data)
    strategy = rng.choice(["flip", "flip", "truncate", "field", "field", "field", "field", "splice"])
    if strategy == "flip":
        n = rng.randint(1, 8)
        for _ in range(n):
            i = rng.randrange(header_end)
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out), f"flip {n} bits in the header"
    if strategy == "truncate":
        cut = rng.randrange(1, len(data))
        return bytes(out[:cut]), f"truncate at {cut}"
    if strategy == "splice":
        a, b = sorted(rng.randrange(header_end) for _ in range(2))
        chunk = out[a:b]
        i = rng.randrange(header_end)
        return bytes(out[:i] + chunk + out[i:]), f"insert {len(chunk)} header bytes at {i}"
    f = rng.choice(fields)
    limit = (1 << (8 * f.size)) - 1
    v = rng.choice(_INTERESTING + [rng.randrange(limit + 1)]) & limit
    out[f.pos : f.pos + f.size] = v.to_bytes(f.size, "little")
    return bytes(out), f"{f.kind} at {f.pos} := {v}"
