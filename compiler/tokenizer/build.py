"""Build a Hugging Face `tokenizer.json` from a GGUF's vocabulary metadata.

The reference is llama.cpp (src/llama-vocab.cpp): each supported GGUF tokenizer model is rebuilt
so that `tokenizers` encodes text to the ids llama.cpp produces:

- "llama" (SentencePiece): a BPE whose merges come from the token scores (llama.cpp's SPM
  tokenizer merges the adjacent pair whose merged token scores highest, which is BPE with
  merges ranked by score), byte fallback to `<0xNN>` tokens and a "▁" dummy prefix.
- "gpt2" (BPE): the GGUF's merges behind the pre-tokenizer that `tokenizer.ggml.pre` names
  (pretokenizers.py), over GPT-2 byte-encoded words, or over raw UTF-8 with `<0xNN>` byte
  fallback for the SentencePiece-style types (Gemma 4, Sarvam).
- "gemma4": "gpt2" with the gemma4 pre-tokenizer, as llama.cpp treats it.
- "bert" (WordPiece): llama.cpp's "▁"-prefixed vocabulary, preprocessing and greedy longest match
  (wpm.py), wrapped in the CLS and SEP tokens as llama.cpp always does for it.
- "t5" (Unigram): the pieces, their scores and the precompiled charsmap (unigram.py), which the
  runtime searches as llama.cpp does (runtime/model/ugm.py) from the manifest's
  `tokenizer.unigram` (`unigram_spec`).

Special tokens beside which llama.cpp drops whitespace (LSTRIP / RSTRIP, which its loader sets by the
file's names: Phi-3's, "<mask>" of XLM-R's vocabularies) are listed in the manifest's
`tokenizer.strip` (`strip_spec`), which the runtime applies (runtime/model/special_strip.py).

Every other model llama.cpp knows is refused by name with what is missing (UNSUPPORTED_MODELS),
as is any pre-tokenizer without an exact equivalent: never a silently different tokenization.
Control and user-defined tokens become added tokens so that they match as whole tokens.
"""

import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rfc.compiler.errors import CompileError
from rfc.compiler.tokenizer import unigram, wpm
from rfc.compiler.tokenizer.pretokenizers import PRE_NAMES, PRE_TYPES, UNSUPPORTED_TYPES, pre_tokenizers

SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TYPE_NORMAL = 1
TYPE_UNKNOWN = 2
TYPE_CONTROL = 3
TYPE_USER_DEFINED = 4
TYPE_UNUSED = 5
TYPE_BYTE = 6

# Token texts that llama.cpp's loader (llama-vocab.cpp) treats as end of generation, and makes
# control tokens (matched whole in text) even where the GGUF types them as normal.
END_MARKERS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
})  # fmt: skip
# Texts llama.cpp also makes control tokens when it takes them for the EOT or fill-in-the-middle
# tokens (the FIM pad/repo/file-separator ones end generation too).
_FIM_END = frozenset({"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>",
                      "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>"})  # fmt: skip
CONTROL_TEXTS = END_MARKERS | _FIM_END | frozenset({
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
    "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
    "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
    "▁<MID>", "<|code_middle|>", "<|middle|>",
})  # fmt: skip


# Models llama.cpp's loader knows that rfc cannot reproduce exactly, and why.
UNSUPPORTED_MODELS: dict[str, str] = {
    "rwkv": "RWKV's greedy byte-trie tokenizer has no tokenizers equivalent",
    "plamo2": "PLaMo-2's Aho-Corasick tokenizer has no tokenizers equivalent",
    "hybriddna": "the HybriDNA k-mer tokenizer has no tokenizers equivalent",
    "whitespace": "the whitespace tokenizer model is not supported",
    "test": "llama.cpp's test tokenizer model is not a real vocabulary",
    "none": "the GGUF has no vocabulary (tokenizer.ggml.model = none)",
    "no_vocab": "the GGUF has no vocabulary (tokenizer.ggml.model = no_vocab)",
}  # fmt: skip


