"""The WordPiece ("bert") tokenizer.json against llama.cpp's WPM preprocessing on every codepoint.

The reference below restates llm_tokenizer_wpm_session::preprocess (src/llama-vocab.cpp) over
llama.cpp's own Unicode tables (src/unicode-data.cpp: categories, White_Space, simple lowercase,
first codepoint of NFD), so the test needs llama.cpp's source and skips, saying so, without it.
The 119 llama.cpp vectors (test_tokenizer_vectors.py) cover whole tokenization; this covers
the character classes, which a few inputs cannot."""

import json
import random
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer, normalizers

from rfc.compiler.tokenizer import TokenizerError, build_tokenizer, wpm
from rfc.compiler.tokenizer.charsmap import build_charsmap
from rfc.runtime.text.detokenize import IncrementalDetokenizer
from tests.unit.test_tokenizer_vectors import gguf_path
from tests.unit.test_tokenizer import metadata_of

UNICODE_DATA = Path("/tmp/llama.cpp-build/src/src/unicode-data.cpp")
MAX_CODEPOINT = 0x110000
MARK, PUNCTUATION, SYMBOL, CONTROL = 0x10, 0x20, 0x40, 0x80


class LlamaUnicode:
    """llama.cpp's tables, read from its generated source."""

    def __init__(self, source: str):
        def block(name: str) -> str:
            start = source.index(name)
            return source[start : source.index("};", start)]

        pairs = r"\{(0x[0-9A-F]+), (0x[0-9A-F]+)\}"
        starts = [(int(a, 16), int(f, 16)) for a, f in re.findall(pairs, block("unicode_ranges_flags"))]
        self.flags = [0] * MAX_CODEPOINT
        for (start, value), (end, _) in zip(starts, starts[1:]):
            self.flags[start:end] = [value] * (end - start)
        self.whitespace = {int(x, 16) for x in re.findall(r"0x[0-9A-F]+", block("unicode_set_whitespace"))}
        self.lower = {int(a, 16): int(b, 16) for a, b in re.findall(pairs, block("unicode_map_lowercase"))}
        self.nfd = {}
        triples = r"\{(0x[0-9A-F]+), (0x[0-9A-F]+), (0x[0-9A-F]+)\}"
        for a, b, n in re.findall(triples, block("unicode_ranges_nfd")):
            self.nfd.update(dict.fromkeys(range(int(a, 16), int(b, 16) + 1), int(n, 16)))

    def words(self, text: str, lowercase: bool, strip_accents: bool) -> list[str]:
        """llama.cpp's WPM preprocess: the words of `text`."""
        cpts = [ord(c) for c in text]
        if strip_accents:
            cpts = [self.nfd.get(c, c) for c in cpts]
        words = [""]
        for cpt in cpts:
            flags = self.flags[cpt]
            if cpt in self.whitespace:
                if words[-1]:
                    words.append("")
                continue
            if cpt in (0, 0xFFFD) or flags & CONTROL or (strip_accents and flags & MARK):
                continue
            s = chr(self.lower.get(cpt, cpt) if lowercase else cpt)
            if self.is_isolated(cpt):
                if words[-1]:
                    words.append("")
                words[-1] = s
                words.append("")
            else:
                words[-1] += s
        return [w for w in words if w]

    def is_isolated(self, cpt: int) -> bool:
        """Whether llama.cpp makes the codepoint a word of its own."""
        flags = self.flags[cpt]
        return bool(flags & PUNCTUATION or (cpt < 0x7F and flags & SYMBOL) or _is_chinese(cpt))


def _is_chinese(cpt: int) -> bool:
    return any(a <= cpt <= b for a, b in wpm._CJK)


