"""llama.cpp's BPE pre-tokenizers (`tokenizer.ggml.pre`) as Hugging Face pre-tokenizers.

The reference is llama.cpp (src/llama-vocab.cpp, llm_tokenizer_bpe), not the models' own
tokenizer.json files: where llama.cpp's regex engine reads a pattern differently from the
original (it folds \\p{Lu}, \\p{Ll}, ... into \\p{L}; its \\d is ASCII), we follow llama.cpp,
because a bundle must tokenize as llama.cpp does. Each type lists llama.cpp's regexes as it
writes them; `_onig` rewrites the few constructs that the Oniguruma engine of `tokenizers`
reads differently. tests/unit/test_pretokenizers.py compares every type's words with llama.cpp's
own splitter (vectors in tests/fixtures/tokenizer/pre-tokenizers.json).

llama.cpp applies no Unicode normalization before a BPE pre-tokenizer, so neither do we.
"""

import re
from dataclasses import dataclass

# Patterns that llama.cpp runs through hand-written splitters instead of std::regex, mapped to
# the regexes those splitters implement.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")  # fmt: skip
_DIGIT_GROUPS = r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))"  # runs of digits in threes from the right
_HAN_OUT = r"&&[^\p{Han}]"
_KIMI_K2 = (r"\p{Han}+|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}" + _HAN_OUT + r"]*[\p{L}\p{M}" + _HAN_OUT + r"]+"
            + "(?:" + _CONTRACTIONS + r")?|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}" + _HAN_OUT + r"]+[\p{L}\p{M}"
            + _HAN_OUT + r"]*(?:" + _CONTRACTIONS + r")?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+")  # fmt: skip
_CUSTOM = {
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)": _GPT2,
    _LLAMA3: _LLAMA3,
    _QWEN2: _QWEN2,
    _QWEN35: _QWEN35,
    r"\p{Han}+": _KIMI_K2,
    r"\p{AFMoE_digits}": _DIGIT_GROUPS,
    r"\d{1,3}(?=(?:\d{3})*\b)": _DIGIT_GROUPS,
    "[^\\n]+|[\\n]+": "[^\\n]+|[\\n]+",
}

_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+"
)  # escaped: several are singletons an editor's normalization would change (U+212A KELVIN SIGN)
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_CJK_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_ASCII_PUNCT_WORD = r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
_GPT2_NO_TAIL = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_UPPER_LOWER = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+<C>"
                r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*<C>")  # fmt: skip
_CASED = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:" + _CONTRACTIONS[3:-1]
          + r")?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:"
          + _CONTRACTIONS[3:-1] + ")?")  # fmt: skip


@dataclass(frozen=True)
class PreType:
    """One of llama.cpp's LLAMA_VOCAB_PRE_TYPE_*: its regexes, applied in turn, each splitting
    the pieces the previous left, and whether words are GPT-2 byte-encoded before BPE."""

    regexes: tuple[str, ...]
    byte_encode: bool = True


