"""A small LRU of prompt encodings: clients resend the same system prompt and few-shot
prefixes, and /models reports its counters (the seed API's `tokenizer_cache`)."""

import threading
from collections import OrderedDict

from rfc.runtime.loader import LoadedModel
from rfc.runtime.prompting import encode_prompt

_ID_BYTES = 8  # what the cache counts per stored token id


class PromptCache:
    def __init__(self, model: LoadedModel, max_entries: int = 256):
        self._model = model
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.bytes = 0

    def encode(self, text: str) -> list[int]:
        with self._lock:
            ids = self._entries.get(text)
            if ids is not None:
                self._entries.move_to_end(text)
                self.hits += 1
                return list(ids)
            self.misses += 1
        ids = tuple(encode_prompt(self._model, text))  # outside the lock: encoding may be slow
        if self._max:
            with self._lock:
                if text not in self._entries:
                    self._entries[text] = ids
                    self.bytes += _size(text, ids)
                while len(self._entries) > self._max:
                    old_text, old_ids = self._entries.popitem(last=False)
                    self.bytes -= _size(old_text, old_ids)
        return list(ids)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "bytes": self.bytes}


def _size(text: str, ids: tuple[int, ...]) -> int:
    return len(text.encode("utf-8", "surrogatepass")) + _ID_BYTES * len(ids)
