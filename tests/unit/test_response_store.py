"""The Responses API's store (runtime/server/response_store.py): bounded in count and in
bytes, the oldest dropped first, and each response its owner's alone."""

from rfc.runtime.server.response_store import ResponseStore


def _response(rid: str, text: str = "hello") -> dict:
    return {
        "id": rid,
        "object": "response",
        "output": [{"id": f"msg_{rid}", "type": "message", "content": [{"text": text}]}],
    }


def test_count_bound_drops_the_oldest():
    store = ResponseStore(max_count=2, max_bytes=1 << 20)
    for rid in ("a", "b", "c"):
        assert store.put("k1", _response(rid), [], [])
    assert store.get("a", "k1") is None and store.item("msg_a", "k1") is None
    assert store.get("b", "k1") and store.get("c", "k1") and store.stats()["responses"] == 2


def test_byte_bound_drops_the_oldest_and_refuses_what_cannot_fit():
    store = ResponseStore(max_count=100, max_bytes=1000)
    assert store.put("k1", _response("a", "x" * 400), [], [])
    assert store.put("k1", _response("b", "x" * 400), [], [])
    assert store.get("a", "k1") is None and store.get("b", "k1") is not None
    assert store.stats()["bytes"] <= 1000
    assert not store.put("k1", _response("c", "x" * 2000), [], [])  # alone over the bound: not kept
    assert store.get("c", "k1") is None and store.get("b", "k1") is not None
    assert not ResponseStore(max_count=0, max_bytes=1000).put("k1", _response("d"), [], [])


def test_a_response_is_its_owners_alone():
    store = ResponseStore(max_count=10, max_bytes=1 << 20)
    store.put("k1", _response("a"), [{"id": "msg_in", "type": "message"}], [])
    assert store.get("a", "k2") is None and store.get("a", None) is None
    assert store.item("msg_a", "k2") is None and store.item("msg_in", "k1") is not None
    assert not store.delete("a", "k2") and store.get("a", "k1") is not None
    assert store.delete("a", "k1") and store.get("a", "k1") is None and store.stats() == {"responses": 0, "bytes": 0}
