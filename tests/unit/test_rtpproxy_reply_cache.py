"""The control socket's reply cache (retransmitted commands answered the same): bounded by
its size and by its age, so a SIP proxy that sends each command from a new source port does
not keep thousands of stale replies (the soak saw the relay's memory grow with them)."""

from __future__ import annotations

from relay.rtpproxy.server import ReplyCache


def test_a_retransmission_within_the_ttl_gets_the_same_reply() -> None:
    cache = ReplyCache(size=8, ttl=30)
    cache.put(("10.0.0.1", 5060, b"c1"), b"c1 V", b"c1 20040107", 100.0)
    assert cache.get(("10.0.0.1", 5060, b"c1"), b"c1 V", 110.0) == b"c1 20040107"
    assert cache.get(("10.0.0.1", 5060, b"c1"), b"c1 X", 110.0) is None  # other bytes
    assert cache.get(("10.0.0.1", 5060, b"c1"), b"c1 V", 131.0) is None  # too old


def test_replies_older_than_the_ttl_are_dropped_not_kept_until_the_size_limit() -> None:
    cache = ReplyCache(size=4096, ttl=30)
    for i in range(3000):  # one command per second, each from a new source port
        cache.put(("10.0.0.1", 20000 + i, b"c"), b"c V", b"c 20040107", float(i))
    assert len(cache) <= 31
    cache.put(("10.0.0.1", 1, b"c"), b"c V", b"c 20040107", 10_000.0)
    assert len(cache) == 1


def test_the_size_bounds_a_burst() -> None:
    cache = ReplyCache(size=16, ttl=30)
    for i in range(100):
        cache.put(("10.0.0.1", i, b"c"), b"c V", b"r", 5.0)
    assert len(cache) == 16
    assert cache.get(("10.0.0.1", 99, b"c"), b"c V", 5.0) == b"r"
    assert cache.get(("10.0.0.1", 0, b"c"), b"c V", 5.0) is None


def test_the_cache_keeps_no_reference_to_the_received_datagram() -> None:
    """The received bytes object may sit in a page of its own (read into a large buffer and
    shrunk): the cache remembers a digest, so a datagram is freed once answered."""
    import sys

    cache = ReplyCache(size=8, ttl=30)
    data = b"c1 V " + bytes(range(50))
    before = sys.getrefcount(data)
    cache.put(("10.0.0.1", 5060, b"c1"), data, b"c1 20040107", 1.0)
    assert sys.getrefcount(data) == before
    assert cache.get(("10.0.0.1", 5060, b"c1"), b"c1 V " + bytes(range(50)), 2.0) \
        == b"c1 20040107"