class TokenizerError(CompileError):
    """The GGUF's tokenizer is of an unsupported kind or its vocabulary is malformed."""


@dataclass(frozen=True)
class TokenizerInfo:
    model: str  # tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" or "gemma4" (BPE), "bert" (WordPiece)
    pre: str | None  # tokenizer.ggml.pre
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    eog_ids: tuple[int, ...]  # end-of-generation ids, sorted
    vocab_size: int


# --- the vocabulary as GGUF stores it ---------------------------------------------------


@dataclass(frozen=True)
class _Vocab:
    tokens: list[str]
    types: list[int]
    scores: list[float]
    ids: dict[str, int]  # token text -> id


def _read_vocab(metadata: Mapping[str, object], model: str) -> _Vocab:
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, Sequence) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError("tokenizer.ggml.tokens is missing or is not a list of strings")
    n = len(tokens)
    types = _number_list(metadata, "tokenizer.ggml.token_type", n, int, default=TYPE_NORMAL)
    scores = _number_list(metadata, "tokenizer.ggml.scores", n, float, default=0.0)
    ids: dict[str, int] = {}
    for i, token in enumerate(tokens):
        # tokenizer.json maps each text to one id, so a repeated text cannot be represented.
        if ids.setdefault(token, i) != i:
            raise TokenizerError(f"{model} vocabulary has token {token!r} twice (ids {ids[token]} and {i})")
    return _Vocab(tokens=list(tokens), types=types, scores=scores, ids=ids)


def _number_list(metadata: Mapping[str, object], key: str, n: int, kind: type, default) -> list:
    values = metadata.get(key)
    if values is None:
        return [default] * n
    try:
        if isinstance(values, Sequence) and len(values) == n:
            return [kind(v) for v in values]
    except (TypeError, ValueError):
        pass
    raise TokenizerError(f"{key} must be a list of {n} numbers (one per token)")


def _token_id(metadata: Mapping[str, object], key: str, vocab_size: int, default: int | None) -> int | None:
    value = metadata.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TokenizerError(f"{key} must be an integer, got {value!r}")
    if not 0 <= value < vocab_size:
        raise TokenizerError(f"{key} = {value} is outside the vocabulary (size {vocab_size})")
    return int(value)


# --- tokenizer.json pieces -------------------------------------------------------------


def _llama_cpp_types(vocab: _Vocab) -> list[int]:
    """Token types after llama.cpp's loader has retyped tokens by their text (see CONTROL_TEXTS
    and its two exceptions below)."""
    types = [TYPE_CONTROL if token in CONTROL_TEXTS else kind for token, kind in zip(vocab.tokens, vocab.types)]
    ids = vocab.ids
    # o200k_harmony and solar-open: "<|end|>" is not an end of generation but stays matchable.
    if "<|end|>" in ids and (
        ("<|return|>" in ids and "<|call|>" in ids) or ("<|calls|>" in ids and "<|flush|>" in ids)
    ):
        types[ids["<|end|>"]] = TYPE_USER_DEFINED
    # Gemma 4 and PLaMo have a normal "</s>".
    if "</s>" in ids and ("<|tool_response>" in ids or "<|plamo:eos|>" in ids):
        types[ids["</s>"]] = TYPE_NORMAL
    return types


def _added_tokens(vocab: _Vocab, unk_id: int | None) -> list[dict]:
    """Control (special) and user-defined tokens, matched in the raw text as whole tokens."""
    added = []
    for i, (token, kind) in enumerate(zip(vocab.tokens, _llama_cpp_types(vocab))):
        # llama.cpp matches every unknown-typed token in text as it does control tokens.
        special = kind in (TYPE_CONTROL, TYPE_UNKNOWN)
        if special or kind == TYPE_USER_DEFINED:
            added.append({
                "id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": special,
            })  # fmt: skip
    return added


