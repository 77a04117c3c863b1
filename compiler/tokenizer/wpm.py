"""llama.cpp's WordPiece tokenizer ("bert", WPM) as `tokenizers` building blocks.

The reference is llm_tokenizer_wpm_session in llama.cpp's src/llama-vocab.cpp, not BERT's own
tokenizer: llama.cpp's GGUF conversion stores word-initial pieces as "▁piece" and continuations
("##piece") as "piece", and llama.cpp tokenizes each word as "▁" + word, longest match first
from the left, the whole word becoming the unknown token if any position has no match. That is
WordPiece with an empty continuation prefix over words that start with "▁".

Its preprocessing maps each codepoint on its own, in this order:
1. with strip_accents, to the first codepoint of its NFD decomposition (so a Hangul syllable
   becomes its leading consonant jamo, unlike NFD);
2. whitespace (llama.cpp's White_Space set) ends the word;
3. U+0000, U+FFFD and controls (Cc, Cf, Co, Cs) are dropped, and with strip_accents so are marks;
4. with lowercase, the simple (one-codepoint) lowercase mapping of UnicodeData;
5. punctuation (\\p{P}), ASCII symbols and CJK ideographs become words of their own.
This is a function from codepoint to text: a Replace deletes the codepoints it deletes, another
turns whitespace into " ", and a charsmap (charsmap.py) maps the ~16,000 others that change, in
one pass, over text cut into single-character grapheme clusters. Built-in normalizers differ:
BertNormalizer drops U+000B/U+000C/U+0085 as controls instead of splitting on them and
decomposes Hangul fully, NFD does the latter, and Lowercase applies the full mapping (U+0130
gains U+0307) of the Unicode version `tokenizers` was built with (newer than llama.cpp's tables,
so it lowercases letters llama.cpp leaves alone). The tables are llama.cpp's own (wpm_unicode.py, generated from them),
never the GGUF's, so nothing from the file reaches a pattern. tests/unit/test_tokenizer_wpm.py checks
every codepoint against llama.cpp's preprocessing.
"""

import base64
import functools

from rfc.compiler.tokenizer import wpm_unicode
from rfc.compiler.tokenizer.charsmap import build_charsmap

SPACE_MARK = "\u2581"  # "▁", the phantom space llama.cpp prepends to each word
_SURROGATES = range(0xD800, 0xE000)
# CJK ideograph blocks llama.cpp's WPM splits into single characters (is_chinese_char).
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))  # fmt: skip
# A control character: grapheme clusters always break before and after it.
_CLUSTER_BREAK = "\x01"
# llama.cpp bounds no word's length; WordPiece needs a bound, so one no text can reach.
_UNBOUNDED_WORD = 1 << 62


def _codepoints(ranges) -> set[int]:
    return {c for a, b in ranges for c in range(a, b + 1)}


def _ranges(codepoints) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in sorted(codepoints):
        if out and out[-1][1] == c - 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


@functools.cache
def _mapping(lowercase: bool, strip_accents: bool) -> dict[str, list[tuple[int, int]]]:
    """Every codepoint llama.cpp does not keep as itself, grouped by what it becomes (" " for
    whitespace, "" when dropped), as ranges."""
    whitespace = _codepoints(wpm_unicode.WHITESPACE)
    dropped = {0, 0xFFFD} | _codepoints(wpm_unicode.CONTROL)
    if strip_accents:
        dropped |= _codepoints(wpm_unicode.MARK)
    nfd = {c: n for a, b, n in wpm_unicode.NFD_FIRST for c in range(a, b + 1)} if strip_accents else {}
    lower = dict(wpm_unicode.LOWERCASE) if lowercase else {}
    by_result: dict[str, set[int]] = {}
    for c in whitespace | dropped | nfd.keys() | lower.keys():
        n = nfd.get(c, c)
        result = " " if n in whitespace else "" if n in dropped else chr(lower.get(n, n))
        if result != chr(c) and c not in _SURROGATES:
            by_result.setdefault(result, set()).add(c)
    return {result: _ranges(cs) for result, cs in by_result.items()}


def _char_class(ranges: list[tuple[int, int]]) -> str:
    """An Oniguruma character class of inclusive codepoint ranges."""
    return "[" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"


def _replace(regex: str, content: str) -> dict:
    return {"type": "Replace", "pattern": {"Regex": regex}, "content": content}


def normalizers(*, lowercase: bool, strip_accents: bool) -> list[dict]:
    mapping = _mapping(lowercase, strip_accents)
    # Deleted and whitespace codepoints by a Replace each; the ~16,000 others that change by a
    # charsmap, over text cut into one-character grapheme clusters by a control character
    # between every two characters (which the deletion before has taken out of the text).
    assert any(a <= ord(_CLUSTER_BREAK) <= b for a, b in mapping[""])
    steps = [_replace(_char_class(mapping[""]), ""), _replace(_char_class(mapping[" "]), " "),
             _replace(r"(?<=[\s\S])(?=[\s\S])", _CLUSTER_BREAK),
             {"type": "Precompiled", "precompiled_charsmap": _charsmap(lowercase, strip_accents)}]  # fmt: skip
    # A word that itself starts with "▁" still gets the phantom one ("▁▁x"): double it here, since
    # Metaspace below prepends "▁" only to words that do not start with one.
    starts = _char_class([(0x20, 0x20), *_isolated()])
    steps.append(_replace(f"(?:^|(?<={starts})){SPACE_MARK}", SPACE_MARK * 2))
    return steps


@functools.cache
def _charsmap(lowercase: bool, strip_accents: bool) -> str:
    singles = {chr(c): result for result, ranges in _mapping(lowercase, strip_accents).items()
               if len(result) == 1 and result != " " for a, b in ranges for c in range(a, b + 1)}  # fmt: skip
    singles[_CLUSTER_BREAK] = ""
    return base64.b64encode(build_charsmap(singles)).decode("ascii")


def _isolated() -> list[tuple[int, int]]:
    return sorted([*wpm_unicode.PUNCTUATION, *wpm_unicode.ASCII_SYMBOL, *_CJK])


def pre_tokenizers() -> list[dict]:
    return [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": _char_class(_isolated())}, "behavior": "Isolated", "invert": False},
        {"type": "Metaspace", "replacement": SPACE_MARK, "prepend_scheme": "always", "split": False},
    ]


def model(vocab: dict[str, int], unk: str) -> dict:
    return {"type": "WordPiece", "unk_token": unk, "continuing_subword_prefix": "",
            "max_input_chars_per_word": _UNBOUNDED_WORD, "vocab": vocab}  # fmt: skip


def decoder() -> dict:
    """Pieces joined, each "▁" a space, the first word's space dropped."""
    return {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ]}  # fmt: skip
