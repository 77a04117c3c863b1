"""A rerank pair's layout (compiler/tokenizer/build.py rerank_layout) as llama.cpp 0.3.36 resolves
its vocabulary: the expected special ids and add_* flags below are what llama_vocab_bos / _eos /
_sep and llama_vocab_get_add_bos / _eos / _sep returned for llama.cpp's own ggml-vocab-bert-bge.gguf
(bos 101, eos none, sep 102; add_bos, add_sep), ggml-vocab-llama-spm.gguf (bos 1, eos 2; add_bos)
and ggml-vocab-nomic-bert-moe.gguf (XLM-R's: bos 0, eos 2, sep 2; add_bos, add_eos), whose tokenizer
keys these dicts copy; llama-server's format_prompt_rerank puts BOS, the query,
EOS-or-SEP when add_eos, SEP when add_sep, the document, EOS-or-SEP when add_eos."""

import pytest

from rfc.compiler.tokenizer import TokenizerError, rerank_layout

BERT_BGE = {  # ggml-vocab-bert-bge.gguf's keys (no add_* key, no BOS/EOS id: WordPiece's defaults)
    "tokenizer.ggml.model": "bert",
    "tokenizer.ggml.tokens": ["t"] * 30522,
    "tokenizer.ggml.unknown_token_id": 100,
    "tokenizer.ggml.seperator_token_id": 102,
    "tokenizer.ggml.padding_token_id": 0,
    "tokenizer.ggml.cls_token_id": 101,
    "tokenizer.ggml.mask_token_id": 103,
}
LLAMA_SPM = {  # ggml-vocab-llama-spm.gguf's
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["t"] * 32000,
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.unknown_token_id": 0,
    "tokenizer.ggml.add_bos_token": True,
    "tokenizer.ggml.add_eos_token": False,
}

XLMR = {  # ggml-vocab-nomic-bert-moe.gguf's (a `t5` vocabulary, as bge-reranker-v2-m3's converts)
    "tokenizer.ggml.model": "t5",
    "tokenizer.ggml.tokens": ["t"] * 250048,
    "tokenizer.ggml.bos_token_id": 0,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.unknown_token_id": 3,
    "tokenizer.ggml.seperator_token_id": 2,
    "tokenizer.ggml.padding_token_id": 1,
    "tokenizer.ggml.mask_token_id": 250001,
    "tokenizer.ggml.add_bos_token": True,
    "tokenizer.ggml.add_eos_token": True,
}
T5_DEFAULTS = {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["t"] * 32100}  # no keys: UGM's defaults


@pytest.mark.parametrize(
    ("metadata", "want"),
    [
        (BERT_BGE, {"prefix": [101], "between": [102], "suffix": []}),  # [CLS] q [SEP] d
        (LLAMA_SPM, {"prefix": [1], "between": [], "suffix": []}),
        # a WordPiece file that asks for EOS: SEP stands in for it after each text, then add_sep's SEP
        (BERT_BGE | {"tokenizer.ggml.add_eos_token": True}, {"prefix": [101], "between": [102, 102], "suffix": [102]}),
        (BERT_BGE | {"tokenizer.ggml.add_sep_token": False}, {"prefix": [101], "between": [], "suffix": []}),
        (LLAMA_SPM | {"tokenizer.ggml.add_eos_token": True}, {"prefix": [1], "between": [2], "suffix": [2]}),
        (XLMR, {"prefix": [0], "between": [2], "suffix": [2]}),  # <s> q </s> d </s>
        (T5_DEFAULTS, {"prefix": [], "between": [1], "suffix": [1]}),  # no BOS, EOS id 1 after each
    ],
    ids=["bert-bge", "llama-spm", "bert-eos", "bert-no-sep", "spm-eos", "xlm-r", "t5-defaults"],
)
def test_layout_is_llama_cpps(metadata, want):
    assert rerank_layout(metadata) == want


def test_a_vocabulary_without_a_layout_is_refused():
    with pytest.raises(TokenizerError, match="'gpt2'"):
        rerank_layout({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["t"] * 4})
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        rerank_layout(BERT_BGE | {"tokenizer.ggml.tokens": ["t"] * 50})


def test_a_rerank_template_is_the_layout():
    """A file with llama.cpp's rerank template (Qwen3-Reranker's converter writes one) is laid out
    through it, whatever its vocabulary; an empty or non-text one is refused."""
    template = "<Query>: {query}\n<Document>: {document}"
    gpt2 = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["t"] * 4}
    assert rerank_layout(gpt2 | {"tokenizer.chat_template.rerank": template}) == {"template": template}
    for bad in ("", 3):
        with pytest.raises(TokenizerError, match="chat_template.rerank"):
            rerank_layout(gpt2 | {"tokenizer.chat_template.rerank": bad})


def test_a_plans_score_softmax_round_trips_and_is_checked():
    """scores_softmax is packed only where set (every other plan's bytes unchanged), read back, and
    refused when it is not a boolean or there are no scores."""
    import dataclasses

    import msgpack

    from rfc.artifacts import BundleError
    from rfc.artifacts.plan import pack_plan, unpack_plan
    from tests.conftest import FIXTURES
    from rfc.compiler.gguf_reader import read_gguf
    from rfc.compiler.spec import build_spec

    plan = build_spec(read_gguf(FIXTURES / "tiny-llama-Q8_0.gguf")).plan
    assert b"scores_softmax" not in pack_plan(plan)
    with pytest.raises(BundleError, match="scores_softmax without output_scores"):
        pack_plan(dataclasses.replace(plan, scores_softmax=True))
    raw = msgpack.unpackb(pack_plan(plan))
    with pytest.raises(BundleError, match="scores_softmax"):
        unpack_plan(msgpack.packb({**raw, "scores_softmax": 1}))