def _strip_attributes(metadata: Mapping[str, object], vocab: _Vocab) -> tuple[list[int], list[int]]:
    """(LSTRIP ids, RSTRIP ids): the special tokens beside which llama.cpp's tokenizer drops the
    ASCII whitespace (C's isspace) of the text around them, as its loader marks them by the
    file's names (llama-vocab.cpp, "set attributes by model/tokenizer/architecture name"):
    "<mask>" LSTRIP for the jina-v2-de/es/code pre-tokenizers and the nomic-bert-moe and
    jina-bert-v3 architectures (XLM-R's vocabularies); every special token RSTRIP but "<unk>",
    "<s>" and "<|endoftext|>", and "</s>" too, where general.name says phi-3 or phi3 (any case); else
    "[MASK]" LSTRIP where it says modern-bert. A named token the vocabulary lacks makes llama.cpp's
    loader fail (for "<mask>" and "[MASK]" it only warns): refused alike."""
    pre = str(metadata.get("tokenizer.ggml.pre", ""))
    arch = str(metadata.get("general.architecture", ""))
    name = str(metadata.get("general.name", "")).lower()
    ids = vocab.ids
    if any(p in pre for p in _MASK_LSTRIP_PRE) or any(a in arch for a in _MASK_LSTRIP_ARCHS):
        return ([ids["<mask>"]] if "<mask>" in ids else []), []
    if "phi-3" in name or "phi3" in name:
        if missing := [t for t in ("</s>", *_PHI3_KEPT) if t not in ids]:
            raise TokenizerError(
                f"a Phi-3 vocabulary (general.name) without {missing[0]!r}: llama.cpp's loader fails on it"
            )
        kept = {ids[t] for t in _PHI3_KEPT}
        special = {
            i
            for i, kind in enumerate(_llama_cpp_types(vocab))
            if kind in (TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNKNOWN)
        }
        return [], sorted((special | {ids["</s>"]}) - kept)
    if "modern-bert" in name:
        return ([ids["[MASK]"]] if "[MASK]" in ids else []), []
    return [], []


_MASK_LSTRIP_PRE = ("jina-v2-de", "jina-v2-es", "jina-v2-code")
_MASK_LSTRIP_ARCHS = ("nomic-bert-moe", "jina-bert-v3")
_PHI3_KEPT = ("<unk>", "<s>", "<|endoftext|>")  # RSTRIP cleared again after every special token's


def strip_spec(metadata: Mapping[str, object]) -> dict | None:
    """The manifest's tokenizer.strip for a vocabulary with LSTRIP or RSTRIP special tokens other
    than a `t5` one (runtime/model/special_strip.py: `tokenizers`' own lstrip/rstrip drop any
    Unicode whitespace, llama.cpp ASCII whitespace alone); None for every other one."""
    model = metadata.get("tokenizer.ggml.model")
    if model == "t5" or not isinstance(model, str):
        return None
    lstrip, rstrip = _strip_attributes(metadata, _read_vocab(metadata, model))
    return {"lstrip": lstrip, "rstrip": rstrip} if lstrip or rstrip else None


def _spm_merges(vocab: _Vocab) -> list[list[str]]:
    """Merges that replay llama.cpp's SPM tokenizer: every split of a token into two tokens,
    ranked by the merged token's score, highest first (as HF's SentencePieceExtractor)."""
    ids = vocab.ids
    ranked = []
    for token, score in zip(vocab.tokens, vocab.scores):
        pairs = [(ids[token[:k]], ids[token[k:]]) for k in range(1, len(token))
                 if token[:k] in ids and token[k:] in ids]  # fmt: skip
        ranked.extend((score, left, right) for left, right in sorted(pairs))
    # sorted() is stable: equal scores keep vocabulary order, as in the HF conversion.
    ranked.sort(key=lambda entry: entry[0], reverse=True)
    return [[vocab.tokens[left], vocab.tokens[right]] for _, left, right in ranked]


