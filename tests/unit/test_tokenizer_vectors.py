"""Every vocabulary llama.cpp ships for its tokenizer tests, tokenized by the tokenizer.json rfc
builds and by llama.cpp (ids in tests/fixtures/tokenizer/vocab-*.json, made by
tools/make_tokenizer_vectors.py over tests/fixtures/tokenizer/inputs.json). Vocabularies of a
model rfc refuses must be refused, naming why. A Unigram (`t5`) vocabulary is tokenized as the
runtime loads it (runtime/model/ugm.py on the manifest's tokenizer.unigram; special tokens that eat
the whitespace beside them, runtime/model/special_strip.py on tokenizer.strip), and also checked on
unigram.json: inputs for what only Unigram does, under each setting of its two whitespace
options. The GGUFs are in tests/data/vocab."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from rfc.compiler.tokenizer import TokenizerError, build_tokenizer, strip_spec, unigram_spec
from rfc.runtime.model.loader import tokenizer_from_json
from tests.conftest import VOCAB
from tests.unit.test_tokenizer import metadata_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer"
INPUTS: list[str] = json.loads((FIXTURES / "inputs.json").read_text(encoding="utf-8"))
CASES = sorted(p.stem[len("vocab-") :] for p in FIXTURES.glob("vocab-*.json"))

# Vocabularies whose tokenizer model rfc refuses, and the words the refusal must contain.
REFUSED: dict[str, str] = {}
UNIGRAM = json.loads((FIXTURES / "unigram.json").read_text(encoding="utf-8"))


def gguf_path(name: str) -> Path:
    if not (VOCAB / name).is_file():
        pytest.skip(f"{name} is not in {VOCAB} (tests/data/vocab)")
    return VOCAB / name


@pytest.mark.parametrize("case", CASES)
def test_vocabulary_tokenizes_like_llama_cpp(case):
    record = json.loads((FIXTURES / f"vocab-{case}.json").read_text(encoding="utf-8"))
    metadata = dict(metadata_of(gguf_path(record["vocab"]))) | record["overrides"]
    if case in REFUSED:
        with pytest.raises(TokenizerError, match=REFUSED[case]):
            build_tokenizer(metadata)
        return
    tokenizer = runtime_tokenizer(metadata)
    checked, failures = 0, []
    for text, ids in zip(INPUTS, record["ids"], strict=True):
        if ids is None:  # llama.cpp aborts on this text
            continue
        checked += 1
        ours = tokenizer.encode(text, add_special_tokens=False).ids
        if ours != [int(i) for i in ids.split()]:
            failures.append((text, ours, ids))
    assert checked == len(INPUTS)
    assert not failures, f"{len(failures)}/{checked} differ, first: {failures[0]!r}"


def runtime_tokenizer(metadata: dict) -> Tokenizer:
    """The tokenizer the runtime loads from a bundle compiled from `metadata`."""
    text = build_tokenizer(metadata)[0]
    entry = {"unigram": unigram_spec(metadata), "strip": strip_spec(metadata)}
    return tokenizer_from_json(text, {k: v for k, v in entry.items() if v is not None})


@pytest.fixture(scope="module")
def unigram_metadata() -> dict:
    return dict(metadata_of(gguf_path(UNIGRAM["vocab"])))


@pytest.mark.parametrize("setting", range(len(UNIGRAM["settings"])))
def test_unigram_tokenizes_like_llama_cpp_under_each_whitespace_option(setting, unigram_metadata):
    record = UNIGRAM["settings"][setting]
    tokenizer = runtime_tokenizer(unigram_metadata | record["overrides"])
    failures = []
    for text, ids in zip(UNIGRAM["inputs"], record["ids"], strict=True):
        if (ours := tokenizer.encode(text, add_special_tokens=False).ids) != [int(i) for i in ids.split()]:
            failures.append((text, ours, ids))
    assert len(UNIGRAM["inputs"]) == 432
    assert not failures, f"{len(failures)}/{len(UNIGRAM['inputs'])} differ, first: {failures[0]!r}"


def test_tokenizers_own_unigram_would_differ(unigram_metadata):
    """What the runtime's search changes: the tokenizer.json on its own (`tokenizers`' Unigram model
    and Precompiled normalizer) misses llama.cpp's ids on inputs the runtime gets right."""
    plain = Tokenizer.from_str(build_tokenizer(unigram_metadata)[0])
    record = next(r for r in UNIGRAM["settings"] if all(r["overrides"].values()))  # XLM-R's options
    missed = sum(plain.encode(text, add_special_tokens=False).ids != [int(i) for i in ids.split()]
                 for text, ids in zip(UNIGRAM["inputs"], record["ids"], strict=True))  # fmt: skip
    assert missed >= 50
