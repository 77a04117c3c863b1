"""llama.cpp's Unigram tokenizer (its UGM: `t5` vocabularies, such as T5's, XLM-R's in bge-m3 and
bge-reranker-v2-m3, nomic-embed-text v2's), run as llama.cpp's llm_tokenizer_ugm runs it.

`tokenizers` has a Unigram model and a `Precompiled` normalizer, but neither does what llama.cpp
does: `Precompiled` looks a grapheme cluster up by its shortest matching prefix where llama.cpp
takes the longest byte-prefix match at each position, and the Unigram model's unknown-token
score counts every piece's score where llama.cpp's counts the normal pieces' alone (XLM-R's
unused pieces score -10000). So the bundle's tokenizer.json carries the vocabulary, the
charsmap and the special tokens, and `attach` gives the loaded tokenizer this module's
normalizer (the charsmap by longest match, then llama.cpp's whitespace rules) and Viterbi
search, as a pre-tokenizer that cuts the normalized text into the pieces llama.cpp chooses,
which a WordLevel model maps to their ids. `tokenizers` still splits off special tokens first and
adds BOS/EOS after, as llama.cpp does around each stretch of text.

The compiler validates the charsmap (compiler/tokenizer/unigram.py); the walk here still checks
every index, so a damaged one ends a match instead of reading outside the array.
"""

import base64
import itertools
import re
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import NormalizedString, PreTokenizedString, Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel

from rfc.runtime.model.special_strip import ASCII_SPACE  # C's isspace, which llama.cpp's LSTRIP strips

ESCAPED_SPACE = "\u2581"  # what a space becomes (llama.cpp's escape_whitespaces, on for UGM)
_NOT_PREFIX = object()  # the pieces' lookup default: the text is not the start of any piece
_WORDS = re.compile(f"{ESCAPED_SPACE}?[^{ESCAPED_SPACE}]*")  # an escaped space and the text up to the next
# The longest word kept and the most characters of kept words (then the cache starts over): a
# character's matches take ~240 bytes, so at most ~16 MiB a tokenizer
_CACHED_WORD, _CACHED_CHARS = 32, 1 << 16
_SPEC_FLAGS = ("add_space_prefix", "remove_extra_whitespaces")


class UnigramError(ValueError):
    """The bundle's Unigram tokenizer data is malformed."""


