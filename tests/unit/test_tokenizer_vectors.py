"""Every vocabulary llama.cpp ships for its tokenizer tests, tokenized by the tokenizer.json rfc
builds and by llama.cpp (ids in tests/fixtures/tokenizer/vocab-*.json, made by
tools/make_tokenizer_vectors.py over tests/fixtures/tokenizer/inputs.json). Vocabularies of a
model rfc refuses must be refused, naming why. The GGUFs are in tests/data/vocab."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from rfc.compiler.tokenizer import TokenizerError, build_tokenizer
from tests.conftest import VOCAB
from tests.unit.test_tokenizer import metadata_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer"
INPUTS: list[str] = json.loads((FIXTURES / "inputs.json").read_text(encoding="utf-8"))
CASES = sorted(p.stem[len("vocab-") :] for p in FIXTURES.glob("vocab-*.json"))

# Vocabularies whose tokenizer model rfc refuses, and the words the refusal must contain.
# nomic-bert-moe is a t5 (Unigram) vocabulary: see UNSUPPORTED_MODELS["t5"] for what differs.
REFUSED = {"nomic-bert-moe": "unsupported tokenizer model 't5'.*grapheme"}


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
    tokenizer = Tokenizer.from_str(build_tokenizer(metadata)[0])
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
