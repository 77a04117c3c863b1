"""The Unigram (`t5`) tokenizer's parts one by one: the charsmap's longest match and the compiler's
walk of it (a malformed one refused naming the key), the search's unknown-token score and runs,
user-defined pieces, and the runtime's refusal of a damaged spec. llama.cpp's own ids over a real
vocabulary are tests/unit/test_tokenizer_vectors.py's."""

import base64
import json
import struct

import pytest
from tokenizers import Tokenizer

from rfc.compiler.tokenizer import TokenizerError, build_tokenizer, unigram_spec
from rfc.compiler.tokenizer.charsmap import build_charsmap
from rfc.compiler.tokenizer.unigram import CHARSMAP_KEY, CharsmapError, check_charsmap
from rfc.runtime.model import ugm
from rfc.runtime.model.loader import tokenizer_from_json

SPACE = "\u2581"


def _vocab(pieces: list[tuple[str, float, int]], charsmap: bytes | None = None, **options) -> dict:
    """A `t5` vocabulary's metadata: <pad>, </s>, <unk> (llama.cpp's t5 defaults) and `pieces`."""
    tokens = [("<pad>", 0.0, 3), ("</s>", 0.0, 3), ("<unk>", 0.0, 2), *pieces]
    meta = {
        "tokenizer.ggml.model": "t5",
        "tokenizer.ggml.tokens": [t for t, _, _ in tokens],
        "tokenizer.ggml.scores": [s for _, s, _ in tokens],
        "tokenizer.ggml.token_type": [k for _, _, k in tokens],
        "tokenizer.ggml.add_eos_token": False,
        **{f"tokenizer.ggml.{k}": v for k, v in options.items()},
    }
    if charsmap is not None:
        meta[CHARSMAP_KEY] = list(charsmap)
    return meta


def _tokenizer(meta: dict) -> Tokenizer:
    text = build_tokenizer(meta)[0]
    tokenizer = Tokenizer.from_str(text)
    ugm.attach(tokenizer, json.loads(text), unigram_spec(meta))
    return tokenizer


def _ids(meta: dict, text: str) -> list[int]:
    return _tokenizer(meta).encode(text, add_special_tokens=False).ids


def test_the_charsmap_takes_the_longest_match_at_each_position():
    blob = build_charsmap({"ä": "ae", "Ａ": "A", "\u00a0": " "})
    charsmap = ugm.Charsmap(blob)
    assert charsmap.longest_match("xä".encode(), 1) == (2, b"ae")
    assert charsmap.longest_match("Ａb".encode(), 0) == (3, b"A")
    assert charsmap.longest_match(b"b", 0) == (0, b"")
    # the normalizer: mapped characters, then llama.cpp's whitespace rules (merged, one prefixed)
    meta = _vocab([(SPACE + "ae", -1.0, 1)], charsmap=blob, add_space_prefix=True, remove_extra_whitespaces=True)
    tok = ugm.UnigramTokenizer(*_pieces(meta), unigram_spec(meta), charsmap)
    assert tok.normalize("  ä\u00a0\u00a0Ａ  ") == f"{SPACE}ae{SPACE}A"


def _pieces(meta: dict) -> tuple[list[str], list[float]]:
    return meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]


def test_the_unknown_score_counts_normal_pieces_alone():
    """llama.cpp scores an unknown character the lowest *normal* piece's score less 10: an unused
    piece at -10000 (XLM-R has 46) does not lower it. Here 'ab' + unknown 'c' (-1 + -30) beats
    'a' + 'bc' (-40); with the unused piece counted, as `tokenizers`' Unigram counts it, the other
    way round."""
    pieces = [("ab", -1.0, 1), ("a", -20.0, 1), ("bc", -20.0, 1), ("zz", -10000.0, 5)]
    meta = _vocab(pieces)
    assert _ids(meta, "abc") == [3, 2]
    plain = Tokenizer.from_str(build_tokenizer(meta)[0])
    assert plain.encode("abc", add_special_tokens=False).ids == [4, 5]


def test_unknown_characters_in_a_row_are_one_unknown_token():
    meta = _vocab([("a", -1.0, 1), ("b", -1.0, 1)])
    assert _ids(meta, "a\u00e9\u00e8b\u00ea") == [3, 2, 4, 2]