def _gguf_merges(metadata: Mapping[str, object], ids: Mapping[str, int]) -> list[list[str]]:
    """The GGUF's "left right" merges as pairs (a pair cannot be misread if a token has a space)."""
    merges = metadata.get("tokenizer.ggml.merges")
    if not isinstance(merges, Sequence) or not merges:
        raise TokenizerError("gpt2 tokenizer without tokenizer.ggml.merges")
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ") if isinstance(merge, str) else ("", "", "")
        if not sep or left + right not in ids or left not in ids or right not in ids:
            raise TokenizerError(f"malformed merge {merge!r} in tokenizer.ggml.merges")
        pairs.append([left, right])
    return pairs


def _bpe_model(vocab: _Vocab, merges: list[list[str]], *, byte_fallback: bool, unk: str | None,
               ignore_merges: bool) -> dict:  # fmt: skip
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": unk,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": byte_fallback,
        "byte_fallback": byte_fallback,
        "ignore_merges": ignore_merges,
        "vocab": dict(vocab.ids),
        "merges": merges,
    }


def _template(vocab: _Vocab, bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool) -> dict:
    """A post-processor adding BOS/EOS around each sequence as llama.cpp does."""
    if add_bos and bos_id is None:
        raise TokenizerError("tokenizer.ggml.add_bos_token is set but there is no BOS token")
    if add_eos and eos_id is None:
        raise TokenizerError("tokenizer.ggml.add_eos_token is set but there is no EOS token")
    return _wrap(vocab, [bos_id] if add_bos else [], [eos_id] if add_eos else [])


def _wrap(vocab: _Vocab, before: list[int], after: list[int]) -> dict:
    """A post-processor putting the `before` tokens ahead of each sequence, `after` behind it."""
    specials = {vocab.tokens[i]: {"id": vocab.tokens[i], "ids": [i], "tokens": [vocab.tokens[i]]}
                for i in before + after}  # fmt: skip

    def sequence(name: str, type_id: int) -> list[dict]:
        return ([{"SpecialToken": {"id": vocab.tokens[i], "type_id": type_id}} for i in before]
                + [{"Sequence": {"id": name, "type_id": type_id}}]
                + [{"SpecialToken": {"id": vocab.tokens[i], "type_id": type_id}} for i in after])  # fmt: skip

    return {"type": "TemplateProcessing", "single": sequence("A", 0),
            "pair": sequence("A", 0) + sequence("B", 1), "special_tokens": specials}  # fmt: skip


def _eog_ids(metadata: Mapping[str, object], vocab: _Vocab, eos_id: int | None) -> tuple[int, ...]:
    n = len(vocab.tokens)
    keys = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    eog = {i for i in [eos_id, *(_token_id(metadata, k, n, None) for k in keys)] if i is not None}
    eog.update(i for i, (token, kind) in enumerate(zip(vocab.tokens, _llama_cpp_types(vocab)))
               if kind == TYPE_CONTROL and (token in END_MARKERS or token in _FIM_END))  # fmt: skip
    return tuple(sorted(eog))


# --- the two tokenizer models ------------------------------------------------------------


def _spm_json(metadata: Mapping[str, object], vocab: _Vocab, unk_id: int | None) -> dict:
    if unk_id is None:
        raise TokenizerError("llama tokenizer without an unknown token (tokenizer.ggml.unknown_token_id)")
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab.ids]
    if missing:
        raise TokenizerError(f"llama tokenizer lacks byte tokens ({missing[0]} and {len(missing) - 1} more)")
    add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": SPM_SPACE}]
    decoders = [{"type": "Replace", "pattern": {"String": SPM_SPACE}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]  # fmt: skip
    if add_space_prefix:
        # Prepended to each stretch of text between added tokens, as llama.cpp does.
        normalizers.insert(0, {"type": "Prepend", "prepend": SPM_SPACE})
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "model": _bpe_model(
            vocab, _spm_merges(vocab), byte_fallback=True, unk=vocab.tokens[unk_id], ignore_merges=False
        ),  # fmt: skip
        "decoder": {"type": "Sequence", "decoders": decoders},
    }


