"""A SentencePiece "precompiled charsmap" built from a map of single characters, for the
`Precompiled` normalizer of `tokenizers`: one pass over the text however many characters map.

The format (as llama.cpp's llm_tokenizer_ugm and `tokenizers` read it): a little-endian u32
byte size of the trie, the trie as a darts-clone double array of u32 units, then the
replacement strings, each ending in NUL. A unit holds a label (bits 0-7), a has-leaf flag
(bit 8) and the XOR offset from its own index to its children's base (bits 10-30, shifted left
by 8 when bit 9 is set); a key's value (the offset of its replacement) sits in the unit at its
node's base with bit 31 set, so it never matches a label.

`Precompiled` looks a whole grapheme cluster up first, and a cluster that starts with a key is
replaced as a whole: callers must cut the text into single-character clusters (wpm.py inserts a
control character between all characters, which the map then deletes).
"""

import struct
from collections.abc import Mapping

_LEAF = 1 << 8
_VALUE = 1 << 31
_MAX_OFFSET = 1 << 21  # offsets above need bit 9's 256-multiple encoding, which this never uses


def build_charsmap(mapping: Mapping[str, str]) -> bytes:
    """The charsmap replacing each key (one character) by its value."""
    assert all(len(key) == 1 for key in mapping)
    strings = bytearray()
    offsets: dict[str, int] = {}
    for value in sorted(set(mapping.values())):
        offsets[value] = len(strings)
        strings += value.encode("utf-8") + b"\0"
    # The trie of the keys' UTF-8 bytes: node -> {byte: child}, and the value at each key's end.
    children: list[dict[int, int]] = [{}]
    values: dict[int, int] = {}
    for key, value in mapping.items():
        node = 0
        for byte in key.encode("utf-8"):
            node = children[node].setdefault(byte, len(children))
            if node == len(children):
                children.append({})
        values[node] = offsets[value]
    units = _double_array(children, values)
    blob = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(blob)) + blob + bytes(strings)


def _double_array(children: list[dict[int, int]], values: dict[int, int]) -> list[int]:
    units = [0]
    used = bytearray(b"\1")  # used[i]: index i holds a unit
    bases: set[int] = set()
    position = {0: 0}  # trie node -> index of its unit
    pending = [0]
    while pending:
        node = pending.pop()
        labels = sorted(children[node]) + ([0] if node in values else [])
        base = _free_base(labels, used, bases)
        bases.add(base)
        top = max(base ^ label for label in labels) + 1
        if len(units) < top:
            units.extend([0] * (top - len(units)))
            used.extend(bytes(top - len(used)))
        for label in labels:
            used[base ^ label] = 1
        here = position[node]
        offset = here ^ base
        assert offset < _MAX_OFFSET, "charsmap trie too large"
        units[here] |= offset << 10 | (_LEAF if node in values else 0)
        if node in values:
            units[base] = _VALUE | values[node]
        for label, child in children[node].items():
            position[child] = base ^ label
            units[base ^ label] = label
            pending.append(child)
    # Readers index base ^ byte for any byte without a bounds check (tokenizers panics past the
    # end): fill every 256-unit block a base lies in.
    units.extend([0] * (-len(units) % 256))
    return units


def _free_base(labels: list[int], used: bytearray, bases: set[int]) -> int:
    """The first base whose slots for `labels` are all free (an index past `used` is free)."""
    first = labels[0]
    slot = used.find(0)
    while True:
        if slot < 0:
            slot = len(used)
        base = slot ^ first
        if base > 0 and base not in bases and all(base ^ label >= len(used) or not used[base ^ label]
                                                  for label in labels):  # fmt: skip
            return base
        slot = used.find(0, slot + 1) if slot < len(used) else slot + 1
