"""Loads a bundle's own parts: its tokenizer, and the context a sequence may be served
(assembling a loaded model, device and KV pool included, is runtime/engine/assemble.py)."""

import json
from collections.abc import Mapping
from typing import Any

from tokenizers import Tokenizer

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import TOKENIZER_FILE, Bundle
from rfc.runtime.model import special_strip, ugm


class ContextSizeError(ValueError):
    """--ctx-size asks for more than the model (or every model of a server) was trained for."""


def served_context_length(trained: int, ctx_size: int | None) -> int:
    """The tokens one sequence may hold: --ctx-size caps the trained context, never raises it
    (each model of a server takes min(N, its own); check_ctx_size refuses an N above all)."""
    return trained if ctx_size is None else min(ctx_size, trained)


def check_ctx_size(ctx_size: int | None, trained: dict[str, int]) -> None:
    """ContextSizeError unless 1 <= ctx_size <= the longest trained context of the models
    (`trained`: model id -> context length); a value above that would be no cap at all."""
    if ctx_size is None or not trained:
        return
    if ctx_size < 1:
        raise ContextSizeError(f"--ctx-size {ctx_size}: expected a number of tokens of at least 1")
    longest = max(trained, key=lambda m: trained[m])
    if ctx_size > trained[longest]:
        whose = f"the model {longest}" if len(trained) == 1 else f"the longest of the models, {longest}"
        raise ContextSizeError(
            f"--ctx-size {ctx_size} is larger than the context length of {whose} ({trained[longest]} tokens)"
        )


def load_tokenizer(bundle: Bundle) -> Tokenizer:
    path = bundle.file(TOKENIZER_FILE)
    try:
        return tokenizer_from_json(path.read_text(encoding="utf-8"), bundle.manifest.get("tokenizer", {}))
    except (ugm.UnigramError, special_strip.StripError) as e:
        raise BundleError(f"{path}: {e}") from None
    except Exception as e:  # `tokenizers` raises a bare Exception for any file it cannot read or parse
        raise BundleError(f"{path}: damaged, not a tokenizer ({' '.join(str(e).split())[:120]})") from None


def tokenizer_from_json(text: str, entry: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer of tokenizer.json `text` with what the manifest's tokenizer `entry` adds to
    it: a Unigram vocabulary's search (`unigram`: llama.cpp's, which tokenizer.json cannot say;
    `tokenizers` then loads the document without the model and normalizer that the search
    replaces, ugm.shell), special tokens that eat the ASCII whitespace beside them (`strip`)."""
    if (spec := entry.get("unigram")) is not None:
        document = json.loads(text)
        tokenizer = Tokenizer.from_str(json.dumps(ugm.shell(document)))
        ugm.attach(tokenizer, document, spec)
    else:
        tokenizer = Tokenizer.from_str(text)
    if (strip := entry.get("strip")) is not None:
        special_strip.attach(tokenizer, strip)
    return tokenizer