def _wpm_json(metadata: Mapping[str, object], vocab: _Vocab, unk_id: int | None) -> dict:
    if unk_id is None:
        raise TokenizerError("bert tokenizer without an unknown token (tokenizer.ggml.unknown_token_id)")
    # llama.cpp's BertNormalizer options: strip_accents follows lowercase unless given.
    lowercase = bool(metadata.get("tokenizer.ggml.normalizer.lowercase", True))
    strip_accents = bool(metadata.get("tokenizer.ggml.normalizer.strip_accents", lowercase))
    return {
        "normalizer": {"type": "Sequence",
                       "normalizers": wpm.normalizers(lowercase=lowercase, strip_accents=strip_accents)},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": wpm.pre_tokenizers()},
        "model": wpm.model(dict(vocab.ids), vocab.tokens[unk_id]),
        "decoder": wpm.decoder(),
    }  # fmt: skip


def _ugm_json(metadata: Mapping[str, object], vocab: _Vocab, unk_id: int | None) -> dict:
    if unk_id is None:
        raise TokenizerError("t5 tokenizer without an unknown token (tokenizer.ggml.unknown_token_id)")
    try:
        charsmap = unigram.charsmap_bytes(metadata)
    except unigram.CharsmapError as e:
        raise TokenizerError(str(e)) from None
    return unigram.unigram_parts(vocab.tokens, vocab.scores, _llama_cpp_types(vocab), unk_id,
                                 *_ugm_flags(metadata), charsmap)  # fmt: skip


def _ugm_flags(metadata: Mapping[str, object]) -> tuple[bool, bool]:
    """llama.cpp's add_space_prefix and remove_extra_whitespaces for a Unigram vocabulary (both
    default off for it)."""
    return (bool(metadata.get("tokenizer.ggml.add_space_prefix", False)),
            bool(metadata.get("tokenizer.ggml.remove_extra_whitespaces", False)))  # fmt: skip


def unigram_spec(metadata: Mapping[str, object]) -> dict | None:
    """The manifest's tokenizer.unigram for a `t5` vocabulary (runtime/model/ugm.py runs it); None
    for every other one, whose tokenizer.json alone tokenizes as llama.cpp does."""
    if metadata.get("tokenizer.ggml.model") != "t5":
        return None
    vocab = _read_vocab(metadata, "t5")
    unk_id = _token_id(metadata, "tokenizer.ggml.unknown_token_id", len(vocab.tokens), 2)
    if unk_id is None:
        raise TokenizerError("t5 tokenizer without an unknown token (tokenizer.ggml.unknown_token_id)")
    lstrip, rstrip = _strip_attributes(metadata, vocab)
    if rstrip:
        raise TokenizerError("a t5 vocabulary with RSTRIP special tokens (a Phi-3 general.name) is not built")
    return unigram.unigram_spec(vocab.scores, _llama_cpp_types(vocab), unk_id, *_ugm_flags(metadata), lstrip)


def _pre_name(model: str, pre: str | None) -> str:
    if model == "gemma4":
        return "gemma4"  # llama.cpp ignores tokenizer.ggml.pre for this model
    name = "default" if pre is None else pre
    if name not in PRE_NAMES:
        raise TokenizerError(f"unsupported pre-tokenizer '{name}' (tokenizer.ggml.pre): llama.cpp does not know it")
    pre_type = PRE_NAMES[name].pre_type
    if pre_type in UNSUPPORTED_TYPES:
        raise TokenizerError(f"unsupported pre-tokenizer '{name}' (tokenizer.ggml.pre): {UNSUPPORTED_TYPES[pre_type]}")
    return name