class Charsmap:
    """A SentencePiece precompiled charsmap: a little-endian u32 byte size, that many bytes of
    XOR-compressed double array (each u32 node: BASE in bits 10-30, shifted by bit 9; LCHECK in
    bits 0-7 and 31; LEAF in bit 8; a value node's offset in bits 0-30), then NUL-terminated
    replacement strings."""

    def __init__(self, blob: bytes):
        if len(blob) < 4:
            raise UnigramError("the precompiled charsmap is shorter than its size header")
        size = int.from_bytes(blob[:4], "little")
        if size % 4 or size + 4 >= len(blob):
            raise UnigramError(f"the precompiled charsmap's array ({size} bytes) does not fit in its {len(blob)}")
        self._nodes = array("I", blob[4 : 4 + size])
        if sys.byteorder == "big":
            self._nodes.byteswap()
        self._strings = bytes(blob[4 + size :])
        self._replacements: dict[int, bytes] = {}
        self._root = _base(self._nodes[0]) if self._nodes else 0

    def longest_match(self, data: bytes, start: int) -> tuple[int, bytes]:
        """(bytes matched, replacement) for the longest key that data[start:] starts with;
        (0, b"") where none does. A NUL byte ends every key, as in llama.cpp."""
        node, matched, value = self._root, 0, -1
        for pos in range(start, len(data)):
            c = data[pos]
            if c == 0:
                break
            node, leaf = self._step(node, c)
            if node is None:  # (an index outside the array: llama.cpp throws; a validated charsmap never gets here)
                break
            if leaf:
                matched, value = pos - start + 1, self._nodes[node] & 0x7FFFFFFF
        return (matched, self.replacement(value)) if matched else (0, b"")

    def plain_runs(self) -> "re.Pattern[bytes]":
        """A pattern that matches, at a character's start in valid UTF-8, a run of characters other
        than a space whose longest match here is none, each of which `normalize` copies as it is.
        A character qualifies when the walk of its bytes ends inside it, or when it reaches the
        character's end where no key ends and the next byte continues none: `A` begins
        composition keys such as `A\u0300`, but not before `b`; `и` begins `й` (`и\u0306`). Each
        character of up to three bytes is walked once here (~25,000 of them for XLM-R's charsmap);
        four-byte ones whose first byte begins a key are left to the walk at each."""
        alternatives = []
        for lead in range(0xF5):
            width = 1 if lead < 0x80 else 0 if lead < 0xC2 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            if not width or lead == 0x20:
                continue
            node, leaf = self._step(self._root, lead) if lead else (None, False)  # NUL ends every walk
            if node is None:
                alternatives.append((b"", lead, width - 1, None))
            elif not leaf and width == 1:
                alternatives.append((b"", lead, 0, self._follow(node)))
            elif not leaf and width < 4:
                sub = self._char_alternatives(node, width - 1)
                if sub:
                    alternatives.append((bytes([lead]), None, 0, sub))
        return re.compile(b"(?:" + _alternation(alternatives) + b")+")

    def _char_alternatives(self, node: int, remaining: int) -> bytes:
        """The alternatives for the rest of a character (`remaining` continuation bytes) from
        `node` of the walk."""
        out = []
        for c in range(0x80, 0xC0):
            after, leaf = self._step(node, c)
            if after is None:
                out.append((b"", c, remaining - 1, None))
            elif not leaf and remaining == 1:
                out.append((b"", c, 0, self._follow(after)))
            elif not leaf:
                sub = self._char_alternatives(after, remaining - 1)
                if sub:
                    out.append((bytes([c]), None, 0, sub))
        return _alternation(out)

    def _follow(self, node: int) -> frozenset[int]:
        """The bytes that continue some key from `node`."""
        return frozenset(d for d in range(1, 256) if self._step(node, d)[0] is not None)

    def _step(self, node: int, c: int) -> tuple[int | None, bool]:
        """(the node after byte c from `node`, whether a key ends there), (None, False) where no key goes on."""
        nodes, count = self._nodes, len(self._nodes)
        node ^= c
        if node >= count or nodes[node] & 0x800000FF != c:
            return None, False
        packed = nodes[node]
        node ^= _base(packed)
        return (node, bool(packed & 0x100)) if node < count else (None, False)

    def replacement(self, offset: int) -> bytes:
        found = self._replacements.get(offset)
        if found is None:
            end = self._strings.find(b"\0", offset)
            if offset >= len(self._strings) or end < 0:
                raise UnigramError(f"the precompiled charsmap's replacement at {offset} is outside it or unterminated")
            found = self._replacements[offset] = self._strings[offset:end]
        return found


def _base(packed: int) -> int:
    return (packed >> 10) << ((packed & 0x200) >> 6)


def _byte_class(values) -> bytes:
    return b"[" + b"".join(re.escape(bytes([v])) for v in sorted(values)) + b"]"


def _alternation(items) -> bytes:
    """A regex alternation over bytes: items (prefix, byte, continuation bytes after it, follow)
    with byte None for `prefix(?:follow)` (follow a nested alternation), else the byte followed by
    that many continuation bytes and, where `follow` is a set, not by one of its bytes. Bytes
    alike are gathered into one class."""
    classes: dict[tuple, list[int]] = {}
    nested = []
    for prefix, byte, tail, follow in items:
        if byte is None:
            nested.append(re.escape(prefix) + b"(?:" + follow + b")")
        else:
            classes.setdefault((tail, follow), []).append(byte)
    parts = []
    for (tail, follow), bs in classes.items():
        part = _byte_class(bs) + (rb"[\x80-\xbf]{%d}" % tail if tail else b"")
        parts.append(part + (b"(?!" + _byte_class(follow) + b")" if follow else b""))
    return b"|".join(parts + nested)


# Without a charsmap every character but a space is copied as it is
_ALL_BUT_SPACES = re.compile(
    rb"(?:[\x00-\x1f\x21-\x7f]|[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3})+"
)


