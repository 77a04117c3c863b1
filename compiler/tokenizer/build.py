"""Build a Hugging Face `tokenizer.json` from a GGUF's vocabulary metadata.

Two GGUF tokenizer models are supported, each rebuilt the way Hugging Face represents the
original tokenizer, so that `tokenizers` encodes text to the ids llama.cpp produces:

- "llama" (SentencePiece): a BPE whose merges come from the token scores (llama.cpp's SPM
  tokenizer merges the adjacent pair whose merged token scores highest, which is BPE with
  merges ranked by score), byte fallback to `<0xNN>` tokens and a "▁" dummy prefix.
- "gpt2" (byte-level BPE): the GGUF's merges behind the pre-tokenizer that
  `tokenizer.ggml.pre` names.

Control and user-defined tokens become added tokens so that they match as whole tokens.
"""

import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rfc.compiler.errors import CompileError

SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TYPE_NORMAL = 1
TYPE_UNKNOWN = 2
TYPE_CONTROL = 3
TYPE_USER_DEFINED = 4
TYPE_UNUSED = 5
TYPE_BYTE = 6

# Texts of control tokens that end a turn or a document. GGUF has no field listing every
# end-of-generation token, so llama.cpp (llama-vocab.cpp) recognizes them by text too.
END_MARKERS = frozenset({
    "</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>",
    "<|end|>", "<end_of_turn>", "<|return|>", "<|call|>", "<EOT>", "_<EOT>",
    "<end_of_utterance>", "<|end▁of▁sentence|>", "<｜end▁of▁sentence｜>",
})  # fmt: skip


class TokenizerError(CompileError):
    """The GGUF's tokenizer is of an unsupported kind or its vocabulary is malformed."""


@dataclass(frozen=True)
class TokenizerInfo:
    model: str  # "llama" (SentencePiece-style) or "gpt2" (byte-level BPE)
    pre: str | None  # tokenizer.ggml.pre
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    eog_ids: tuple[int, ...]  # end-of-generation ids, sorted
    vocab_size: int


# --- pre-tokenizers of byte-level BPE vocabularies ----------------------------------------
# The regexes are the ones in the models' own tokenizer.json files (llama.cpp's table in
# llama-vocab.cpp holds rewrites of the same ones for its own regex engine).

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
          r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
          r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_CJK = "[一-龥ࠀ-一가-퟿]+"
# Cased letters (the original regex spells them out as ranges); escaped because several are
# singletons that Unicode normalization would silently change in an editor (U+212A KELVIN SIGN).
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF"
    "\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5"
    "\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA"
    "\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45"
    "\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE"
    "\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC"
    "\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139"
    "\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3"
    "\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06"
    "\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3"
    "\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF"
    "\U0001E900-\U0001E943]+"
)


@dataclass(frozen=True)
class PreTokenization:
    """How one `tokenizer.ggml.pre` type splits text around the byte-level mapping."""

    splits: tuple[dict, ...]  # pre-tokenizers applied to the text, in order
    nfc: bool = False  # the original tokenizer.json NFC-normalizes first
    ignore_merges: bool = False  # a word that is itself a token is not merged further
    after_bytes: tuple[dict, ...] = ()  # pre-tokenizers applied to the byte-level text


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _digits(individual: bool) -> dict:
    return {"type": "Digits", "individual_digits": individual}


_PUNCTUATION = {"type": "Punctuation", "behavior": "Contiguous"}

_GPT2_LIKE = PreTokenization((_split(_GPT2),))
_LLAMA3_LIKE = PreTokenization((_split(_LLAMA3),), ignore_merges=True)
_STARCODER_LIKE = PreTokenization((_digits(True), _split(_GPT2)))
_BLOOM_LIKE = PreTokenization((_split(_BLOOM),))

PRE_TOKENIZATIONS: dict[str, PreTokenization] = {
    "gpt-2": _GPT2_LIKE,
    "olmo": _GPT2_LIKE,
    "jais": _GPT2_LIKE,
    "trillion": _GPT2_LIKE,
    "mpt": PreTokenization((_split(_GPT2),), nfc=True),
    "llama3": _LLAMA3_LIKE,
    "llama-v3": _LLAMA3_LIKE,
    "llama-bpe": _LLAMA3_LIKE,
    "falcon3": _LLAMA3_LIKE,
    "dbrx": PreTokenization((_split(_LLAMA3),)),
    "smaug-bpe": PreTokenization((_split(_LLAMA3),)),
    "chatglm-bpe": PreTokenization((_split(_LLAMA3),)),
    "qwen2": PreTokenization((_split(_QWEN2),), nfc=True),
    "stablelm2": PreTokenization((_split(_QWEN2),)),
    "starcoder": _STARCODER_LIKE,
    "refact": _STARCODER_LIKE,
    "smollm": _STARCODER_LIKE,
    "codeshell": _STARCODER_LIKE,
    "exaone": _STARCODER_LIKE,
    "minerva-7b": _STARCODER_LIKE,
    # Falcon splits digits after the byte mapping, so a byte of a UTF-8 sequence that maps to
    # a digit-like character (0xBD -> "½") is split too.
    "falcon": PreTokenization((_PUNCTUATION, _split(_GPT2)),
                              after_bytes=(_digits(False), _split("[0-9][0-9][0-9]"))),
    "deepseek-llm": PreTokenization((
        _split(r"[\r\n]"), _split(_DEEPSEEK_LETTERS), _split(r"\s?[!-/:-~！-／：-～‘-‟　-。]+"),
        _split(r"\s+$"), _split(_CJK), _split(r"\p{N}+"),
    )),  # fmt: skip
    "deepseek-coder": PreTokenization((
        _split(r"[\r\n]"), _split(r"\s?\p{L}+"), _split(r"\s?\p{P}+"), _split(_CJK), _split(r"\p{N}"),
    )),  # fmt: skip
    "poro-chat": _BLOOM_LIKE,
    "bloom": _BLOOM_LIKE,
    "gpt3-finnish": _BLOOM_LIKE,
    "viking": PreTokenization((_split(_BLOOM), _split(r"\p{N}"))),
    "tekken": PreTokenization((_split(_TEKKEN),), ignore_merges=True),
    "gpt-4o": PreTokenization((_split(_GPT4O),)),
    # llama.cpp's fallback for byte-level vocabularies converted before `pre` existed.
    "default": PreTokenization((
        _split(r"[\p{P}\$\+<=>\^~\|]+"), _split(_GPT2), _split(r"\p{N}+"), _split("[0-9][0-9][0-9]"),
    )),  # fmt: skip
}


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


