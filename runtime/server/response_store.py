"""Stored responses of the Responses API (`store`, the default): what `previous_response_id`,
`item_reference` input items, `GET /v1/responses/{id}`, its `input_items` and `DELETE` read.

Each response belongs to the client that made it (the API key's identity, as requests do:
runtime/server/middleware.py); another client, and a client without a key when keys are
configured, finds nothing (the 404 of an id that never existed). The store is bounded in
count and in bytes (the JSON of what it keeps): past either bound the oldest responses go
first. Nothing is written to disk: a restart forgets them."""

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredResponse:
    owner: str | None
    response: dict  # the response object, as GET /v1/responses/{id} answers it
    input_items: list[dict]  # the input, as items with ids (GET .../input_items)
    turns: list[dict]  # the whole conversation as chat turns, this response's output included
    size: int


class ResponseStore:
    def __init__(self, max_count: int, max_bytes: int):
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()
        self._items: dict[str, tuple[str, dict]] = {}  # output and input item id -> (response id, item)
        self._bytes = 0

    def put(self, owner: str | None, response: dict, input_items: list[dict], turns: list[dict]) -> bool:
        """Keeps a response; False when it alone is over the byte bound (it is not kept)."""
        size = len(json.dumps([response, input_items, turns], separators=(",", ":"), ensure_ascii=False).encode())
        if size > self._max_bytes or self._max_count < 1:
            return False
        stored = StoredResponse(owner, response, input_items, turns, size)
        with self._lock:
            self._drop(response["id"])
            self._responses[response["id"]] = stored
            self._bytes += size
            for item in [*input_items, *response.get("output", [])]:
                if isinstance(item.get("id"), str):
                    self._items[item["id"]] = (response["id"], item)
            while len(self._responses) > self._max_count or self._bytes > self._max_bytes:
                self._drop(next(iter(self._responses)))
        return True

    def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        with self._lock:
            stored = self._responses.get(response_id)
        return stored if stored is not None and stored.owner == owner else None

    def item(self, item_id: str, owner: str | None) -> dict | None:
        """An item of one of the owner's stored responses (an `item_reference`)."""
        with self._lock:
            found = self._items.get(item_id)
            stored = self._responses.get(found[0]) if found else None
        return found[1] if stored is not None and stored.owner == owner else None

    def delete(self, response_id: str, owner: str | None) -> bool:
        with self._lock:
            stored = self._responses.get(response_id)
            if stored is None or stored.owner != owner:
                return False
            self._drop(response_id)
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"responses": len(self._responses), "bytes": self._bytes}

    def _drop(self, response_id: str) -> None:
        stored = self._responses.pop(response_id, None)
        if stored is None:
            return
        self._bytes -= stored.size
        for item in [*stored.input_items, *stored.response.get("output", [])]:
            if self._items.get(item.get("id"), ("",))[0] == response_id:
                del self._items[item["id"]]