class UnigramTokenizer:
    """llama.cpp's UGM normalization and Viterbi search over one stretch of text."""

    def __init__(self, pieces: Sequence[str], scores: Sequence[float], spec: Mapping[str, Any],
                 charsmap: Charsmap | None):  # fmt: skip
        n = len(pieces)
        unmatched = _ids(spec, "unmatched", n)
        user_defined = _ids(spec, "user_defined", n)
        self.unk_id = _ids(spec, "unknown_id", n, single=True)
        self.unknown_score = float(spec["unknown_score"])
        self.add_space_prefix, self.remove_extra_whitespaces = (bool(spec[k]) for k in _SPEC_FLAGS)
        self.charsmap = charsmap
        self._plain = charsmap.plain_runs() if charsmap is not None else _ALL_BUT_SPACES
        # Every piece llama.cpp's token matcher holds (normal, user-defined and unused ones: a
        # later duplicate wins, as its trie's insert does), and each proper prefix of one
        # (None), so that a walk stops at the first text no piece starts with.
        held = [(i, piece) for i, piece in enumerate(pieces) if piece and i not in unmatched]
        self._pieces: dict[str, tuple[int, float] | None] = dict.fromkeys(
            {piece[:k] for _, piece in held for k in range(1, len(piece))}
        )
        for i, piece in held:  # a piece that is also a longer one's prefix is a piece
            # llama.cpp scores a user-defined piece 0 (normal pieces' log probabilities are negative)
            self._pieces[piece] = (i, 0.0 if i in user_defined else float(scores[i]))
        self._words_cut = not any(ESCAPED_SPACE in piece[1:] for _, piece in held)
        self._word_cache: dict[str, list] = {}
        self._cached_chars = 0

    def piece_ids(self) -> dict[str, int]:
        """Each piece the search can choose and its id."""
        return {piece: found[0] for piece, found in self._pieces.items() if found is not None}

    # -- normalization: llama_tokenizer_ugm_session::normalize ----------------------------

    def normalize(self, text: str) -> str:
        space = ESCAPED_SPACE.encode()
        out = bytearray()
        data = text.encode()
        prepend, merge = self.add_space_prefix, self.remove_extra_whitespaces
        space_prepended = in_word = False
        at, plain = 0, self._plain.match
        while at < len(data):
            run = plain(data, at)
            if run:  # characters copied as they are (none a space): what the loop below does to each
                if not in_word:
                    in_word = True
                    if (prepend and not space_prepended) or merge:
                        out += space
                        space_prepended = True
                out += run.group()
                at = run.end()
                continue
            replacement, consumed = self._normalize_prefix(data, at)
            for c in replacement:
                if c != 0x20:
                    if not in_word:
                        in_word = True
                        if (prepend and not space_prepended) or merge:
                            out += space
                            space_prepended = True
                    out.append(c)
                else:
                    in_word = False
                    if not merge:
                        out += space
            at += consumed
        return out.decode("utf-8", "replace")

    def _normalize_prefix(self, data: bytes, at: int) -> tuple[bytes, int]:
        # llama.cpp first copies a user-defined token's text unchanged; here, as there, such a text
        # never reaches the normalizer: it was split off as a token of its own (an added token)
        if self.charsmap is not None:
            matched, replacement = self.charsmap.longest_match(data, at)
            if matched:
                return replacement, matched
        width = _utf8_width(data, at)
        if width:
            return data[at : at + width], width
        return "\ufffd".encode(), 1  # an invalid byte: U+FFFD for it alone

    # -- the Viterbi search: llama_tokenizer_ugm_session::tokenize -------------------------

    def pieces_of(self, normalized: str) -> list[tuple[int, int, int]]:
        """The (start, end, token id) of each token llama.cpp chooses for `normalized`, a run of
        unknown characters as one.

        Where no piece holds an escaped space past its first character, no piece crosses the start
        of a word (a space and what follows up to the next): a word's piece matches are its own,
        so a short word's are walked once and kept while they stay in the cache (_word_matches);
        a long word (CJK text has no spaces), or any text of a vocabulary without that property,
        is walked position by position as the search goes."""
        n = len(normalized)
        if not n:
            return []
        score = [float("-inf")] * (n + 1)
        score[0] = 0.0
        start, token = [0] * (n + 1), [self.unk_id] * (n + 1)
        unknown, unk = self.unknown_score, self.unk_id
        for i, (matches, single) in enumerate(self._matches(normalized)):
            best = score[i]
            for length, found, piece_score in matches:  # by length, as llama.cpp's trie walk finds them
                j = i + length
                challenger = best + piece_score
                if challenger > score[j]:
                    score[j], start[j], token[j] = challenger, i, found
            if not single:  # no piece is this character alone: the unknown token, penalized
                challenger = best + unknown
                if challenger > score[i + 1]:
                    score[i + 1], start[i + 1], token[i + 1] = challenger, i, unk
        spans: list[tuple[int, int, int]] = []
        end, previous_unknown = n, False
        while True:
            unknown_here = token[end] == self.unk_id
            if previous_unknown and unknown_here:  # consecutive unknown tokens become one
                spans[-1] = (start[end], spans[-1][1], self.unk_id)
            else:
                spans.append((start[end], end, token[end]))
            if start[end] == 0:
                break
            previous_unknown, end = unknown_here, start[end]
        spans.reverse()
        return spans

    def _matches(self, text: str):
        """For each position of `text`: ((length, id, score) of each piece that starts there, by
        length), whether one is that character alone: a short word's from the cache, the rest
        walked as the search reaches them."""
        if not self._words_cut:
            return self._walk(text)
        return itertools.chain.from_iterable(
            self._word_matches(word) if len(word) <= _CACHED_WORD else self._walk(word) for word in _WORDS.findall(text)
        )

    def _word_matches(self, word: str) -> list[tuple[tuple[tuple[int, int, float], ...], bool]]:
        """_matches of a short word, kept in the cache."""
        found = self._word_cache.get(word)
        if found is None:
            found = list(self._walk(word))
            self._cached_chars += len(word)
            if self._cached_chars > _CACHED_CHARS:
                self._word_cache.clear()
                self._cached_chars = len(word)
            self._word_cache[word] = found
        return found

    def _walk(self, text: str):
        get, n = self._pieces.get, len(text)
        for i in range(n):
            matches, j = [], i + 1
            while j <= n:
                piece = get(text[i:j], _NOT_PREFIX)
                if piece is _NOT_PREFIX:
                    break
                if piece is not None:
                    matches.append((j - i, piece[0], piece[1]))
                j += 1
            yield tuple(matches), bool(matches) and matches[0][0] == 1


