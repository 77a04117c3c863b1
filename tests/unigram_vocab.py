"""A `t5` (Unigram) vocabulary small enough for a tiny model: the first pieces of llama.cpp's XLM-R
vocabulary (ggml-vocab-nomic-bert-moe.gguf: its special tokens and most likely pieces), "<mask>"
last, with the real precompiled charsmap and XLM-R's options, put in place of a fixture's own
vocabulary. tools/make_tokenizer_vectors.py records llama.cpp's ids for such a file
(tests/fixtures/tokenizer/unigram.json, "small"); tests/e2e/test_encoders.py serves one."""

from pathlib import Path

from gguf import GGUFReader

from tests.gguf_edit import rewrite_gguf

SOURCE = "ggml-vocab-nomic-bert-moe.gguf"
_KEPT = ("tokenizer.ggml.precompiled_charsmap", "tokenizer.ggml.add_space_prefix",
         "tokenizer.ggml.remove_extra_whitespaces", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
         "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
         "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.padding_token_id")  # fmt: skip


def small_t5_metadata(vocab_dir: Path, size: int) -> dict[str, object]:
    fields = GGUFReader(vocab_dir / SOURCE).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    mask = tokens.index("<mask>")
    ids = [*range(size - 1), mask]
    meta: dict[str, object] = {key: fields[key].contents() for key in _KEPT}
    meta["tokenizer.ggml.precompiled_charsmap"] = bytes(v & 0xFF for v in meta["tokenizer.ggml.precompiled_charsmap"])
    return meta | {
        "tokenizer.ggml.model": "t5",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": [tokens[i] for i in ids],
        "tokenizer.ggml.scores": [float(scores[i]) for i in ids],
        "tokenizer.ggml.token_type": [int(types[i]) for i in ids],
        "tokenizer.ggml.mask_token_id": size - 1,
    }


def with_small_t5_vocab(model: Path, out: Path, vocab_dir: Path) -> Path:
    """`model` (a fixture GGUF) with the small vocabulary, as many pieces as its token_embd has rows."""
    rows = next(int(t.shape[1]) for t in GGUFReader(model).tensors if t.name == "token_embd.weight")
    return rewrite_gguf(model, out, metadata=small_t5_metadata(vocab_dir, rows))
