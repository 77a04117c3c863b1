"""A small LRU of prompt encodings: clients resend the same system prompt and few-shot
prefixes, and /models reports its counters (the native API's `tokenizer_cache`, docs/native-api.md).

Bounded in real bytes, and only for prompts the model can take: a prompt
is keyed by its sha256 (the text itself is never kept) and its ids are stored packed, four
bytes each, so the count matches the memory. A text too long for the context is refused
before tokenizing when its size alone proves it (no token covers more than the vocabulary's
longest token), and after bounded work otherwise: a long text is tokenized on a bounded pool,
a piece at a time, and refused as soon as its pieces hold more tokens than the context can
(without that, ten 900 KB prompts were tokenized in full, 333,332 tokens each, before
the context check refused them). Neither is cached.
"""

import hashlib
import sys
import threading
from array import array
from collections import OrderedDict

from rfc.runtime.engine.assemble import LoadedModel
from rfc.runtime.engine.prompting import encode_prompt
from rfc.runtime.engine.requests import ContextOverflow
from rfc.runtime.server.context_errors import context_error
from rfc.runtime.server.errors import unavailable
from rfc.runtime.core.work_pool import Busy, WorkPool

_ENTRY_OVERHEAD = 160  # the OrderedDict slot and the objects around the two payloads
# Texts longer than this are tokenized on the pool, in pieces of about this size.
LONG_TEXT_BYTES = 32 << 10
# What cutting a text at a piece boundary can add to its token count: a word cut in two where
# no whitespace was near, or SentencePiece's dummy prefix on the next piece.
_CUT_SLACK_TOKENS = 16


def longest_token_bytes(model: LoadedModel) -> int:
    """An upper bound on the text bytes one token can stand for."""
    vocab = model.tokenizer.get_vocab(with_added_tokens=True)
    return max((len(t.encode("utf-8", "surrogatepass")) for t in vocab), default=1) or 1


class PromptCache:
    def __init__(self, model: LoadedModel, max_bytes: int = 32 << 20, pool: WorkPool | None = None):
        self._model = model
        self._pool = pool
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, array] = OrderedDict()
        # Normalization can shrink text (NFC composes accents): twice the bound stays safe.
        self._max_text_bytes = 2 * model.context_length * longest_token_bytes(model)
        self.hits = 0
        self.misses = 0
        self.bytes = 0

    def encode(self, text: str, field: str = "prompt") -> list[int]:
        """Token ids of `text`; a 400 naming `field` when it cannot fit the context."""
        raw = text.encode("utf-8", "surrogatepass")
        if len(raw) > self._max_text_bytes:
            raise self._too_long(field, f"{len(raw)} bytes", self._model.context_length, True)
        key = hashlib.sha256(raw).digest()
        with self._lock:
            ids = self._entries.get(key)
            if ids is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return ids.tolist()
            self.misses += 1
        if len(raw) > LONG_TEXT_BYTES and self._pool is not None:
            try:
                encoded = self._pool.run(lambda: self._encode_long(text, field))
            except Busy as e:
                raise unavailable(f"{e}; retry later") from None
        else:
            encoded = encode_prompt(self._model, text)  # outside the lock: encoding may be slow
        if len(encoded) > self._model.context_length:
            raise self._too_long(field, f"{len(encoded)} tokens", len(encoded))
        packed = array("i", encoded)
        size = _size(key, packed)
        if size <= self._max_bytes:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = packed
                    self.bytes += size
                while self.bytes > self._max_bytes:
                    old_key, old = self._entries.popitem(last=False)
                    self.bytes -= _size(old_key, old)
        return encoded

    def _encode_long(self, text: str, field: str) -> list[int]:
        """Counts the tokens of `text` a piece at a time, refusing once the pieces prove it
        too long; only a text that may fit is tokenized whole (its tokens are then bounded by
        the context, its bytes by the size check)."""
        ctx = self._model.context_length
        tokenizer = self._model.tokenizer
        counted, cuts = 0, 0
        for piece in _pieces(text, LONG_TEXT_BYTES):
            counted += len(tokenizer.encode(piece, add_special_tokens=False).ids)
            if counted - cuts * _CUT_SLACK_TOKENS > ctx:
                raise self._too_long(field, f"more than {ctx} tokens", ctx, True)
            cuts += 1
        return encode_prompt(self._model, text)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "bytes": self.bytes}

    def _too_long(self, field: str, size: str, tokens: int, at_least: bool = False):
        """The 400 for a text of `tokens` tokens (`at_least`: more than that) past the context."""
        ctx, trained = self._model.context_length, self._model.trained_context_length
        limit = (
            f"the model's context of {ctx} tokens"
            if ctx == trained
            else f"the served context of {ctx} tokens (--ctx-size; the model's is {trained})"
        )
        return context_error(
            ContextOverflow(field, f"'{field}' ({size}) cannot fit {limit}", ctx, tokens, at_least=at_least), trained
        )


def _pieces(text: str, size: int):
    """`text` in consecutive pieces of about `size` characters, each cut before a whitespace
    character where one is near (so words stay whole and the count stays close)."""
    start, n = 0, len(text)
    while start < n:
        end = min(n, start + size)
        if end < n:
            cut = max(text.rfind(" ", start + size // 2, end), text.rfind("\n", start + size // 2, end))
            if cut > start:
                end = cut
        yield text[start:end]
        start = end


def _size(key: bytes, ids: array) -> int:
    return sys.getsizeof(key) + sys.getsizeof(ids) + _ENTRY_OVERHEAD