def _utf8_width(data: bytes, at: int) -> int:
    """The length of the valid UTF-8 character at data[at], 0 if it is not one."""
    lead = data[at]
    width = 1 if lead < 0x80 else 2 if lead >> 5 == 6 else 3 if lead >> 4 == 14 else 4 if lead >> 3 == 30 else 0
    if not width or at + width > len(data):
        return 0
    try:
        data[at : at + width].decode("utf-8")
    except UnicodeDecodeError:
        return 0
    return width


def _ids(spec: Mapping[str, Any], key: str, n: int, single: bool = False):
    value = spec.get(key)
    values = [value] if single else value
    if not isinstance(values, list) or not all(type(i) is int and 0 <= i < n for i in values):
        raise UnigramError(f"the tokenizer's unigram.{key} is not {'a token id' if single else 'a list of token ids'}")
    return value if single else frozenset(values)


class _Search:
    """The pre-tokenizer: each stretch of text between special tokens normalized and cut into
    the pieces llama.cpp chooses. Normalizing here rather than in a normalizer sees the token after
    the stretch: before an LSTRIP one ("<mask>" in XLM-R's vocabularies) llama.cpp drops the
    stretch's trailing ASCII whitespace first, where `tokenizers`' lstrip drops any whitespace.
    The pieces come back joined by `separator`, a character no piece holds (inside a run of
    unknown characters, where it may occur, it becomes `stand_in`, another), and `tokenizers`' own
    Split cuts them apart: one string back to it per stretch rather than a slice per token."""

    def __init__(self, model: UnigramTokenizer, lstrip: frozenset[int], separator: str, stand_in: str):
        self._model, self._lstrip = model, lstrip
        self._separator, self._stand_in = separator, stand_in

    def pre_tokenize(self, pretokenized: PreTokenizedString) -> None:
        splits = pretokenized.get_splits()
        stripped = {i for i in range(len(splits) - 1)
                    if splits[i + 1][2] and splits[i + 1][2][0].id in self._lstrip}  # fmt: skip

        def cut(index: int, normalized: NormalizedString) -> list[NormalizedString]:
            text = normalized.normalized
            text = self._model.normalize(text.rstrip(ASCII_SPACE) if index in stripped else text)
            normalized.clear()  # offsets into the original text are not kept (nothing reads them)
            if not text:
                return []
            unk, sep = self._model.unk_id, self._separator
            pieces = [text[a:b].replace(sep, self._stand_in) if t == unk else text[a:b]
                      for a, b, t in self._model.pieces_of(text)]  # fmt: skip
            normalized.append(sep.join(pieces))
            return [normalized]

        pretokenized.split(cut)


