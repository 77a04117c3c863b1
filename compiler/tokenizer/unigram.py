"""The `t5` vocabulary (a SentencePiece Unigram model, llama.cpp's UGM: T5, XLM-R's in bge-m3 and
bge-reranker-v2-m3, nomic-embed-text v2, jina-embeddings v3).

`tokenizers` cannot run it as llama.cpp does (runtime/model/ugm.py says where its Unigram model
and `Precompiled` normalizer differ), so the runtime runs llama.cpp's algorithm itself, from:

- the tokenizer.json this module's parts make: the pieces with the scores llama.cpp searches with,
  the GGUF's precompiled charsmap in a `Precompiled` normalizer, a decoder that turns "▁" back
  into spaces, the special tokens and BOS/EOS. Loaded by `tokenizers` alone (no rfc runtime) it
  tokenizes as Hugging Face's own conversion of such a vocabulary would: the same ids for most
  text, not for all (docs/tokenizers.md).
- `unigram_spec`, the manifest's `tokenizer.unigram`: llama.cpp's whitespace options, the unknown
  token and its score, and which pieces its search never produces or scores 0.

The charsmap comes from the internet like the rest of the file: `check_charsmap` walks every
node the search can reach and refuses an index outside the array or a replacement that is not
NUL-terminated UTF-8, where llama.cpp would throw in the middle of a request.
"""

import base64
from collections.abc import Mapping, Sequence

import numpy as np

CHARSMAP_KEY = "tokenizer.ggml.precompiled_charsmap"
# The charsmap's bytes (llama.cpp's and T5's NFKC maps: ~237 KB); rfc's bound.
MAX_CHARSMAP = 1 << 22
# llama.cpp's unknown_token_score_penalty: the unknown token scores the lowest normal piece's
# score less this
UNKNOWN_PENALTY = 10.0
SPACE = "\u2581"

# tokenizer.ggml.token_type values llama.cpp's token matcher holds (normal, user-defined, unused)
_MATCHED = (1, 4, 5)
_NORMAL, _USER_DEFINED = 1, 4


class CharsmapError(ValueError):
    """The precompiled charsmap is malformed."""


def charsmap_bytes(metadata: Mapping[str, object]) -> bytes | None:
    """The GGUF's charsmap as bytes (llama.cpp reads it as int8 or uint8 values); None without one."""
    values = metadata.get(CHARSMAP_KEY)
    if values is None:
        return None
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        raise CharsmapError(f"{CHARSMAP_KEY} is not an array of bytes")
    if len(values) > MAX_CHARSMAP:
        raise CharsmapError(f"{CHARSMAP_KEY} has {len(values)} bytes, more than rfc's bound of {MAX_CHARSMAP}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and -128 <= v <= 255 for v in values):
        raise CharsmapError(f"{CHARSMAP_KEY} is not an array of bytes")
    blob = bytes(v & 0xFF for v in values)
    check_charsmap(blob)
    return blob


def check_charsmap(blob: bytes) -> None:
    """Walks the double array from its root as llama.cpp's normalize_prefix does, over every byte
    1-255 at every node it reaches: each index must be inside the array and each leaf's
    replacement a NUL-terminated UTF-8 string."""
    if len(blob) < 4:
        raise CharsmapError(f"{CHARSMAP_KEY} is shorter than its size header")
    size = int.from_bytes(blob[:4], "little")
    if size % 4 or size == 0 or size + 4 >= len(blob):
        raise CharsmapError(f"{CHARSMAP_KEY}'s array ({size} bytes) does not fit in its {len(blob)} bytes")
    nodes = np.frombuffer(blob, dtype="<u4", count=size // 4, offset=4).astype(np.int64)
    strings = blob[4 + size :]
    count = len(nodes)
    base = (nodes >> 10) << ((nodes & 0x200) >> 6)
    lcheck = nodes & 0x800000FF
    leaf = (nodes >> 8) & 1
    labels = np.arange(1, 256, dtype=np.int64)
    seen = np.zeros(count, dtype=bool)
    frontier = np.array([base[0]], dtype=np.int64)
    offsets: set[int] = set()
    while frontier.size:
        children = (frontier[:, None] ^ labels[None, :]).ravel()
        if children.max() >= count:
            raise CharsmapError(f"{CHARSMAP_KEY} has a node whose children fall outside its array")
        taken = children[lcheck[children] == np.tile(labels, frontier.size)]
        taken = taken[~seen[taken]]
        seen[taken] = True
        states = taken ^ base[taken]
        ends = states[leaf[taken] == 1]
        if ends.size and ends.max() >= count:
            raise CharsmapError(f"{CHARSMAP_KEY} has a leaf outside its array")
        offsets.update((nodes[ends] & 0x7FFFFFFF).tolist())
        frontier = np.unique(states)
    for offset in offsets:
        end = strings.find(b"\0", offset)
        if offset >= len(strings) or end < 0:
            raise CharsmapError(f"{CHARSMAP_KEY} has a replacement out of bounds or unterminated (at {offset})")
        try:
            strings[offset:end].decode("utf-8")
        except UnicodeDecodeError:
            raise CharsmapError(f"{CHARSMAP_KEY} has a replacement that is not UTF-8 text (at {offset})") from None


def unigram_parts(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int], unk_id: int,
                  add_space_prefix: bool, remove_extra_whitespaces: bool, charsmap: bytes | None) -> dict:  # fmt: skip
    """tokenizer.json's normalizer, pre-tokenizer, model and decoder (added tokens and the
    post-processor are build.py's, as for every vocabulary)."""
    normalizers: list[dict] = []
    if charsmap is not None:
        normalizers.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode("ascii")})
    if remove_extra_whitespaces:
        normalizers.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    prepend = "always" if add_space_prefix or remove_extra_whitespaces else "never"
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "Fuse"}]
    if add_space_prefix:  # llama.cpp's detokenizer drops the first token's leading space then
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": prepend, "split": True},
        "model": {"type": "Unigram", "unk_id": unk_id, "byte_fallback": False,
                  "vocab": [[t, _search_score(s, k)] for t, s, k in zip(tokens, scores, types, strict=True)]},
        "decoder": {"type": "Sequence", "decoders": decoders},
    }  # fmt: skip


def unigram_spec(scores: Sequence[float], types: Sequence[int], unk_id: int, add_space_prefix: bool,
                 remove_extra_whitespaces: bool, lstrip: Sequence[int]) -> dict:  # fmt: skip
    """The manifest's tokenizer.unigram (runtime/model/ugm.py reads it); `lstrip`: the special
    tokens llama.cpp strips the ASCII whitespace before."""
    normal = [s for s, k in zip(scores, types, strict=True) if k == _NORMAL]
    # float arithmetic as llama.cpp's: the lowest normal score (FLT_MAX without one) less the penalty
    lowest = np.float32(min(normal)) if normal else np.finfo(np.float32).max
    return {
        "add_space_prefix": add_space_prefix,
        "remove_extra_whitespaces": remove_extra_whitespaces,
        "unknown_id": unk_id,
        "unknown_score": float(lowest - np.float32(UNKNOWN_PENALTY)),
        "unmatched": [i for i, k in enumerate(types) if k not in _MATCHED],
        "user_defined": [i for i, k in enumerate(types) if k == _USER_DEFINED],
        "lstrip": sorted(lstrip),
    }


def _search_score(score: float, kind: int) -> float:
    return 0.0 if kind == _USER_DEFINED else float(score)
