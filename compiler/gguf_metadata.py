"""The GGUF metadata rfc reads, decoded from gguf_check's index with every array bounded first.

gguf_check.py steps over every metadata value without decoding it. Here the compiler's
metadata dict is built from that index, as `gguf.GGUFReader`'s `contents()` would give it, but
only for what rfc can use:

- every scalar number and boolean (a handful of bytes each; they are shown as the model's
  metadata);
- strings up to MAX_TEXT bytes, the chat template up to MAX_CHAT_TEMPLATE;
- the arrays rfc reads, each bounded by what its key can hold before any element is decoded:
  the vocabulary (tokens, scores, token types) by token_embd.weight's rows (MAX_VOCAB in a
  vocabulary-only file, which has no tensors), the merges by MERGES_PER_TOKEN times that, and
  `<arch>.*` arrays as llama.cpp bounds them: a fixed-size one by its own size
  (`rope.dimension_sections`: M-RoPE's 4 sections), any other as a per-layer array of at most
  LLAMA_MAX_LAYERS (512) entries, or the layer count when that is larger (llama.cpp's model
  saver writes every per-layer array at 512 entries whatever the layer count; recipes read the
  first block_count); so are the per-layer arrays llama.cpp names without the prefix
  (UNPREFIXED_PER_LAYER: apertus's `xielu.*`);
- `tokenizer.ggml.precompiled_charsmap` (a Unigram vocabulary's normalization map) by
  MAX_CHARSMAP bytes.

Any other array (general.tags, keys rfc does not know) is left unread however long it is, and
so is an over-long string under a key rfc does not read. A vocabulary, merges or charsmap array
over its bound is a CompileError naming the key and the bound; an
`<arch>.*` array over its bound is left unread too, and refused (the same one line) only when a
recipe reads that key (`unread`, which Metadata consults): a key the recipe does not read is
never materialized, whatever its length.
"""

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_check import ARRAY, STRING, GGUFIndex, MetadataEntry
from rfc.compiler.tokenizer.unigram import CHARSMAP_KEY, MAX_CHARSMAP

MAX_TEXT = 1 << 16  # bytes in a string (a model's name, the tokenizer's model and pre-tokenizer names)
MAX_CHAT_TEMPLATE = 1 << 20  # bytes (real templates: a few to a few tens of KiB)
# Llama 3's vocabulary has 280,147 merges for 128,256 tokens (2.2 per token); most have fewer
# merges than tokens.
MERGES_PER_TOKEN = 8
# llama.cpp's LLAMA_MAX_LAYERS: the most entries of a per-layer array it reads (get_key_or_arr).
LLAMA_MAX_LAYERS = 512
# `<arch>.*` arrays of a fixed size, by their key after the prefix: bounded by that size.
FIXED_ARRAYS = {"rope.dimension_sections": (4, "M-RoPE's 4 sections")}

ARCHITECTURE_KEY = "general.architecture"
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
VOCAB_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
MERGES_KEY = "tokenizer.ggml.merges"
# The keys outside `<arch>.*` whose string values rfc reads: too long, they are refused, not skipped.
# Per-layer arrays llama.cpp names without the architecture's prefix (apertus's xIELU constants):
# bounded, and refused only when read, like `<arch>.*` per-layer arrays
UNPREFIXED_PER_LAYER = ("xielu.alpha_n", "xielu.alpha_p", "xielu.beta", "xielu.eps")
READ_TEXT_KEYS = (ARCHITECTURE_KEY, "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre", CHAT_TEMPLATE_KEY)

_BOOL = 7
_NUMBERS = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    _BOOL: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class _Bound:
    entries: int
    why: str  # what sets it, for the refusal


@dataclass(frozen=True)
class _ArrayBounds:
    vocab: _Bound
    merges: _Bound
    per_layer: _Bound
    arch_prefix: str | None

    def for_key(self, key: str) -> _Bound | None:
        """The bound of an array rfc reads; None for one it does not."""
        if key in VOCAB_KEYS:
            return self.vocab
        if key == MERGES_KEY:
            return self.merges
        if key == CHARSMAP_KEY:
            return _Bound(MAX_CHARSMAP, "rfc's bound on a precompiled charsmap")
        if self.arch_prefix is not None and key.startswith(self.arch_prefix):
            fixed = FIXED_ARRAYS.get(key[len(self.arch_prefix) :])
            return _Bound(*fixed) if fixed else self.per_layer
        if key in UNPREFIXED_PER_LAYER:
            return self.per_layer
        return None

    def deferred(self, key: str) -> bool:
        """Whether an array over its bound is refused only when a recipe reads it (`<arch>.*`)."""
        return (self.arch_prefix is not None and key.startswith(self.arch_prefix)) or key in UNPREFIXED_PER_LAYER