# Characters that split the joined pieces (Unicode noncharacters first): the first two no piece holds
_SEPARATORS = [chr(c) for c in range(0xFDD0, 0xFDF0)] + [chr(0x10FFFE), chr(0x10FFFF)]


def shell(document: Mapping[str, Any]) -> dict[str, Any]:
    """tokenizer.json `document` without what `attach` replaces: its model (an empty WordLevel in
    place of the Unigram) and its normalizer. Loading that instead of the whole document spares
    `tokenizers` building the Unigram model of every piece, which attach would discard (XLM-R's
    250,048: ~2.5 s)."""
    if not isinstance(document, Mapping) or not isinstance(added := document.get("added_tokens", []), list):
        raise UnigramError("the tokenizer's unigram spec needs a tokenizer.json object with a list of added tokens")
    # the added tokens keep their ids: `tokenizers` numbers one its model lacks after the model's
    vocab = {t.get("content"): t.get("id") for t in added if isinstance(t, Mapping)}
    return {**document, "normalizer": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": ""}}


def attach(tokenizer: Tokenizer, document: Mapping[str, Any], spec: Mapping[str, Any]) -> UnigramTokenizer:
    """Gives `tokenizer` (loaded from `document`, a tokenizer.json with a Unigram model) llama.cpp's
    normalization and search, as `spec` (the manifest's tokenizer.unigram) describes them."""
    model = document.get("model")
    vocab = model.get("vocab") if isinstance(model, Mapping) and model.get("type") == "Unigram" else None
    if not isinstance(vocab, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int | float) for e in vocab
    ):
        raise UnigramError("the tokenizer's unigram spec needs a tokenizer.json with a Unigram model")
    if not isinstance(spec, Mapping) or not all(isinstance(spec.get(k), bool) for k in _SPEC_FLAGS):
        raise UnigramError(f"the tokenizer's unigram spec lacks {' or '.join(_SPEC_FLAGS)}")
    if not isinstance(spec.get("unknown_score"), int | float):
        raise UnigramError("the tokenizer's unigram spec lacks unknown_score")
    ugm = UnigramTokenizer([e[0] for e in vocab], [e[1] for e in vocab], spec, _charsmap(document))
    word_ids = ugm.piece_ids()
    unk = vocab[ugm.unk_id][0]
    word_ids.setdefault(unk, ugm.unk_id)
    if word_ids[unk] != ugm.unk_id:  # a piece's text is the unknown token's: it cannot name both
        raise UnigramError(f"the unknown token's text {unk[:20]!r} is also a piece's")
    free = list(itertools.islice((c for c in _SEPARATORS if not any(c in piece for piece in word_ids)), 2))
    if len(free) < 2:
        raise UnigramError("every separator character rfc could use is inside some piece of the vocabulary")
    search = _Search(ugm, _ids(spec, "lstrip", len(vocab)), *free)
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.PreTokenizer.custom(search), pre_tokenizers.Split(free[0], "removed")]
    )
    tokenizer.model = WordLevel(word_ids, unk)
    return ugm


def _charsmap(document: Mapping[str, Any]) -> Charsmap | None:
    """The charsmap of the document's `Precompiled` normalizer (alone or in a Sequence)."""
    normalizer = document.get("normalizer")
    found = [normalizer] if isinstance(normalizer, Mapping) else []
    if found and found[0].get("type") == "Sequence":
        found = [n for n in found[0].get("normalizers") or [] if isinstance(n, Mapping)]
    blobs = [n.get("precompiled_charsmap") for n in found if n.get("type") == "Precompiled"]
    if not blobs:
        return None
    try:
        blob = base64.b64decode(str(blobs[0]), validate=True)
    except ValueError as e:
        raise UnigramError(f"the tokenizer's precompiled charsmap is not base64: {e}") from None
    return Charsmap(blob)
