"""Special tokens that eat the whitespace beside them, as llama.cpp's tokenizer does.

llama.cpp's loader marks some special tokens LSTRIP or RSTRIP by the file's names (Phi-3's special
tokens and "</s>"; "<mask>" of the jina-v2 pre-tokenizers; "[MASK]" of a modern-bert: the
compiler lists them in the manifest's `tokenizer.strip`). When it splits a text at such a token,
it drops the ASCII whitespace (C's isspace) of the text on that side of it before tokenizing the
rest. `tokenizers`' own lstrip / rstrip drop any Unicode whitespace (a no-break space, an
ideographic space), so the runtime does it instead: `attach` gives the tokenizer a pre-tokenizer
that strips each stretch of text between special tokens as its neighbours say, then applies the
tokenizer.json's normalizer to it (which therefore moves out of the normalizer's place, so that
it sees the stretch after the stripping, as llama.cpp's own processing does), before the
tokenizer.json's pre-tokenizers. A stretch stripped to nothing is dropped, as llama.cpp drops it:
no "▁" prefix is added for it.
"""

from collections.abc import Mapping
from typing import Any

from tokenizers import NormalizedString, PreTokenizedString, Tokenizer, pre_tokenizers

ASCII_SPACE = " \t\n\v\f\r"  # C's isspace


class StripError(ValueError):
    """The bundle's tokenizer.strip is malformed."""


class _Strip:
    def __init__(self, lstrip: frozenset[int], rstrip: frozenset[int], normalizer) -> None:
        self._lstrip, self._rstrip, self._normalizer = lstrip, rstrip, normalizer

    def pre_tokenize(self, pretokenized: PreTokenizedString) -> None:
        splits = pretokenized.get_splits()

        def token(index: int) -> int | None:
            tokens = splits[index][2] if 0 <= index < len(splits) else None
            return tokens[0].id if tokens else None

        def cut(index: int, normalized: NormalizedString) -> list[NormalizedString]:
            text = normalized.normalized
            start = len(text) - len(text.lstrip(ASCII_SPACE)) if token(index - 1) in self._rstrip else 0
            stop = len(text.rstrip(ASCII_SPACE)) if token(index + 1) in self._lstrip else len(text)
            if stop <= start:
                return []
            if (start, stop) != (0, len(text)):
                normalized = normalized[start:stop]  # a slice keeps the alignments later steps transform
            if self._normalizer is not None:
                self._normalizer.normalize(normalized)
            return [normalized]

        pretokenized.split(cut)


def attach(tokenizer: Tokenizer, spec: Mapping[str, Any]) -> None:
    """Gives `tokenizer` llama.cpp's stripping beside the special tokens `spec` (the manifest's
    tokenizer.strip: {"lstrip": [ids], "rstrip": [ids]}) names."""
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    sets = []
    for key in ("lstrip", "rstrip"):
        ids = spec.get(key) if isinstance(spec, Mapping) else None
        if not isinstance(ids, list) or not all(type(i) is int and 0 <= i < n for i in ids):
            raise StripError(f"the tokenizer's strip.{key} is not a list of token ids")
        sets.append(frozenset(ids))
    strip = pre_tokenizers.PreTokenizer.custom(_Strip(sets[0], sets[1], tokenizer.normalizer))
    tokenizer.normalizer = None
    rest = tokenizer.pre_tokenizer
    tokenizer.pre_tokenizer = strip if rest is None else pre_tokenizers.Sequence([strip, rest])
