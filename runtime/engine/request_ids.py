"""Request ids: unguessable.

/status/{id} and /cancel/{id} act on whatever request an id names, so an id is a capability:
knowing one must mean having been told it. Ids are random 53-bit integers (exact in every
JSON number, as the native API types them) from the OS's CSPRNG, unique among the ids this
server issued recently. One source is shared by every engine of a server, so an id names
one request of one model.
"""

import secrets
import threading
from collections import deque

_BITS = 53
_REMEMBERED = 1 << 16


class RandomIds:
    """An endless iterator of fresh random ids; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: set[int] = set()
        self._order: deque[int] = deque()

    def __iter__(self) -> "RandomIds":
        return self

    def __next__(self) -> int:
        with self._lock:
            while True:
                value = secrets.randbits(_BITS)
                if value and value not in self._recent:
                    break
            self._recent.add(value)
            self._order.append(value)
            if len(self._order) > _REMEMBERED:
                self._recent.discard(self._order.popleft())
            return value
