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
        text = path.read_text(encoding="utf-8")
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:  # `tokenizers` raises a bare Exception for any file it cannot read or parse
        raise BundleError(f"{path}: damaged, not a tokenizer ({' '.join(str(e).split())[:120]})") from None
    try:
        attach_manifest(tokenizer, text, bundle.manifest.get("tokenizer", {}))
    except (ugm.UnigramError, special_strip.StripError) as e:
        raise BundleError(f"{path}: {e}") from None
    return tokenizer


def attach_manifest(tokenizer: Tokenizer, text: str, entry: Mapping[str, Any]) -> None:
    """Gives `tokenizer` (loaded from tokenizer.json `text`) what the manifest's tokenizer `entry` adds
    to it: a Unigram vocabulary's search (`unigram`: llama.cpp's, which tokenizer.json cannot say),
    special tokens that eat the ASCII whitespace beside them (`strip`)."""
    if (spec := entry.get("unigram")) is not None:
        ugm.attach(tokenizer, json.loads(text), spec)
    if (strip := entry.get("strip")) is not None:
        special_strip.attach(tokenizer, strip)
