"""GGUF vocabularies to Hugging Face tokenizer.json files that tokenize as llama.cpp does."""

from rfc.compiler.tokenizer.build import (
    TokenizerError,
    TokenizerInfo,
    build_tokenizer,
    rerank_layout,
    strip_spec,
    unigram_spec,
)

__all__ = ["TokenizerError", "TokenizerInfo", "build_tokenizer", "rerank_layout", "strip_spec", "unigram_spec"]
