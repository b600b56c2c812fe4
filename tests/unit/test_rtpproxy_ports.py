"""The even/odd port-pair allocator."""

from __future__ import annotations

import pytest

from relay.rtpproxy.ports import PairAllocator, PortAllocator, PortsExhausted, parse_port_range


@pytest.mark.parametrize("text, expected", [
    ("30000-30999", (30000, 30998)), ("30001-30999", (30002, 30998)),
    ("30000-31000", (30000, 30998)), ("30000-30001", (30000, 30000)),
    ("2-65535", (2, 65534)),
])
def test_ranges_become_pairs(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text, words", [
    ("30000", "START-END"), ("a-b", "START-END"), ("30000-", "START-END"),
    ("-5-10", "START-END"), ("0-100", "1-65535"), ("30000-70000", "1-65535"),
    ("31000-30000", "above"), ("30000-30000", "no even/odd pair"),
    ("30001-30002", "no even/odd pair"),
])
def test_bad_ranges_are_explained(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_port_range(text)


def test_pairs_are_even_and_reused_last() -> None:
    a = PairAllocator(30000, 30006)
    assert isinstance(a, PortAllocator)
    assert a.capacity == 4
    got = [a.allocate_pair() for _ in range(4)]
    assert got == [30000, 30002, 30004, 30006]
    with pytest.raises(PortsExhausted, match="all 4 port pairs"):
        a.allocate_pair()
    a.release(30002)
    a.release(30000)
    assert a.in_use == 2
    assert a.allocate_pair() == 30002  # first freed, first reused
    assert a.allocate_pair() == 30000


def test_release_of_free_or_foreign_ports_changes_nothing() -> None:
    a = PairAllocator(30000, 30002)
    a.release(30000)
    a.release(12345)
    assert a.in_use == 0 and a.available == 2
    assert [a.allocate_pair(), a.allocate_pair()] == [30000, 30002]


def test_reserve_takes_an_exact_pair_once() -> None:
    a = PairAllocator(30000, 30006)
    assert a.reserve(30004)
    assert not a.reserve(30004)
    assert not a.reserve(30005)   # odd: RTCP half of a pair
    assert not a.reserve(40000)   # outside the range
    assert sorted(a.allocate_pair() for _ in range(3)) == [30000, 30002, 30006]
    with pytest.raises(PortsExhausted):
        a.allocate_pair()
    a.release(30004)
    assert a.allocate_pair() == 30004


def test_reserve_release_cycles_do_not_leak() -> None:
    a = PairAllocator(30000, 30002)
    for _ in range(100):
        assert a.reserve(30002)
        a.release(30002)
    assert a.available == 2
    assert {a.allocate_pair(), a.allocate_pair()} == {30000, 30002}
    with pytest.raises(PortsExhausted):
        a.allocate_pair()
