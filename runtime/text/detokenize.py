"""Incremental detokenization: token ids in, complete-character text deltas out."""

from collections.abc import Sequence

import tokenizers

# Prompt ids kept as context for the first generated tokens (vLLM uses 5): enough for the
# decoder to see that the first generated token is not the start of the text, so it keeps
# its leading space.
_PROMPT_CONTEXT = 5
# A UTF-8 character has at most 4 bytes, and every token at least one, so a character that
# starts `_CHAR_SPAN` tokens before the end is complete, and its decode can no longer change.
_CHAR_SPAN = 4
# Tokens held back before emitting the part that can no longer change: only a run of
# invalid bytes (decoded as U+FFFD) gets this far, valid text is emitted every character.
_MAX_PENDING = 2 * _CHAR_SPAN

_REPLACEMENT = "\ufffd"
# Control tokens that stay in the text although special: gpt-oss's harmony markers, which the
# reasoning splitter and the tool-call parser read (llama.cpp's chat parsers keep them too:
# "preserved tokens"). Only where the vocabulary has harmony's channel tokens.
HARMONY_MARKERS = ("<|start|>", "<|channel|>", "<|message|>", "<|constrain|>")


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas with the Hugging Face
    `tokenizers.Tokenizer`, correct for SentencePiece byte-fallback tokens
    (<0xE2><0x82><0xAC> -> '€') and byte-level BPE where one character spans tokens: never
    emits U+FFFD for an incomplete sequence; emits it only if the bytes are truly invalid at
    the end (flush).

    The prefix-offset / read-offset technique of vLLM and TGI: `_ids` is the window, from
    the prefix offset on (earlier ids are dropped, so each push costs O(window), not
    O(length)), and its first `_read` ids have been emitted. Each push decodes the window and
    its emitted part, and emits the difference once it no longer ends in U+FFFD (an
    incomplete character). Both decodes start at the same token, so the decoder treats the
    start of the window (SentencePiece's leading space) the same way in both.

    For valid text the deltas join to the full decode. For invalid byte runs the U+FFFD may
    fall differently than in a full decode: byte-fallback decoders judge a whole run of byte
    tokens at once, which no bounded window can reproduce."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        keep_leading_space: bool = False,
    ):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        added = tokenizer.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        # kept: harmony's markers (the rest of the special tokens are never put in the window,
        # so a window holding kept ones is decoded without skipping)
        by_text = {t.content: i for i, t in added.items() if t.special}
        self._kept = (
            frozenset(by_text[m] for m in HARMONY_MARKERS if m in by_text)
            if "<|channel|>" in by_text and "<|message|>" in by_text
            else frozenset()
        )
        context = [int(i) for i in prompt_ids if int(i) not in self._special_ids][-_PROMPT_CONTEXT:]
        if not context and keep_leading_space:
            # Nothing but special tokens (BOS) before a generated continuation: SentencePiece
            # decoders would strip the first piece's leading space as the start of the text.
            # llama.cpp prints it (" Once upon..."), so decode after a plain anchor piece that
            # is never emitted.
            context = tokenizer.encode("a", add_special_tokens=False).ids[-1:]
        self._ids = context
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """New text since the last push (may be "")."""
        if self._skip_special and token_id in self._special_ids and token_id not in self._kept:
            # Decoding skips it anyway; keeping it out of the window keeps the window short.
            return ""
        self._ids.append(token_id)
        emitted = self._decode(self._read)
        text = self._decode(len(self._ids))
        if len(text) > len(emitted) and not text.endswith(_REPLACEMENT):
            return self._advance(text[len(emitted) :], len(self._ids))
        if len(self._ids) - self._read > _MAX_PENDING:
            return self._emit_settled(emitted, text)
        return ""

    def flush(self) -> str:
        """Text still held back, invalid bytes included (as U+FFFD)."""
        emitted = self._decode(self._read)
        text = self._decode(len(self._ids))
        return self._advance(text[len(emitted) :], len(self._ids))

    def _emit_settled(self, emitted: str, text: str) -> str:
        """Emit the part of a long held-back run that later tokens can no longer change."""
        settled_end = len(self._ids) - _CHAR_SPAN
        settled = self._decode(settled_end)
        if len(settled) > len(emitted) and text.startswith(settled):
            return self._advance(settled[len(emitted) :], settled_end)
        return ""

    def _advance(self, delta: str, read: int) -> str:
        """Mark `_ids[:read]` emitted; the window now starts at the old read offset."""
        del self._ids[: self._read]
        self._read = read - self._read
        return delta

    def _decode(self, end: int) -> str:
        return self._tokenizer.decode(self._ids[:end], skip_special_tokens=self._skip_special and not self._kept)