def test_user_defined_pieces_score_zero():
    """A user-defined piece scores 0 in the search (normal pieces' scores are log probabilities),
    so the 'ae' the charsmap makes of 'ä' is that piece, not 'a' + 'e' (-2 against its own -50).
    Typed in the text, it is a special token of its own before any of this."""
    blob = build_charsmap({"ä": "ae"})
    meta = _vocab([("ae", -50.0, 4), ("a", -1.0, 1), ("e", -1.0, 1), ("x", -1.0, 1)], charsmap=blob)
    assert _ids(meta, "xä") == [6, 3]
    assert _ids(meta, "xae") == [6, 3]


def test_decoding_turns_the_escaped_spaces_back():
    meta = _vocab([(SPACE + "hello", -1.0, 1), (SPACE + "world", -1.0, 1), ("!", -1.0, 1)],
                  add_space_prefix=True, remove_extra_whitespaces=True)  # fmt: skip
    tok = _tokenizer(meta)
    ids = tok.encode("hello   world!", add_special_tokens=False).ids
    assert ids == [3, 4, 5]
    assert tok.decode(ids) == "hello world!"


def _mutated(blob: bytes, unit: int, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into("<I", out, 4 + 4 * unit, value)
    return bytes(out)


def test_a_malformed_charsmap_is_refused_naming_the_key():
    blob = build_charsmap({"ä": "ae", "b": "c"})
    check_charsmap(blob)
    size = int.from_bytes(blob[:4], "little")
    cases = {
        "short": blob[:3],
        "array past the end": struct.pack("<I", len(blob)) + blob[4:],
        "root outside": _mutated(blob, 0, (1 << 20) << 10),  # the root's children beyond the array
        "unterminated": blob[: 4 + size] + blob[4 + size :].replace(b"\0", b""),
        "not UTF-8": blob[: 4 + size] + blob[4 + size :].replace(b"ae", b"\xff\xfe"),
    }
    for what, bad in cases.items():
        with pytest.raises(CharsmapError, match=CHARSMAP_KEY.replace(".", r"\.")):
            check_charsmap(bad)
        with pytest.raises(TokenizerError, match=CHARSMAP_KEY):
            build_tokenizer(_vocab([("a", -1.0, 1)], charsmap=bad))
        assert what


def test_a_damaged_spec_or_charsmap_is_refused_at_load():
    meta = _vocab([("a", -1.0, 1)], charsmap=build_charsmap({"b": "a"}))
    text = build_tokenizer(meta)[0]
    spec = unigram_spec(meta)
    unscored = {k: v for k, v in spec.items() if k != "unknown_score"}
    for bad in ({**spec, "unknown_id": 99}, {**spec, "unmatched": ["x"]}, unscored):
        with pytest.raises(ugm.UnigramError):
            ugm.attach(Tokenizer.from_str(text), json.loads(text), bad)
    document = json.loads(text)
    document["normalizer"]["normalizers"][0]["precompiled_charsmap"] = base64.b64encode(b"\1\0\0\0").decode()
    with pytest.raises(ugm.UnigramError, match="does not fit"):
        ugm.attach(Tokenizer.from_str(text), document, spec)
    # the runtime's loader: the document without the model and normalizer the search replaces
    with pytest.raises(ugm.UnigramError, match="added tokens"):
        tokenizer_from_json(json.dumps({**json.loads(text), "added_tokens": "x"}), {"unigram": spec})


def test_the_loader_gives_the_search_the_added_tokens_ids():
    """The runtime loads a Unigram tokenizer.json without its Unigram model (ugm.shell): the
    special tokens keep their ids, the text its pieces, decoding its spaces."""
    meta = _vocab([(SPACE + "a", -1.0, 1), ("<mask>", 0.0, 4), (SPACE + "b", -2.0, 1)], add_space_prefix=True)
    tokenizer = tokenizer_from_json(build_tokenizer(meta)[0], {"unigram": unigram_spec(meta)})
    encoding = tokenizer.encode("a<mask>b", add_special_tokens=False)  # each stretch gets its space prefix
    assert encoding.ids == [3, 4, 5], encoding.ids
    assert tokenizer.decode(encoding.ids, skip_special_tokens=False) == "a<mask> b"
    assert tokenizer.token_to_id("<mask>") == 4 and tokenizer.id_to_token(5) == SPACE + "b"


def test_text_holding_the_separator_is_tokenized_as_any_unknown_text():
    """The search hands its pieces to `tokenizers` joined by a character no piece holds (U+FDD0
    here); the same character in the text is an unknown character like any other, one unknown
    token for a run of them."""
    meta = _vocab([("a", -1.0, 1), ("b", -1.0, 1)])
    assert _ids(meta, "a\ufdd0b") == [3, 2, 4]
    assert _ids(meta, "\ufdd0\ufdd0\ufdd1b\ufdd0") == [2, 4, 2]
    meta = _vocab([("a", -1.0, 1), ("\ufdd0x", -1.0, 1)])  # a piece holds U+FDD0: the next one separates
    assert _ids(meta, "\ufdd0xa\ufdd1") == [4, 3, 2]


@pytest.mark.shared
def test_copied_runs_and_kept_words_give_what_the_walk_at_each_character_does():
    """normalize copies runs of characters that begin no key of the charsmap (ASCII that begins a
    composition key, `A` of `A\\u0300`, where the next byte continues none) without walking the
    charsmap at each, and the search walks the pieces of a repeated word once: over XLM-R's
    vocabulary (nomic-bert-moe's: composition keys, control characters mapped alone) and random
    text of such characters, letters before combining marks, spaces, NUL, CJK and emoji (and of
    its pieces), the same text and tokens as the walk at every character gives."""
    import copy
    import random
    import re

    from rfc.compiler.gguf_reader import read_gguf
    from tests.conftest import VOCAB

    path = VOCAB / "ggml-vocab-nomic-bert-moe.gguf"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in {VOCAB}")
    meta = read_gguf(path).metadata
    document = json.loads(build_tokenizer(meta)[0])
    vocab = document["model"]["vocab"]
    fast = ugm.UnigramTokenizer(
        [e[0] for e in vocab], [e[1] for e in vocab], unigram_spec(meta), ugm._charsmap(document)
    )
    walk = copy.copy(fast)  # the same pieces (only normalize is compared)
    walk._plain = re.compile(b"(?!)")  # never matches: every character through the charsmap walk
    marks = ["\u0300", "\u0301", "\u0306", "\u0345", "\u3099"]  # combining: keys after a letter
    alphabet = [*"AaBbQq<=>09 .,\t\n\x00\x7f\x01", *marks, *"éй\u00a0ﬁＡ東か😀\u2581ßиάαب한ㄱक“—…ｶ①"]
    rng = random.Random(5)
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        for flags in ((True, True), (False, False), (True, False)):
            fast.add_space_prefix, fast.remove_extra_whitespaces = (
                walk.add_space_prefix,
                walk.remove_extra_whitespaces,
            ) = flags
            assert fast.normalize(text) == walk.normalize(text), (text, flags)
    assert fast.normalize("A\u0300bc") == walk.normalize("A\u0300bc") != walk.normalize("Abc")  # a key was taken
    # the search: each word's matches walked once and kept (no XLM-R piece holds a space past its
    # first character) against the walk at every position of the whole text
    assert fast._words_cut
    walk._words_cut = False
    pieces = [e[0] for e in vocab[1000:]]
    for _ in range(300):
        parts = [
            rng.choice(pieces) if rng.random() < 0.8 else rng.choice(alphabet) for _ in range(rng.randrange(1, 30))
        ]
        normalized = fast.normalize("".join(parts).replace(SPACE, " "))
        assert fast.pieces_of(normalized) == walk.pieces_of(normalized), normalized
    assert fast._word_cache and not walk._words_cut


def test_a_piece_holding_a_space_past_its_start_is_searched_across_words():
    """Where a piece holds an escaped space after its first character, words are not searched
    apart: the piece that spans two of them is found."""
    meta = _vocab([(SPACE + "a", -1.0, 1), (SPACE + "b", -1.0, 1), ("a" + SPACE + "b", -0.5, 1), (SPACE, -3.0, 1)])
    tokenizer = _tokenizer(meta)
    assert tokenizer.encode("a b", add_special_tokens=False).tokens == ["a" + SPACE + "b"]  # not <unk>, "▁b"
