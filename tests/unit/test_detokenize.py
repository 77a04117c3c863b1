"""The detokenizer against two small tokenizers built here: a SentencePiece-style BPE with
byte fallback (<0xNN> tokens, like Llama's), and a GPT-2-style byte-level BPE."""

import random

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from rfc.runtime.text.detokenize import IncrementalDetokenizer

REPLACEMENT = "\ufffd"
SAMPLE_WORDS = [
    "Once",
    "upon",
    "a",
    "time",
    "there",
    "was",
    "the",
    "cat",
    "€",
    "世界",
    "😀",
    "café",
    "naïve",
    "x",
    "Ω",
    "!",
]


def _add_chain_merges(words, vocab):
    """Merges that build each word left to right, adding every partial word to `vocab`."""
    merges = []
    for word in words:
        for i in range(2, len(word) + 1):
            if word[:i] not in vocab:
                vocab[word[:i]] = len(vocab)
                merges.append((word[: i - 1], word[i - 1]))
    return merges


def build_sentencepiece_tokenizer() -> Tokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,!'":
        vocab[c] = len(vocab)
    merges = _add_chain_merges(["▁Once", "▁upon", "▁a", "▁time", "▁there", "▁was", "▁the", "her"], vocab)
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return tokenizer


def build_byte_level_tokenizer() -> Tokenizer:
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    mapped = [pre.pre_tokenize_str(w)[0][0] for w in [" the", " cat", "世界"]]
    euro = pre.pre_tokenize_str("€")[0][0]
    # "€" becomes two tokens (2 bytes + 1 byte); one token holds the end of 世 and start of 界.
    mapped += [euro[:2], pre.pre_tokenize_str("世界")[0][0][2:4]]
    tokenizer = Tokenizer(models.BPE(vocab, _add_chain_merges(mapped, vocab)))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tokenizer


@pytest.fixture(scope="module")
def sp():
    return build_sentencepiece_tokenizer()


@pytest.fixture(scope="module")
def byte_level():
    return build_byte_level_tokenizer()


def stream(tokenizer, ids, prompt_ids=(), **kwargs):
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, **kwargs)
    deltas = [detok.push(i) for i in ids]
    return deltas, detok.flush()


def random_text(rng: random.Random) -> str:
    return " ".join(rng.choices(SAMPLE_WORDS, k=rng.randint(1, 12)))


def test_byte_fallback_tokens_join_into_one_character(sp):
    ids = [sp.token_to_id(t) for t in ["<0xE2>", "<0x82>", "<0xAC>"]]
    assert sp.decode(ids) == "€"
    assert stream(sp, ids) == (["", "", "€"], "")


def test_four_byte_character_split_over_four_tokens(sp):
    ids = sp.encode("a 😀", add_special_tokens=False).ids
    deltas, tail = stream(sp, ids)
    assert "".join(deltas) == "a 😀" and tail == ""
    assert deltas[-4:] == ["", "", "", "😀"]  # "▁" is a token of its own


@pytest.mark.parametrize("which", ["sp", "byte_level"])
@pytest.mark.parametrize("seed", range(10))
def test_streaming_valid_text_equals_full_decode_without_replacement_chars(which, seed, request):
    tokenizer = request.getfixturevalue(which)
    rng = random.Random(seed)
    text = random_text(rng)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    deltas, tail = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert tail == ""
    assert not any(REPLACEMENT in d for d in deltas)


@pytest.mark.parametrize("seed", range(10))
def test_byte_level_random_ids_equal_full_decode(byte_level, seed):
    rng = random.Random(seed)
    special = set(byte_level.get_added_tokens_decoder())
    pool = [i for i in range(byte_level.get_vocab_size()) if i not in special]
    ids = rng.choices(pool, k=200)
    deltas, tail = stream(byte_level, ids)
    assert "".join(deltas) + tail == byte_level.decode(ids)


def random_byte_fallback_ids(tokenizer, rng: random.Random) -> list[int]:
    """Words, whole characters as byte tokens, and characters cut short between two words."""
    words = [tokenizer.token_to_id(t) for t in ["▁Once", "▁upon", "▁a", "▁there", "her", "x", "▁"]]
    ids = []
    for _ in range(40):
        char = rng.choice("€世😀éΩ").encode()
        as_bytes = [tokenizer.token_to_id(f"<0x{b:02X}>") for b in char]
        kind = rng.choice(["word", "char", "cut"])
        if kind == "word":
            ids.append(rng.choice(words))
        elif kind == "char":
            ids.extend(as_bytes)
        else:  # a run of byte tokens decodes as one group: keep the cut character alone in its run
            ids.extend([rng.choice(words), *as_bytes[: rng.randint(1, len(as_bytes) - 1)], rng.choice(words)])
    return ids


