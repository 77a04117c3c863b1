"""The tokenizer builder against llama.cpp's own tokenizer test vectors (tests/data/vocab), plus
BOS/EOS handling, end-of-generation ids, determinism and the errors it raises."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from tokenizers import Tokenizer

from rfc.compiler.tokenizer import TokenizerError, TokenizerInfo, build_tokenizer
from tests.conftest import DEMO_MODEL, VOCAB

FAMILIES = ("llama-spm", "llama-bpe", "qwen2", "phi-3", "gpt-2", "deepseek-llm", "deepseek-coder",
            "falcon", "starcoder", "mpt", "refact", "qwen35", "gemma-4")  # fmt: skip
VECTORS = {"qwen35": 50}  # test vectors per family (46 unless named: qwen35's add combining marks)

# llama.cpp's test-tokenizer-0 splits the .inp file on this; the file ends with it too.
SEPARATOR = "\n__ggml_vocab_test__\n"


# --- reading the vectors and the vocabularies ---------------------------------------------


def vocab_path(family: str) -> Path:
    return VOCAB / f"ggml-vocab-{family}.gguf"


def read_inputs(family: str) -> list[str]:
    text = vocab_path(family).with_suffix(".gguf.inp").read_text(encoding="utf-8")
    if family == "gemma-4":  # its .inp lacks the final separator (46 pieces, 46 .out lines)
        return text.split(SEPARATOR)
    assert text.endswith(SEPARATOR)
    return text[: -len(SEPARATOR)].split(SEPARATOR)


def read_expected(family: str) -> list[list[int]]:
    lines = vocab_path(family).with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    return [[int(i) for i in line.split()] for line in lines[:-1]]


def case_count(family: str) -> int:
    path = vocab_path(family).with_suffix(".gguf.inp")
    return len(read_inputs(family)) if path.is_file() else 0


CASES = [(family, i) for family in FAMILIES for i in range(case_count(family))]

# GGUF value types (gguf's GGUFValueType) as struct / numpy formats.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path) -> dict[str, object]:
    """The GGUF's key/value metadata, as `GGUFReader.fields[key].contents()` gives it.

    GGUFReader needs ~10 s for a 128k-token vocabulary (it builds one numpy view per string);
    this reads only the header, in well under a second. test_read_metadata_matches_gguf checks
    that both agree."""
    data = path.read_bytes()
    assert data[:4] == b"GGUF"
    _, _, n_kv = struct.unpack_from("<IQQ", data, 4)

    def string(pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", data, pos)
        return data[pos + 8 : pos + 8 + n].decode("utf-8"), pos + 8 + n

    def value(kind: int, pos: int) -> tuple[object, int]:
        if kind == _STRING:
            return string(pos)
        if kind == _ARRAY:
            item, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if item in _SCALAR:
                array = np.frombuffer(data, dtype=_SCALAR[item], count=count, offset=pos)
                return array.tolist(), pos + array.nbytes
            items = []
            for _ in range(count):
                v, pos = value(item, pos)
                items.append(v)
            return items, pos
        (v,) = struct.unpack_from(_SCALAR[kind], data, pos)
        return v, pos + struct.calcsize(_SCALAR[kind])

    metadata, pos = {}, 24
    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", data, pos)
        metadata[key], pos = value(kind, pos + 4)
    return metadata


_metadata_cache: dict[Path, dict] = {}
_built_cache: dict[str, tuple[str, TokenizerInfo, Tokenizer]] = {}


def metadata_of(path: Path) -> dict[str, object]:
    if path not in _metadata_cache:
        _metadata_cache[path] = read_metadata(path)
    return _metadata_cache[path]


def built(family: str) -> tuple[str, TokenizerInfo, Tokenizer]:
    """(tokenizer.json text, info, the tokenizer loaded from that text alone), once per family."""
    if family not in _built_cache:
        text, info = build_tokenizer(metadata_of(vocab_path(family)))
        _built_cache[family] = (text, info, Tokenizer.from_str(text))
    return _built_cache[family]


def stories_metadata() -> dict[str, object]:
    return dict(metadata_of(DEMO_MODEL))


# --- llama.cpp's vectors ------------------------------------------------------------------


@pytest.mark.shared
@pytest.mark.parametrize("family", FAMILIES)
def test_vectors_are_complete(family):
    assert len(read_inputs(family)) == len(read_expected(family)) == VECTORS.get(family, 46)


@pytest.mark.shared
@pytest.mark.parametrize(("family", "index"), CASES, ids=[f"{f}-{i}" for f, i in CASES])
def test_encodes_like_llama_cpp(family, index):
    _, _, tokenizer = built(family)
    text = read_inputs(family)[index]
    assert tokenizer.encode(text, add_special_tokens=False).ids == read_expected(family)[index], repr(text)


@pytest.mark.shared
@pytest.mark.parametrize("path", [DEMO_MODEL, VOCAB / "ggml-vocab-llama-spm.gguf"], ids=lambda p: p.stem)
def test_read_metadata_matches_gguf(path):
    reader = GGUFReader(path)
    expected = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert read_metadata(path) == expected


# --- what the builder reports and adds ----------------------------------------------------


@pytest.mark.shared
@pytest.mark.parametrize("family", ["llama-spm", "qwen2"])
def test_build_is_deterministic(family):
    text, info, _ = built(family)
    assert build_tokenizer(metadata_of(vocab_path(family))) == (text, info)


@pytest.mark.shared
def test_llama_spm_adds_bos_only_with_special_tokens():
    _, info, tokenizer = built("llama-spm")
    assert (info.model, info.bos_id, info.eos_id, info.unk_id) == ("llama", 1, 2, 0)
    assert info.add_bos and not info.add_eos
    assert tokenizer.encode("Hello world", add_special_tokens=True).ids == [1, 15043, 3186]
    assert tokenizer.encode("Hello world", add_special_tokens=False).ids == [15043, 3186]


@pytest.mark.shared
def test_byte_level_bos_follows_metadata():
    _, gpt2, gpt2_tokenizer = built("gpt-2")  # no add_bos_token key: byte-level default is off
    assert not gpt2.add_bos and gpt2_tokenizer.encode("Hello", add_special_tokens=True).ids == [15496]
    _, coder, coder_tokenizer = built("deepseek-coder")  # add_bos_token = true
    assert coder.add_bos and coder_tokenizer.encode("Hello", add_special_tokens=True).ids[0] == 32013


@pytest.mark.shared
@pytest.mark.parametrize(("family", "eog_ids"), [
    ("llama-spm", (2,)),  # </s>
    ("llama-bpe", (128001, 128009)),  # <|end_of_text|> (eos), <|eot_id|>
    ("phi-3", (2, 32000, 32007)),  # </s> (llama.cpp's list), <|endoftext|> (eos), <|end|>
    ("qwen2", (128247, 151643, 151645)),  # a normal-typed </s> llama.cpp makes control, <|endoftext|>, <|im_end|>
])  # fmt: skip
def test_eog_ids(family, eog_ids):
    assert built(family)[1].eog_ids == eog_ids


@pytest.mark.shared
@pytest.mark.parametrize(("family", "text", "ids"), [
    ("llama-bpe", "<|start_header_id|>user<|end_header_id|>", [128006, 882, 128007]),
    ("qwen2", "<|im_start|>user\nHi<|im_end|>", [151644, 872, 198, 13048, 151645]),
    ("phi-3", "<|user|>Hi<|end|>", [32010, 6324, 32007]),
])  # fmt: skip
def test_control_tokens_match_as_whole_tokens(family, text, ids):
    assert built(family)[2].encode(text, add_special_tokens=False).ids == ids


@pytest.mark.shared
def test_info_describes_vocabulary():
    _, info, tokenizer = built("qwen2")
    assert (info.model, info.pre, info.vocab_size, info.pad_id) == ("gpt2", "qwen2", 151936, 151643)
    assert tokenizer.get_vocab_size(with_added_tokens=True) == info.vocab_size
    assert tokenizer.id_to_token(151645) == "<|im_end|>"


# --- the embedded demo model ---------------------------------------------------------------


def test_stories260k_round_trips():
    text, info = build_tokenizer(stories_metadata())
    tokenizer = Tokenizer.from_str(text)
    prompt = "Once upon a time, there was a dragon"
    encoding = tokenizer.encode(prompt)
    assert info.vocab_size == 512 and info.eog_ids == (2,)
    assert encoding.tokens[:5] == ["<s>", "▁Once", "▁upon", "▁a", "▁time"]
    assert info.unk_id not in encoding.ids
    assert tokenizer.decode(encoding.ids) == prompt


def test_stories260k_falls_back_to_bytes():
    tokenizer = Tokenizer.from_str(build_tokenizer(stories_metadata())[0])
    text = "naïve 😀\n"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert 0 not in ids
    assert tokenizer.decode(ids) == text


def test_add_eos_appends_eos():
    metadata = stories_metadata() | {"tokenizer.ggml.add_eos_token": True}
    text, info = build_tokenizer(metadata)
    ids = Tokenizer.from_str(text).encode("Once").ids
    assert info.add_eos and ids[0] == 1 and ids[-1] == 2


def test_eot_token_id_is_end_of_generation():
    metadata = stories_metadata() | {"tokenizer.ggml.eot_token_id": 5}
    assert build_tokenizer(metadata)[1].eog_ids == (2, 5)


def test_json_is_a_tokenizer_file():
    document = json.loads(build_tokenizer(stories_metadata())[0])
    assert document["model"]["type"] == "BPE" and document["model"]["byte_fallback"]
    assert [t["content"] for t in document["added_tokens"] if t["special"]] == ["<unk>", "<s>", "</s>"]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["rwkv", "plamo2", "hybriddna", "none", "no-such-model"])
def test_unsupported_model_is_refused(model):
    metadata = stories_metadata() | {"tokenizer.ggml.model": model}
    with pytest.raises(TokenizerError, match=f"^unsupported tokenizer model '{model}': "):
        build_tokenizer(metadata)


def test_missing_tokenizer_is_refused():
    metadata = {k: v for k, v in stories_metadata().items() if k != "tokenizer.ggml.model"}
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model is missing"):
        build_tokenizer(metadata)


def byte_level_metadata(overrides: dict[str, object] | None = None) -> dict[str, object]:
    """A small, valid byte-level vocabulary: the 256 byte symbols and one merge."""
    from tokenizers import pre_tokenizers

    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["he", "<|endoftext|>"]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * (len(tokens) - 1) + [3],
        "tokenizer.ggml.merges": ["h e"],
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
    }
    return metadata | (overrides or {})


def test_small_byte_level_vocabulary_builds():
    text, info = build_tokenizer(byte_level_metadata())
    tokenizer = Tokenizer.from_str(text)
    assert tokenizer.encode("hehe<|endoftext|>").tokens == ["he", "he", "<|endoftext|>"]
    assert info.eog_ids == (257,) and not info.add_bos


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tokenizer.ggml.pre": "no-such-pre"}, "unsupported pre-tokenizer 'no-such-pre'"),
    ({"tokenizer.ggml.pre": "kimi-k2"}, "unsupported pre-tokenizer 'kimi-k2' .*Kimi-K2 splitter"),
    ({"tokenizer.ggml.pre": "afmoe"}, "unsupported pre-tokenizer 'afmoe' .*AFMoE splitter"),
    ({"tokenizer.ggml.pre": "whitespace"}, "lacks byte tokens"),
    ({"tokenizer.ggml.merges": []}, "without tokenizer.ggml.merges"),
    ({"tokenizer.ggml.merges": ["h x y"]}, "malformed merge 'h x y'"),
    ({"tokenizer.ggml.eos_token_id": 9999}, "outside the vocabulary"),
    ({"tokenizer.ggml.token_type": [1, 2]}, "tokenizer.ggml.token_type must be a list of 258"),
    ({"tokenizer.ggml.add_bos_token": True}, "no BOS token"),
])  # fmt: skip
def test_malformed_byte_level_vocabulary_is_refused(overrides, message):
    with pytest.raises(TokenizerError, match=message):
        build_tokenizer(byte_level_metadata(overrides))


def test_repeated_token_is_refused():
    metadata = stories_metadata()
    metadata["tokenizer.ggml.tokens"] = [*metadata["tokenizer.ggml.tokens"][:-1], "▁Once"]
    with pytest.raises(TokenizerError, match="twice"):
        build_tokenizer(metadata)


def test_spm_without_byte_tokens_is_refused():
    metadata = stories_metadata()
    metadata["tokenizer.ggml.tokens"] = [t.replace("<0x", "<x") for t in metadata["tokenizer.ggml.tokens"]]
    with pytest.raises(TokenizerError, match="byte tokens"):
        build_tokenizer(metadata)