def decode_metadata(data: bytes, index: GGUFIndex, name: str, unread: dict[str, str] | None = None) -> dict[str, Any]:
    """`data` is the file (or a memory map of it) that `index` describes. An `<arch>.*` array
    over its bound is left out; its refusal goes into `unread` (key -> the one-line message)."""
    arch_entry = index.entries.get(ARCHITECTURE_KEY)
    arch = _text(data, arch_entry, name) if arch_entry is not None and arch_entry.vtype == STRING else None
    metadata = _scalars(data, index, name, f"{arch}." if arch is not None else None)
    bounds = _array_bounds(index, metadata, arch)
    for entry in index.entries.values():
        bound = bounds.for_key(entry.key) if entry.vtype == ARRAY else None
        if bound is None:
            continue  # a scalar (decoded above) or an array rfc does not read: left unread
        if entry.count > bound.entries:
            message = f"{name}: metadata {entry.key} has {entry.count} entries, more than {bound.entries} ({bound.why})"
            if not bounds.deferred(entry.key):
                raise CompileError(message)
            if unread is not None:
                unread[entry.key] = message
            continue
        metadata[entry.key] = _array(data, entry, name)
    return metadata


def _scalars(data: bytes, index: GGUFIndex, name: str, arch_prefix: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for entry in index.entries.values():
        if entry.vtype == ARRAY:
            continue
        if entry.vtype != STRING:
            metadata[entry.key] = _numbers(data, entry.vtype, 1, entry.pos)[0]
        elif _string_length(data, entry.pos) <= _text_bound(entry.key):
            metadata[entry.key] = _text(data, entry, name)
        elif entry.key in READ_TEXT_KEYS or (arch_prefix is not None and entry.key.startswith(arch_prefix)):
            raise CompileError(f"{name}: metadata {entry.key} is longer than {_text_bound(entry.key)} bytes")
    return metadata


def _array_bounds(index: GGUFIndex, metadata: dict[str, Any], arch: str | None) -> _ArrayBounds:
    # Imported here: rfc.compiler.arch imports gguf_reader, which imports this module.
    from rfc.compiler.arch.metadata import MAX_LAYERS, MAX_VOCAB

    embd = next((t for t in index.tensors if t.name == "token_embd.weight"), None)
    if embd is not None and len(embd.dims) == 2 and embd.dims[1] <= MAX_VOCAB:
        vocab = _Bound(embd.dims[1], "the rows of token_embd.weight")
    else:
        vocab = _Bound(MAX_VOCAB, "rfc's vocabulary bound")
    merges = _Bound(MERGES_PER_TOKEN * vocab.entries, f"{MERGES_PER_TOKEN} per token of the vocabulary, {vocab.why}")
    layers = metadata.get(f"{arch}.block_count")
    if isinstance(layers, int) and not isinstance(layers, bool) and LLAMA_MAX_LAYERS < layers <= MAX_LAYERS:
        per_layer = _Bound(layers, f"the layer count, {arch}.block_count")
    else:
        per_layer = _Bound(LLAMA_MAX_LAYERS, "a per-layer array's bound, llama.cpp's LLAMA_MAX_LAYERS")
    return _ArrayBounds(vocab, merges, per_layer, f"{arch}." if arch is not None else None)


def _text_bound(key: str) -> int:
    return MAX_CHAT_TEMPLATE if key == CHAT_TEMPLATE_KEY else MAX_TEXT


def _string_length(data: bytes, pos: int) -> int:
    return _U64.unpack_from(data, pos)[0]


def _text(data: bytes, entry: MetadataEntry, name: str) -> str:
    n = _string_length(data, entry.pos)
    if n > _text_bound(entry.key):
        raise CompileError(f"{name}: metadata {entry.key} is longer than {_text_bound(entry.key)} bytes")
    try:
        return data[entry.pos + 8 : entry.pos + 8 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise CompileError(f"{name}: metadata {entry.key} is not UTF-8 text") from None


def _numbers(data: bytes, vtype: int, count: int, pos: int) -> list:
    values = np.frombuffer(data, dtype=_NUMBERS[vtype], count=count, offset=pos)
    return (values != 0).tolist() if vtype == _BOOL else values.tolist()


def _array(data: bytes, entry: MetadataEntry, name: str) -> list:
    if entry.etype in _NUMBERS:
        return _numbers(data, entry.etype, entry.count, entry.pos)
    if entry.etype != STRING:
        raise CompileError(f"{name}: metadata {entry.key} is an array of arrays, which rfc does not read")
    out, pos, unpack = [], entry.pos, _U64.unpack_from
    try:
        for _ in range(entry.count):
            n = unpack(data, pos)[0]
            out.append(data[pos + 8 : pos + 8 + n].decode("utf-8"))
            pos += 8 + n
    except UnicodeDecodeError:
        raise CompileError(f"{name}: metadata {entry.key} has an entry that is not UTF-8 text") from None
    return out