def _added_tokens(vocab: _Vocab, unk_id: int | None) -> list[dict]:
    """Control (special) and user-defined tokens, matched in the raw text as whole tokens."""
    added = []
    for i, (token, kind) in enumerate(zip(vocab.tokens, vocab.types)):
        special = kind == TYPE_CONTROL or (kind == TYPE_UNKNOWN and i == unk_id)
        if special or kind == TYPE_USER_DEFINED:
            added.append({
                "id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": special,
            })  # fmt: skip
    return added


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
    wrap = [(add_bos, bos_id), (add_eos, eos_id)]
    specials = {vocab.tokens[i]: {"id": vocab.tokens[i], "ids": [i], "tokens": [vocab.tokens[i]]}
                for used, i in wrap if used}  # fmt: skip

    def sequence(name: str, type_id: int) -> list[dict]:
        items = [{"Sequence": {"id": name, "type_id": type_id}}]
        if add_bos:
            items.insert(0, {"SpecialToken": {"id": vocab.tokens[bos_id], "type_id": type_id}})
        if add_eos:
            items.append({"SpecialToken": {"id": vocab.tokens[eos_id], "type_id": type_id}})
        return items

    return {"type": "TemplateProcessing", "single": sequence("A", 0),
            "pair": sequence("A", 0) + sequence("B", 1), "special_tokens": specials}  # fmt: skip


def _eog_ids(metadata: Mapping[str, object], vocab: _Vocab, eos_id: int | None) -> tuple[int, ...]:
    n = len(vocab.tokens)
    keys = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    eog = {i for i in [eos_id, *(_token_id(metadata, k, n, None) for k in keys)] if i is not None}
    eog.update(i for i, (token, kind) in enumerate(zip(vocab.tokens, vocab.types))
               if kind == TYPE_CONTROL and token in END_MARKERS)  # fmt: skip
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
        "model": _bpe_model(vocab, _spm_merges(vocab), byte_fallback=True, unk=vocab.tokens[unk_id],
                            ignore_merges=False),  # fmt: skip
        "decoder": {"type": "Sequence", "decoders": decoders},
    }


def _byte_level_json(metadata: Mapping[str, object], vocab: _Vocab, pre: str | None) -> dict:
    pre_type = "default" if pre is None else pre
    if pre_type not in PRE_TOKENIZATIONS:
        raise TokenizerError(f"unsupported pre-tokenizer '{pre_type}' (tokenizer.ggml.pre)")
    spec = PRE_TOKENIZATIONS[pre_type]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "normalizer": {"type": "NFC"} if spec.nfc else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [*spec.splits, byte_level, *spec.after_bytes]},
        "model": _bpe_model(vocab, _gguf_merges(metadata, vocab.ids), byte_fallback=False, unk=None,
                            ignore_merges=spec.ignore_merges),  # fmt: skip
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    }


def build_tokenizer(metadata: Mapping[str, object]) -> tuple[str, TokenizerInfo]:
    """metadata maps GGUF keys to values as `gguf.GGUFReader(path).fields[key].contents()` returns them
    (strings, ints, floats, bools, lists). Returns (tokenizer.json text, info)."""
    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("the GGUF has no tokenizer (tokenizer.ggml.model is missing)")
    if model not in ("llama", "gpt2"):
        raise TokenizerError(f"unsupported tokenizer model '{model}'")
    pre = metadata.get("tokenizer.ggml.pre")
    pre = str(pre) if pre is not None else None
    vocab = _read_vocab(metadata, model)
    n = len(vocab.tokens)
    is_spm = model == "llama"
    # llama.cpp's defaults for SentencePiece vocabularies that omit the special ids.
    bos_id = _token_id(metadata, "tokenizer.ggml.bos_token_id", n, 1 if is_spm else None)
    eos_id = _token_id(metadata, "tokenizer.ggml.eos_token_id", n, 2 if is_spm else None)
    unk_id = _token_id(metadata, "tokenizer.ggml.unknown_token_id", n, 0 if is_spm else None)
    pad_id = _token_id(metadata, "tokenizer.ggml.padding_token_id", n, None)
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", is_spm))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))

    parts = _spm_json(metadata, vocab, unk_id) if is_spm else _byte_level_json(metadata, vocab, pre)
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(vocab, unk_id),
        "normalizer": parts["normalizer"],
        "pre_tokenizer": parts["pre_tokenizer"],
        "model": parts["model"],
        "post_processor": _template(vocab, bos_id, eos_id, add_bos, add_eos),
        "decoder": parts["decoder"],
    }
    info = TokenizerInfo(
        model=model, pre=pre, bos_id=bos_id, eos_id=eos_id, unk_id=unk_id, pad_id=pad_id,
        add_bos=add_bos, add_eos=add_eos, eog_ids=_eog_ids(metadata, vocab, eos_id), vocab_size=n,
    )  # fmt: skip
    return json.dumps(document, ensure_ascii=False), info
