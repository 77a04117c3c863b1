"""Special tokens that eat the ASCII whitespace beside them (LSTRIP / RSTRIP, which llama.cpp's loader
sets by the file's names): compiled into the manifest's tokenizer.strip and applied by the runtime's
loader (runtime/model/special_strip.py). llama.cpp's own ids for such vocabularies are checked in
test_tokenizer_vectors.py (phi-3, qwen2-as-phi3, bert-bge-as-modern-bert); here, a bundle."""

import json

import pytest

from rfc.artifacts.bundle import open_bundle
from rfc.compiler.errors import CompileError
from rfc.compiler.pipeline import CompileOptions, compile_model
from rfc.runtime.model.loader import load_tokenizer
from rfc.runtime.model.special_strip import StripError
from tests.conftest import DEMO_MODEL
from tests.gguf_edit import rewrite_gguf

CONTROL = 3  # llama.cpp's token type


def _phi3_named(tmp_path, endoftext: bool = True):
    """The demo model under a Phi-3 name (llama.cpp's loader then marks its special tokens RSTRIP),
    with a control token "<|endoftext|>" in place of an ordinary one where `endoftext`."""
    from gguf import GGUFReader

    fields = GGUFReader(DEMO_MODEL).fields
    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    types = list(fields["tokenizer.ggml.token_type"].contents())
    edits = {"general.name": "Phi3 Mini Test"}
    if endoftext:
        tokens[500], types[500] = "<|endoftext|>", CONTROL
        edits |= {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
    return rewrite_gguf(DEMO_MODEL, tmp_path / "phi3-named.gguf", edits), tokens


def test_a_phi3_named_bundle_strips_ascii_whitespace_after_its_special_tokens(tmp_path):
    gguf, tokens = _phi3_named(tmp_path)
    compile_model(CompileOptions(model=gguf, out_dir=tmp_path / "b", targets=(), cache_dir=None))
    bundle = open_bundle(tmp_path / "b")
    ids = {t: i for i, t in enumerate(tokens)}
    strip = bundle.manifest["tokenizer"]["strip"]
    assert strip["lstrip"] == [] and ids["</s>"] in strip["rstrip"]
    assert not {ids["<s>"], ids["<unk>"], ids["<|endoftext|>"]} & set(strip["rstrip"])  # llama.cpp clears these
    assert not json.loads(bundle.file("tokenizer.json").read_text())["added_tokens"][0]["rstrip"]
    tokenizer = load_tokenizer(bundle)

    def ids_of(text):
        return tokenizer.encode(text, add_special_tokens=False).ids

    assert ids_of("a </s> \t\n b") == ids_of("a </s>b") != ids_of("a </s> b".replace("</s> ", "</s>\u00a0"))
    assert ids_of("x </s>   \n") == ids_of("x </s>")  # stripped to nothing: no "▁" for it
    assert ids_of("<s> b") != ids_of("<s>b")  # <s> keeps the space after it
    assert ids_of("<|endoftext|> b") != ids_of("<|endoftext|>b")


def test_a_phi3_named_vocabulary_without_endoftext_is_refused(tmp_path):
    gguf, _ = _phi3_named(tmp_path, endoftext=False)
    with pytest.raises(CompileError, match="<\\|endoftext\\|>"):  # llama.cpp's loader throws on it
        compile_model(CompileOptions(model=gguf, out_dir=tmp_path / "b", targets=(), cache_dir=None))


def test_a_damaged_strip_spec_is_refused(tmp_path):
    from rfc.runtime.model import special_strip
    from tokenizers import Tokenizer

    compile_model(CompileOptions(model=DEMO_MODEL, out_dir=tmp_path / "b", targets=(), cache_dir=None))
    tokenizer = Tokenizer.from_str(open_bundle(tmp_path / "b").file("tokenizer.json").read_text())
    for spec in ({"lstrip": [], "rstrip": [10**6]}, {"lstrip": "all", "rstrip": []}, {"rstrip": [1]}, [1]):
        with pytest.raises(StripError, match="strip"):
            special_strip.attach(tokenizer, spec)