@pytest.mark.parametrize("seed", range(10))
def test_byte_fallback_cut_characters_match_full_decode(sp, seed):
    ids = random_byte_fallback_ids(sp, random.Random(seed))
    deltas, tail = stream(sp, ids)
    assert "".join(deltas) + tail == sp.decode(ids)
    assert REPLACEMENT in sp.decode(ids)  # the case under test did come up


@pytest.mark.parametrize("seed", range(5))
def test_byte_fallback_random_ids_never_fail(sp, seed):
    # A run of byte tokens that turns invalid after a valid character was emitted decodes,
    # in one shot, as U+FFFD for every byte: no stream can take back what it emitted, so
    # only check that arbitrary ids stream without error.
    rng = random.Random(seed)
    ids = rng.choices(range(3, sp.get_vocab_size()), k=300)
    deltas, tail = stream(sp, ids)
    assert all(isinstance(d, str) for d in deltas) and isinstance(tail, str)


def test_first_generated_token_keeps_its_leading_space(sp):
    prompt = sp.encode("Once upon a time", add_special_tokens=False).ids
    there = sp.token_to_id("▁there")
    assert stream(sp, [there], prompt) == ([" there"], "")
    assert stream(sp, [there], [sp.token_to_id("<s>"), *prompt]) == ([" there"], "")
    # With no prompt the text starts with this token: a full decode drops the space too.
    assert stream(sp, [there]) == (["there"], "")


@pytest.mark.parametrize("which", ["sp", "byte_level"])
@pytest.mark.parametrize("seed", range(10))
def test_continuation_of_a_prompt_matches_full_decode(which, seed, request):
    tokenizer = request.getfixturevalue(which)
    rng = random.Random(seed)
    prompt = tokenizer.encode(random_text(rng), add_special_tokens=False).ids
    generated = tokenizer.encode(" " + random_text(rng), add_special_tokens=False).ids
    if which == "sp":
        generated = generated[1:] if tokenizer.id_to_token(generated[0]) == "▁" else generated
    deltas, tail = stream(tokenizer, generated, prompt)
    full = tokenizer.decode(prompt + generated)
    assert "".join(deltas) + tail == full[len(tokenizer.decode(prompt)) :]


def test_special_tokens_are_skipped_or_kept(sp):
    ids = [sp.token_to_id(t) for t in ["▁Once", "</s>", "▁upon"]]
    assert stream(sp, ids) == (["Once", "", " upon"], "")
    assert "".join(stream(sp, ids, skip_special_tokens=False)[0]) == sp.decode(ids, skip_special_tokens=False)


def test_incomplete_bytes_at_the_end_come_out_as_replacement_on_flush(sp):
    ids = [sp.token_to_id("▁a"), sp.token_to_id("<0xE2>"), sp.token_to_id("<0x82>")]
    deltas, tail = stream(sp, ids)
    assert deltas == ["a", "", ""]
    assert tail.replace(REPLACEMENT, "") == "" and tail != ""


def test_incomplete_bytes_before_valid_text(sp):
    ids = [sp.token_to_id("<0xE2>"), sp.token_to_id("▁a")]
    deltas, tail = stream(sp, ids)
    assert "".join(deltas) + tail == sp.decode(ids)


class RecordingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call sees."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.lengths = []

    def get_added_tokens_decoder(self):
        return self.tokenizer.get_added_tokens_decoder()

    def decode(self, ids, skip_special_tokens=True):
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_window_stays_short_for_long_outputs(sp):
    recording = RecordingTokenizer(sp)
    prompt = sp.encode("Once upon a time " * 50, add_special_tokens=False).ids
    ids = sp.encode(" ".join(["there was 😀 the cat"] * 200), add_special_tokens=False).ids
    deltas, _ = stream(recording, ids, prompt)
    assert len(ids) > 2000
    assert max(recording.lengths) <= 10


def test_window_stays_short_for_a_run_of_invalid_bytes(sp):
    recording = RecordingTokenizer(sp)
    ids = [sp.token_to_id("<0x80>")] * 500
    deltas, tail = stream(recording, ids)
    assert max(recording.lengths) <= 16
    assert "".join(deltas) + tail == REPLACEMENT * 500
    assert sum(len(d) for d in deltas) > 400  # emitted along the way, not only at the end


def test_continuation_after_bos_only_keeps_its_leading_space(sp):
    """As llama.cpp prints a generation from BOS alone: " a 😀", not "a 😀"."""
    ids = sp.encode("a 😀", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(sp, (), keep_leading_space=True)
    text = "".join(detok.push(i) for i in ids) + detok.flush()
    assert text == " a 😀"