def _bpe_json(metadata: Mapping[str, object], vocab: _Vocab, pre_name: str) -> dict:
    name = PRE_NAMES[pre_name]
    pre_type = PRE_TYPES[name.pre_type]
    merges = _gguf_merges(metadata, vocab.ids)
    if pre_type.byte_encode:
        return {
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tokenizers(pre_type)},
            "model": _bpe_model(vocab, merges, byte_fallback=False, unk=None, ignore_merges=name.ignore_merges),
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        }
    # Raw UTF-8 words: a character outside the vocabulary becomes its <0xNN> byte tokens, which
    # must all exist (llama.cpp silently drops a byte without one; tokenizers cannot).
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab.ids]
    if missing:
        raise TokenizerError(f"pre-tokenizer '{pre_name}' works on raw UTF-8 but the vocabulary lacks byte tokens "
                             f"({missing[0]} and {len(missing) - 1} more)")  # fmt: skip
    normalizer = None
    decoders: list[dict] = [{"type": "ByteFallback"}, {"type": "Fuse"}]
    if name.escape_whitespaces:
        normalizer = {"type": "Replace", "pattern": {"String": " "}, "content": SPM_SPACE}
        decoders.insert(0, {"type": "Replace", "pattern": {"String": SPM_SPACE}, "content": " "})
    return {
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tokenizers(pre_type)},
        "model": _bpe_model(vocab, merges, byte_fallback=True, unk=None, ignore_merges=name.ignore_merges),
        "decoder": {"type": "Sequence", "decoders": decoders},
    }


def build_tokenizer(metadata: Mapping[str, object]) -> tuple[str, TokenizerInfo]:
    """metadata maps GGUF keys to values as `gguf.GGUFReader(path).fields[key].contents()` returns them
    (strings, ints, floats, bools, lists). Returns (tokenizer.json text, info)."""
    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("the GGUF has no tokenizer (tokenizer.ggml.model is missing)")
    if model in UNSUPPORTED_MODELS:
        raise TokenizerError(f"unsupported tokenizer model '{model}': {UNSUPPORTED_MODELS[model]}")
    if model not in ("llama", "gpt2", "gemma4", "bert", "t5"):
        raise TokenizerError(f"unsupported tokenizer model '{model}': llama.cpp does not know it")
    pre = metadata.get("tokenizer.ggml.pre")
    pre = str(pre) if pre is not None else None
    # llama.cpp ignores tokenizer.ggml.pre for SentencePiece, WordPiece and Unigram vocabularies.
    pre_name = None if model in ("llama", "bert", "t5") else _pre_name(str(model), pre)
    vocab = _read_vocab(metadata, model)
    n = len(vocab.tokens)
    is_spm, is_wpm, is_ugm = model == "llama", model == "bert", model == "t5"
    # llama.cpp's defaults for the special ids a vocabulary omits.
    default_bos, default_eos, default_unk, default_pad = (
        (1, 2, 0, None) if is_spm else (101, None, 100, 0) if is_wpm else (None, 1, 2, 0) if is_ugm else (None,) * 4
    )
    bos_id = _token_id(metadata, "tokenizer.ggml.bos_token_id", n, default_bos)
    eos_id = _token_id(metadata, "tokenizer.ggml.eos_token_id", n, default_eos)
    unk_id = _token_id(metadata, "tokenizer.ggml.unknown_token_id", n, default_unk)
    pad_id = _token_id(metadata, "tokenizer.ggml.padding_token_id", n, default_pad)
    add_bos_default = is_spm or (pre_name is not None and PRE_NAMES[pre_name].add_bos)
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default))
    if pre_name is not None and PRE_NAMES[pre_name].pre_type == "GEMMA4":
        add_bos = True  # llama.cpp overrides add_bos_token for Gemma 4
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", is_ugm))

    if is_wpm:
        # llama.cpp wraps WordPiece text in BOS (CLS) and SEP whatever the add_* flags say.
        sep_id = _token_id(metadata, "tokenizer.ggml.seperator_token_id", n, 102)
        add_bos, add_eos = True, False
        parts = _wpm_json(metadata, vocab, unk_id)
        post_processor = _wrap(vocab, [bos_id], [sep_id])
    else:
        if is_ugm:
            parts = _ugm_json(metadata, vocab, unk_id)
        elif pre_name is None:
            parts = _spm_json(metadata, vocab, unk_id)
        else:
            parts = _bpe_json(metadata, vocab, pre_name)
        post_processor = _template(vocab, bos_id, eos_id, add_bos, add_eos)
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(vocab, unk_id),
        "normalizer": parts["normalizer"],
        "pre_tokenizer": parts["pre_tokenizer"],
        "model": parts["model"],
        "post_processor": post_processor,
        "decoder": parts["decoder"],
    }
    info = TokenizerInfo(
        model=model, pre=pre, bos_id=bos_id, eos_id=eos_id, unk_id=unk_id, pad_id=pad_id,
        add_bos=add_bos, add_eos=add_eos, eog_ids=_eog_ids(metadata, vocab, eos_id), vocab_size=n,
    )  # fmt: skip
    return json.dumps(document, ensure_ascii=False), info