@pytest.fixture(scope="module")
def llama_unicode() -> LlamaUnicode:
    if not UNICODE_DATA.is_file():
        pytest.skip(f"llama.cpp's Unicode tables are not at {UNICODE_DATA}")
    return LlamaUnicode(UNICODE_DATA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bge_metadata() -> dict:
    return dict(metadata_of(gguf_path("ggml-vocab-bert-bge.gguf")))


MODES = [(True, True), (True, False), (False, False)]  # (lowercase, strip_accents)


@pytest.mark.parametrize(("lowercase", "strip_accents"), MODES)
def test_each_codepoint_maps_as_in_llama_cpp(llama_unicode, lowercase, strip_accents):
    """wpm's codepoint map (what the Replace steps and the charsmap do) and split classes, for every codepoint."""
    result = {c: r for r, ranges in wpm._mapping(lowercase, strip_accents).items()
              for a, b in ranges for c in range(a, b + 1)}  # fmt: skip
    isolated = {c for a, b in wpm._isolated() for c in range(a, b + 1)}
    failures = []
    for c in range(MAX_CODEPOINT):
        if 0xD800 <= c <= 0xDFFF:
            continue
        words = llama_unicode.words(chr(c), lowercase, strip_accents)
        ours = result.get(c, chr(c))
        expected = "" if not words else words[0]
        if ours.strip() != expected:
            failures.append(c)
        elif len(ours) == 1 and ours != " ":
            n = llama_unicode.nfd.get(c, c) if strip_accents else c
            if (ord(ours) in isolated) != llama_unicode.is_isolated(n):
                failures.append(c)
    assert not failures, f"{len(failures)} codepoints differ, first: {[hex(c) for c in failures[:8]]}"


@pytest.mark.parametrize(("lowercase", "strip_accents"), MODES)
def test_words_match_llama_cpp(llama_unicode, bge_metadata, lowercase, strip_accents):
    """The normalizer and pre-tokenizer, on a sample of codepoints in and at the start of words."""
    metadata = bge_metadata | {"tokenizer.ggml.normalizer.lowercase": lowercase,
                               "tokenizer.ggml.normalizer.strip_accents": strip_accents}  # fmt: skip
    tokenizer = Tokenizer.from_str(build_tokenizer(metadata)[0])
    codepoints = [c for c in [*range(0, 0x3000), *range(0x3000, MAX_CODEPOINT, 41)] if not 0xD800 <= c <= 0xDFFF]
    text = " ".join(f"x{chr(c)}y{chr(c)}\u2581z" for c in codepoints)
    normalized = tokenizer.normalizer.normalize_str(text)
    ours = [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]
    expected = [wpm.SPACE_MARK + w for w in llama_unicode.words(text, lowercase, strip_accents)]
    assert len(ours) == len(expected)
    assert [(a, b) for a, b in zip(ours, expected) if a != b][:5] == []


def test_decode_joins_pieces(bge_metadata):
    tokenizer = Tokenizer.from_str(build_tokenizer(bge_metadata)[0])
    encoding = tokenizer.encode("Hello, world! camelCase")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert tokenizer.decode(encoding.ids) == "hello , world ! camelcase"


def test_words_starting_with_the_space_mark_keep_both(bge_metadata):
    """llama.cpp tokenizes the word "▁x" as "▁▁x" (no such piece here: [UNK]), and "a▁x" as "▁a▁x"."""
    tokenizer = Tokenizer.from_str(build_tokenizer(bge_metadata)[0])
    assert tokenizer.encode("\u2581hello", add_special_tokens=False).tokens == ["[UNK]"]
    assert tokenizer.encode("a\u2581hello", add_special_tokens=False).tokens == ["\u2581a", "\u2581hello"]


def test_options_follow_llama_cpp(bge_metadata):
    """strip_accents follows lowercase unless the GGUF sets it."""
    cased = Tokenizer.from_str(build_tokenizer(bge_metadata | {"tokenizer.ggml.normalizer.lowercase": False})[0])
    assert cased.normalizer.normalize_str("Café") == "Café"
    default = Tokenizer.from_str(build_tokenizer(bge_metadata)[0])
    assert default.normalizer.normalize_str("Café 한") == "cafe \u1112"
    assert json.loads(build_tokenizer(bge_metadata)[0])["model"]["continuing_subword_prefix"] == ""


def test_charsmap_maps_single_characters_and_leaves_the_rest():
    mapping = {"A": "a", "É": "e", "\U0001d400": "x", "\x01": "", "한": "\u1112"}
    normalizer = normalizers.Precompiled(build_charsmap(mapping))
    text = "\x01".join("AÉ\U0001d400한bc\U0001f600ÿ")
    assert normalizer.normalize_str(text) == "aex\u1112bc\U0001f600ÿ"
    rng = random.Random(0)
    for _ in range(200):  # a lookup never reads past the array
        sample = "".join(chr(rng.choice([rng.randrange(0x80), rng.randrange(0x80, 0x10000),
                                         rng.randrange(0x10000, 0x110000)])) for _ in range(8))  # fmt: skip
        sample = "".join(c for c in sample if not 0xD800 <= ord(c) <= 0xDFFF)
        normalizer.normalize_str(sample)


def test_streaming_detokenization_joins_pieces(bge_metadata):
    tokenizer = Tokenizer.from_str(build_tokenizer(bge_metadata)[0])
    ids = tokenizer.encode("Streaming, piece by piece: tokenization works!").ids
    detokenizer = IncrementalDetokenizer(tokenizer)
    streamed = "".join(detokenizer.push(i) for i in ids) + detokenizer.flush()
    assert streamed == tokenizer.decode(ids) == "streaming , piece by piece : tokenization works !"


def small_bert_metadata(**overrides) -> dict:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "\u2581hello", "\u2581world", "ing", "\u2581!"]
    return {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3, 2, 3, 3, 1, 1, 1, 1], "tokenizer.ggml.bos_token_id": 2,
            "tokenizer.ggml.seperator_token_id": 3, "tokenizer.ggml.unknown_token_id": 1} | overrides  # fmt: skip


def test_small_vocabulary_with_its_own_ids():
    text, info = build_tokenizer(small_bert_metadata())
    tokenizer = Tokenizer.from_str(text)
    assert tokenizer.encode("Hello worlding! foo").tokens == [
        "[CLS]", "\u2581hello", "\u2581world", "ing", "\u2581!", "[UNK]", "[SEP]"]  # fmt: skip
    assert (info.model, info.bos_id, info.unk_id, info.add_bos, info.add_eos) == ("bert", 2, 1, True, False)


def test_default_ids_outside_the_vocabulary_are_refused():
    metadata = small_bert_metadata()
    del metadata["tokenizer.ggml.unknown_token_id"]  # llama.cpp's default 100
    with pytest.raises(TokenizerError, match="unknown_token_id = 100 is outside the vocabulary"):
        build_tokenizer(metadata)
