"""`rfc tokenizer` on llama.cpp's test vocabularies (test_tokenizer's families: the ones whose
.inp/.out vectors it reads): the written tokenizer.json, loaded with `tokenizers` alone, encodes
every test input to exactly llama.cpp's ids.

By default on one SentencePiece and one BPE family (CLI_DEFAULT): what the command adds to
tests/unit/test_tokenizer.py's test_encodes_like_llama_cpp, which holds the same tokenizer.json
text of every family to every vector, is writing it to a file; the other families are
`exhaustive`."""

import pytest
from tokenizers import Tokenizer

from tests.conftest import VOCAB, rfc
from tests.unit.test_tokenizer import FAMILIES, read_expected, read_inputs

pytestmark = [pytest.mark.shared, pytest.mark.slow]


CLI_DEFAULT = {"llama-spm", "llama-bpe"}


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=[] if f in CLI_DEFAULT else [pytest.mark.exhaustive]) for f in FAMILIES]
)
def test_rfc_tokenizer_output_matches_llama_cpp_vectors(family, tmp_path):
    out = tmp_path / "tokenizer.json"
    rfc("tokenizer", VOCAB / f"ggml-vocab-{family}.gguf", "-o", out, check=True)
    tok = Tokenizer.from_file(str(out))
    inputs, expected = read_inputs(family), read_expected(family)
    assert len(inputs) == len(expected)
    failures = [
        i
        for i, (text, ids) in enumerate(zip(inputs, expected))
        if tok.encode(text, add_special_tokens=False).ids != ids
    ]
    assert failures == [], f"{family}: inputs {failures} differ"


def test_rfc_tokenizer_refuses_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("nope")
    proc = rfc("tokenizer", bad, "-o", tmp_path / "t.json")
    assert proc.returncode == 2 and "not a GGUF" in proc.stderr
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize(("model", "words"), [("rwkv", "unsupported tokenizer model 'rwkv'"), ("t5", "Unigram")])
def test_rfc_tokenizer_refuses_what_a_tokenizer_json_cannot_say(model, words, tmp_path):
    """RWKV's tokenizer has no `tokenizers` equivalent; a Unigram vocabulary needs the runtime's
    search (a bundle's tokenizer.json and manifest together)."""
    from tests.conftest import DEMO_MODEL
    from tests.gguf_edit import rewrite_gguf

    model = rewrite_gguf(DEMO_MODEL, tmp_path / f"{model}.gguf", metadata={"tokenizer.ggml.model": model})
    proc = rfc("tokenizer", model, "-o", tmp_path / "t.json")
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "t.json").exists()


def test_rfc_tokenizer_marks_the_special_tokens_llama_cpp_strips_beside(tmp_path):
    """llama.cpp's own phi-3 vocabulary (its special tokens RSTRIP by name): the written tokenizer.json
    says rstrip for them, the nearest `tokenizers` can say, and the command says where it differs."""
    import json

    out = tmp_path / "tokenizer.json"
    proc = rfc("tokenizer", VOCAB / "ggml-vocab-phi-3.gguf", "-o", out, check=True)
    assert "ASCII whitespace" in proc.stderr
    rstrip = {t["content"] for t in json.loads(out.read_text())["added_tokens"] if t["rstrip"]}
    assert {"</s>", "<|user|>", "<|end|>"} <= rstrip and not rstrip & {"<s>", "<unk>", "<|endoftext|>"}
    tok = Tokenizer.from_file(str(out))
    assert tok.encode("<|user|>\nHello<|end|>", add_special_tokens=False).ids == [32010, 15043, 32007]  # llama.cpp's