# llama.cpp's defaults per vocabulary type for what a file does not say: BOS, EOS and SEP ids, then
# add_bos, add_eos and add_sep
_RERANK_DEFAULTS = {
    "llama": (1, 2, None, True, False, False),
    "bert": (101, None, 102, True, False, True),
    "t5": (None, 1, None, False, True, False),
}


RERANK_TEMPLATE_KEY = "tokenizer.chat_template.rerank"


def rerank_layout(metadata: Mapping[str, object]) -> dict:
    """How llama-server lays out a rerank pair (format_prompt_rerank). A file with a rerank template
    (Qwen3-Reranker's) gives {"template": text}: its "{query}" and then its "{document}" replaced by
    the texts, the whole tokenized with special tokens parsed. Without one: prefix + query + between
    + document + suffix, with the special ids and
    add_* flags as llama.cpp's vocabulary resolves them (its defaults per vocabulary type, then the
    file's keys): BOS when add_bos; EOS (SEP where there is no EOS) after each text when add_eos;
    SEP between them when add_sep. SentencePiece ("llama"), WordPiece ("bert") and Unigram ("t5",
    XLM-R's cross-encoders) vocabularies; another is refused (TokenizerError)."""
    template = metadata.get(RERANK_TEMPLATE_KEY)
    if template is not None:
        if not isinstance(template, str) or not template:
            raise TokenizerError(f"{RERANK_TEMPLATE_KEY} is not a template text")
        return {"template": template}
    model = metadata.get("tokenizer.ggml.model")
    if model not in _RERANK_DEFAULTS:
        raise TokenizerError(f"a reranker's pair layout for a {str(model)[:20]!r} vocabulary is not implemented")
    tokens = metadata.get("tokenizer.ggml.tokens")
    n = len(tokens) if isinstance(tokens, Sequence) else 0
    default_bos, default_eos, default_sep, default_add_bos, default_add_eos, default_add_sep = _RERANK_DEFAULTS[model]
    bos = _token_id(metadata, "tokenizer.ggml.bos_token_id", n, default_bos)
    eos = _token_id(metadata, "tokenizer.ggml.eos_token_id", n, default_eos)
    sep = _token_id(metadata, "tokenizer.ggml.seperator_token_id", n, default_sep)
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", default_add_eos))
    add_sep = bool(metadata.get("tokenizer.ggml.add_sep_token", default_add_sep))
    end = eos if eos is not None else sep
    if add_eos and end is None:
        raise TokenizerError("tokenizer.ggml.add_eos_token is set but there is neither an EOS nor a SEP token")
    if add_bos and bos is None:
        raise TokenizerError("tokenizer.ggml.add_bos_token is set but there is no BOS token")
    ends = [end] if add_eos else []
    return {
        "prefix": [bos] if add_bos else [],
        "between": ends + ([sep] if add_sep and sep is not None else []),
        "suffix": ends,
    }
