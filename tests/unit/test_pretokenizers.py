"""Every llama.cpp pre-tokenizer against llama.cpp's own splitter: the words that
tokenizers' pre-tokenizer gives equal the words of llama.cpp's unicode_regex_split over the
fixture inputs (tests/fixtures/tokenizer/pre-tokenizers.json, made by
tools/make_tokenizer_vectors.py), and every `tokenizer.ggml.pre` name selects the same type
and flags as in llama.cpp's loader."""

import json
from functools import cache
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from rfc.compiler.tokenizer.pretokenizers import PRE_NAMES, PRE_TYPES, UNSUPPORTED_TYPES, pre_tokenizers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer"
INPUTS: list[str] = json.loads((FIXTURES / "inputs.json").read_text(encoding="utf-8"))
GROUPS: list[dict] = json.loads((FIXTURES / "pre-tokenizers.json").read_text(encoding="utf-8"))
LLAMA_NAMES = {name: (group["types"], flags) for group in GROUPS for name, flags in group["names"].items()}


@cache
def splitter(pre_type: str):
    document = {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []},
                "pre_tokenizer": {"type": "Sequence",
                                  "pretokenizers": pre_tokenizers(PRE_TYPES[pre_type])}}  # fmt: skip
    return Tokenizer.from_str(json.dumps(document)).pre_tokenizer


def _marks(group: dict) -> list:
    # A refused type is expected to differ: if it ever matches, it can be supported.
    refused = UNSUPPORTED_TYPES.get(group["types"][0])
    return [pytest.mark.xfail(reason=refused, strict=True)] if refused else []


@pytest.mark.parametrize("group", [pytest.param(g, id=g["types"][0], marks=_marks(g)) for g in GROUPS])
def test_splits_like_llama_cpp(group):
    pre_type = group["types"][0]
    assert all(PRE_TYPES[t] == PRE_TYPES[pre_type] for t in group["types"]), "types llama.cpp splits alike differ here"
    pre = splitter(pre_type)
    checked, failures = 0, []
    for text, words in zip(INPUTS, group["words"]):
        if words is None:  # llama.cpp aborts on this text
            continue
        checked += 1
        ours = [piece for piece, _ in pre.pre_tokenize_str(text)]
        if ours != [w for w in words if w]:
            failures.append((text, ours, words))
    assert checked >= len(INPUTS) - 2
    assert not failures, f"{len(failures)}/{checked} differ, first: {failures[0]!r}"


@pytest.mark.parametrize("name", sorted(LLAMA_NAMES))
def test_name_selects_llama_cpp_type_and_flags(name):
    types, flags = LLAMA_NAMES[name]
    ours = PRE_NAMES[name]
    assert ours.pre_type in types
    assert ours.ignore_merges == flags.get("ignore_merges", False)
    assert ours.escape_whitespaces == flags.get("escape_whitespaces", False)
    assert ours.add_bos == flags.get("add_bos", False)


def test_no_name_beyond_llama_cpp():
    assert set(PRE_NAMES) == set(LLAMA_NAMES)