PRE_TYPES: dict[str, PreType] = {
    "DEFAULT": PreType((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_NO_TAIL, r"\p{N}+", "[0-9][0-9][0-9]")),
    "LLAMA3": PreType((_LLAMA3,)),
    "JAIS2": PreType(
        (
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)"
            r"|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
        )
    ),  # fmt: skip
    "DEEPSEEK_LLM": PreType(
        (
            "[\r\n]",
            _DEEPSEEK_LETTERS,
            "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
            r"\s+$",
            _CJK,
            r"\p{N}+",
        )
    ),  # fmt: skip
    "DEEPSEEK3_LLM": PreType(
        (
            r"\p{N}{1,3}",
            _CJK_KANA,
            _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "SPARK2_5": PreType(
        (
            r"\p{N}{1,3}",
            _CJK_KANA,
            _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
            r"\p{N}",
        )
    ),  # fmt: skip
    "YOUTU": PreType(
        (
            "[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f"
            "\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
            _CASED + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "DEEPSEEK_CODER": PreType(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")),
    "FALCON": PreType((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_NO_TAIL, "[0-9][0-9][0-9]")),
    "STARCODER": PreType((r"\p{N}", _GPT2_NO_TAIL)),
    "GPT2": PreType((_GPT2_NO_TAIL,)),
    "QWEN2": PreType((_QWEN2,)),
    "QWEN35": PreType((_QWEN35,)),
    "BLOOM": PreType((_BLOOM,)),
    "VIKING": PreType((_BLOOM, r"\p{N}")),
    "TEKKEN": PreType(
        (_UPPER_LOWER.replace("<C>", "") + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",)
    ),
    "CHAMELEON": PreType(
        (
            "<sentinel:[0-9]+>",
            "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
            "([\\t\\n]|    |  )",
            r"\p{N}",
            r"[\p{P}!-/:-@\[-`{-~]",
            _GPT2_NO_TAIL,
        )
    ),  # fmt: skip
    "GPT4O": PreType(
        (
            _UPPER_LOWER.replace("<C>", "(?:" + _CONTRACTIONS[3:-1] + ")?")
            + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "GRANITE_EMB_MULTI": PreType(
        (
            _UPPER_LOWER.replace("<C>", "(?:" + _CONTRACTIONS[3:-1] + ")?").replace(r"(?=[\p{L}])", r"(?=[\p{L}\p{M}])")
            + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "TINY_AYA": PreType(
        (r"\d{1,3}(?=(?:\d{3})*\b)", _CASED + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    ),  # fmt: skip
    "KIMI_K2": PreType((r"\p{Han}+",)),
    "SUPERBPE": PreType((r"\p{N}+", r"(?=(\d{3})+(?!\d))")),
    "BAILINGMOE": PreType(
        (
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "SEED_CODER": PreType(
        (
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "UFAKZEKA": PreType((r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",)),
    "AFMOE": PreType(
        (
            r"\p{AFMoE_digits}",
            "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
            "\u0e00-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
            "\u1100-\u11ff]+",
            _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "LAGUNA": PreType(("[^\\n]+|[\\n]+", _QWEN2)),
    "EXAONE_MOE": PreType(
        (
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "GEMMA4": PreType(("[^\\n]+|[\\n]+",), byte_encode=False),
    "MINICPM5": PreType(
        (
            r"\p{N}{1,3}",
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
    ),  # fmt: skip
    "WHITESPACE": PreType((r"\S+",), byte_encode=False),
}
# Types that llama.cpp gives the same regexes as another.
for _alias, _same in {"DBRX": "LLAMA3", "SMAUG": "LLAMA3", "CHATGLM4": "LLAMA3", "HUNYUAN_DENSE": "DEEPSEEK3_LLM",
                      "JOYAI_LLM": "DEEPSEEK3_LLM", "HY_V4": "DEEPSEEK3_LLM", "REFACT": "STARCODER",
                      "COMMAND_R": "STARCODER", "SMOLLM": "STARCODER", "CODESHELL": "STARCODER", "EXAONE": "STARCODER",
                      "MINERVA": "STARCODER", "MELLUM2": "STARCODER", "MPT": "GPT2", "OLMO": "GPT2", "JAIS": "GPT2",
                      "TRILLION": "GPT2", "GRANITE_DOCLING": "GPT2", "STABLELM2": "QWEN2", "HUNYUAN": "QWEN2",
                      "SOLAR_OPEN": "QWEN2", "GROK_2": "QWEN2", "PORO": "BLOOM", "GPT3_FINNISH": "BLOOM",
                      "MINIMAX_M2": "GPT4O", "SARVAM_MOE": "GEMMA4"}.items():  # fmt: skip
    PRE_TYPES[_alias] = PRE_TYPES[_same]


# Types whose llama.cpp splitter is hand-written code that no regex here reproduces on every
# input (tests/unit/test_pretokenizers.py shows where): refused rather than approximated.
UNSUPPORTED_TYPES: dict[str, str] = {
    "KIMI_K2": "llama.cpp's hand-written Kimi-K2 splitter differs from its documented regex (e.g. on Khmer "
               "vowel signs); rfc has no exact equivalent",
    "AFMOE": "llama.cpp's AFMoE splitter differs from its documented regexes (e.g. on Thai text); rfc has no "
             "exact equivalent",
}  # fmt: skip


@dataclass(frozen=True)
class PreName:
    """What one `tokenizer.ggml.pre` value selects in llama.cpp's loader."""

    pre_type: str
    ignore_merges: bool = False  # a word that is itself a token is not merged further
    escape_whitespaces: bool = False  # spaces become "▁" before splitting (SentencePiece-style BPE)
    add_bos: bool = False  # BOS is added unless tokenizer.ggml.add_bos_token says otherwise


def _names(pre_type: str, *names: str, **flags: bool) -> dict[str, PreName]:
    return {name: PreName(pre_type, **flags) for name in names}


PRE_NAMES: dict[str, PreName] = {
    **_names("DEFAULT", "default"),
    **_names("MINICPM5", "minicpm5", ignore_merges=True),
    **_names(
        "LLAMA3",
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
        ignore_merges=True,
        add_bos=True,
    ),  # fmt: skip
    **_names("DEEPSEEK_LLM", "deepseek-llm"),
    **_names("DEEPSEEK_CODER", "deepseek-coder"),
    **_names("DEEPSEEK3_LLM", "deepseek-v3"),
    **_names("SPARK2_5", "spark2_5"),
    **_names("YOUTU", "youtu", ignore_merges=True),
    **_names("FALCON", "falcon"),
    **_names("MPT", "mpt"),
    **_names("STARCODER", "starcoder"),
    **_names(
        "GPT2",
        "gpt-2",
        "phi-2",
        "jina-es",
        "jina-de",
        "gigachat",
        "jina-v2-es",
        "jina-v2-de",
        "a.x-4.0",
        "mellum",
        "modern-bert",
        "jina-v1-en",
        "jina-v2-code",
        "roberta-bpe",
        "exaone4",
    ),  # fmt: skip
    **_names("JAIS2", "jais-2"),
    **_names("GEMMA4", "gemma4", "granite-embed-multi-311m", escape_whitespaces=True),
    **_names("SARVAM_MOE", "sarvam-moe", escape_whitespaces=True),
    **_names("WHITESPACE", "whitespace"),
    **_names("REFACT", "refact"),
    **_names("COMMAND_R", "command-r"),
    **_names("QWEN2", "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"),
    **_names("QWEN35", "qwen35"),
    **_names("STABLELM2", "stablelm2"),
    **_names("OLMO", "olmo"),
    **_names("DBRX", "dbrx"),
    **_names("SMAUG", "smaug-bpe"),
    **_names("PORO", "poro-chat"),
    **_names("CHATGLM4", "chatglm-bpe"),
    **_names("CHATGLM4", "glm4", "glm5", ignore_merges=True),
    **_names("VIKING", "viking"),
    **_names("JAIS", "jais"),
    **_names("TEKKEN", "tekken", ignore_merges=True, add_bos=True),
    **_names("SMOLLM", "smollm"),
    **_names("CODESHELL", "codeshell"),
    **_names("BLOOM", "bloom"),
    **_names("GPT3_FINNISH", "gpt3-finnish"),
    **_names("EXAONE", "exaone"),
    **_names("EXAONE_MOE", "exaone-moe"),
    **_names("CHAMELEON", "chameleon", add_bos=True),
    **_names("MINERVA", "minerva-7b"),
    **_names("GPT4O", "gpt-4o", "llama4", "kanana2", "talkie"),
    **_names("GRANITE_EMB_MULTI", "granite-embed-multi-97m", ignore_merges=True),
    **_names("TINY_AYA", "tiny_aya", "cohere2moe"),
    **_names("SUPERBPE", "superbpe"),
    **_names("TRILLION", "trillion"),
    **_names("GRANITE_DOCLING", "granite-docling"),
    **_names("BAILINGMOE", "bailingmoe", "bailingmoe2", "llada-moe"),
    **_names("SEED_CODER", "seed-coder"),
    **_names("HUNYUAN", "hunyuan"),
    **_names("HUNYUAN_DENSE", "hunyuan-dense"),
    **_names("HY_V4", "hy_v4"),
    **_names("JOYAI_LLM", "joyai-llm"),
    **_names("KIMI_K2", "kimi-k2"),
    **_names("UFAKZEKA", "ufakzeka"),
    **_names("GROK_2", "grok-2"),
    **_names("AFMOE", "afmoe"),
    **_names("LAGUNA", "laguna"),
    **_names("MINIMAX_M2", "minimax-m2"),
    **_names("SOLAR_OPEN", "solar-open"),
    **_names("MELLUM2", "mellum2"),
}


# llama.cpp's whitespace (unicode_set_whitespace: Unicode White_Space). The Oniguruma build in
# `tokenizers` reads \s as ASCII whitespace only, so \s and \S are spelled out.
_WHITESPACE = "\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_ASCII_WORD = "[0-9A-Za-z_]"


def _spell_whitespace(regex: str, literal_classes_skip_whitespace: bool) -> str:
    """\\s and \\S as llama.cpp's whitespace; with literal_classes_skip_whitespace, a character
    class holding non-ASCII literals no longer matches whitespace (llama.cpp's std::regex sees
    every non-ASCII whitespace character as U+000B, outside such ranges as U+0800-U+4E00)."""
    out, depth, i = [], 0, 0
    non_ascii = negated = False
    while i < len(regex):
        c = regex[i]
        if c == "\\" and i + 1 < len(regex):
            escape = regex[i : i + 2]
            if escape == "\\s":
                out.append(_WHITESPACE if depth else f"[{_WHITESPACE}]")
            elif escape == "\\S":
                assert not depth, "\\S inside a character class"
                out.append(f"[^{_WHITESPACE}]")
            else:
                out.append(escape)
            i += 2
            continue
        if c == "[":
            if depth == 0:
                non_ascii, negated = False, regex[i + 1 : i + 2] == "^"
            depth += 1
        elif c == "]" and depth:
            depth -= 1
            if depth == 0 and non_ascii and not negated and literal_classes_skip_whitespace:
                out.append(f"&&[^{_WHITESPACE}]")
        elif depth and ord(c) > 0x7F:
            non_ascii = True
        out.append(c)
        i += 1
    return "".join(out)


def _onig(regex: str) -> str:
    """llama.cpp's reading of a regex, written for Oniguruma. Outside the hand-written splitters,
    llama.cpp runs std::regex over text whose non-ASCII characters are folded to their general
    category, so \\p{Lu}, \\p{Ll}, \\p{Lt}, \\p{Lm} and \\p{Lo} all mean any letter, and \\d and
    \\b are ASCII-only."""
    if regex in _CUSTOM:
        return _spell_whitespace(_CUSTOM[regex], False)
    regex = re.sub(r"\\p\{L[ultmo]\}", r"\\p{L}", regex)
    boundary = f"(?:(?<={_ASCII_WORD})(?!{_ASCII_WORD})|(?<!{_ASCII_WORD})(?={_ASCII_WORD}))"
    return _spell_whitespace(regex.replace(r"\d", "[0-9]").replace(r"\b", boundary), True)


def split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": _onig(regex)}, "behavior": "Isolated", "invert": False}


def pre_tokenizers(pre_type: PreType) -> list[dict]:
    """The `tokenizers` pre-tokenizer sequence for one type (the byte mapping included)."""
    steps = [split(regex) for regex in pre_type.regexes]
    if pre_type.byte_encode:
        steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
    return steps
