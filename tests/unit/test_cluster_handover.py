"""Open tunnel mode across nodes, the pure part: port blocks, member records from the shared
state (untrusted), which members get flows, and the kernel setup derived from them."""

from __future__ import annotations

import itertools

import pytest

from relay.cluster import handover as ho

RANGE = ho.DEFAULT_PORTS
BLOCK = ho.DEFAULT_BLOCK


def member(node: str, sid: int, address: str = "", **kw) -> ho.Member:
    ports = kw.pop("ports", None) or ho.port_block(sid, *RANGE, BLOCK)
    return ho.Member(node, sid, address or f"10.2.{sid}.2", ports, **kw)


def test_port_blocks_follow_the_sender_id_and_never_overlap() -> None:
    blocks = [ho.port_block(sid, *RANGE, BLOCK) for sid in range(22)]
    assert blocks[0] == (10240, 11263) and blocks[1] == (11264, 12287)
    for (a, b), (c, d) in itertools.combinations(blocks, 2):
        assert b < c or d < a
    assert all(RANGE[0] <= lo <= hi <= RANGE[1] for lo, hi in blocks)


@pytest.mark.parametrize(("sid", "first", "last", "size", "words"), [
    (22, *RANGE, BLOCK, "sender ID 22 has no port block"),
    (0, 100, 50, 16, "bad port range"),
    (0, *RANGE, 8, "does not fit"),
    (0, 1000, 1010, 16, "does not fit"),
])
def test_impossible_blocks_are_explained(sid, first, last, size, words) -> None:
    with pytest.raises(ho.HandoverError, match=words):
        ho.port_block(sid, first, last, size)


def test_parse_range() -> None:
    assert ho.parse_range("10240-32767") == (10240, 32767)
    for bad in ("10240", "a-b", "0-10", "500-100", "1-70000"):
        with pytest.raises(ho.HandoverError):
            ho.parse_range(bad)


def test_member_records_round_trip_and_garbage_is_refused() -> None:
    m = member("s1", 1)
    assert ho.Member.from_data("s1", m.to_data()) == m
    good = m.to_data()
    for bad in (None, [], {}, {**good, "sid": "1"}, {**good, "sid": True},
                {**good, "sid": 70000}, {**good, "ports": [5, 1]}, {**good, "ports": [1]},
                {**good, "vxlan": [0, 4789]}, {**good, "vxlan": [1 << 24, 4789]},
                {**good, "address": "not an ip"}, {**good, "address": "0.0.0.0"},
                {**good, "address": "224.0.0.1"}, {**good, "address": "127.0.0.1"},
                {**good, "address": 7}):
        with pytest.raises(ho.HandoverError):
            ho.Member.from_data("x", bad)


def test_usable_peers_and_problems() -> None:
    me = member("s1", 1)
    ok = member("s2", 2)
    others = [
        ok,
        me,                                                      # itself: skipped silently
        member("twin", 1, "10.2.9.9"),                           # claims my sender ID
        member("moved", 3, ports=(11264, 12287)),                # not its sender ID's block
        member("far", 4, ports=ho.port_block(4, *RANGE, BLOCK), vni=5),
        member("v6", 5, "fd00:2:5::2"),
        member("a", 6), member("b", 6, "10.2.66.2"),             # one sender ID, two nodes
        member("huge", 40, ports=(1, 2)),                        # no block at all here
    ]
    peers, problems = ho.usable_peers(me, others, RANGE, BLOCK)
    assert peers == [ok]
    text = "\n".join(problems)
    for words in ("twin: claims this node's sender ID 1", "moved: port block 11264-12287",
                  "far: uses VXLAN 5:4789", "v6: address fd00:2:5::2 is of another family",
                  "sender ID 6 is claimed by a, b", "huge: port block 1-2 is not the block "
                  "of sender ID 40 here (none)"):
        assert words in text, text
    # the answer does not depend on the order records arrived in
    for perm in itertools.islice(itertools.permutations(others), 50):
        assert ho.usable_peers(me, list(perm), RANGE, BLOCK) == (peers, problems)


def layout(snat6: str | None = "fd00:aa::1") -> ho.Layout:
    return ho.Layout(member("s1", 1), "tun7", "10.255.0.1", snat6)


def test_nft_script_hands_other_blocks_to_their_owners() -> None:
    peers = [member("s2", 2), member("s3", 3)]
    script = ho.nft_script(layout(), peers)
    # atomic replace of both families' tables, created if missing
    assert script.count("delete table ip anytun_ho_tun7") == 1
    assert script.count("delete table ip6 anytun_ho_tun7") == 1
    b2, b3 = ho.port_block(2, *RANGE, BLOCK), ho.port_block(3, *RANGE, BLOCK)
    assert (f"ip daddr 10.255.0.1 meta l4proto {{ tcp, udp }} th dport {b2[0]}-{b2[1]} counter "
            f'dup to 169.254.0.2 device "tun7.ho" drop') in script
    assert f'th dport {b3[0]}-{b3[1]} counter dup to fe80::616e:3 device "tun7.ho" drop' \
        in script
    # mid-flow TCP goes to every peer; only members may send VXLAN
    assert ('dup to 169.254.0.2 device "tun7.ho" dup to 169.254.0.3 device "tun7.ho" drop'
            in script)
    assert "udp dport 4789 ip daddr 10.2.1.2 ip saddr != { 10.2.2.2, 10.2.3.2 } counter drop" \
        in script
    mine = ho.port_block(1, *RANGE, BLOCK)
    assert f"snat ip to 10.255.0.1:{mine[0]}-{mine[1]}" in script
    assert f"snat ip6 to [fd00:aa::1]:{mine[0]}-{mine[1]}" in script
    assert script.count("{") == script.count("}")


def test_nft_script_without_peers_accepts_no_vxlan_and_hands_nothing() -> None:
    script = ho.nft_script(layout(None), [])
    assert "udp dport 4789 ip daddr 10.2.1.2 counter drop" in script
    assert "dup" not in script and "table ip6" not in script.replace(
        "table ip6 anytun_ho_tun7 {}\ndelete table ip6", "")


def test_peer_commands_are_a_diff() -> None:
    lay = layout()
    p2, p3 = member("s2", 2), member("s3", 3)
    ip, bridge = ho.peer_commands(lay, [], [p2])
    assert bridge == ["fdb replace 02:61:6e:79:00:02 dev tun7.ho dst 10.2.2.2 self permanent"]
    assert "neigh replace 169.254.0.2 lladdr 02:61:6e:79:00:02 dev tun7.ho nud permanent" in ip
    assert f"route replace 169.254.0.2 via 169.254.0.2 dev tun7.ho onlink table " \
        f"{ho.DEFAULT_TABLE}" in ip
    assert f"route replace fe80::616e:2 via fe80::616e:2 dev tun7.ho table {ho.DEFAULT_TABLE}" \
        in ip
    assert ho.peer_commands(lay, [p2], [p2]) == ([], [])
    ip, bridge = ho.peer_commands(lay, [p2], [p3])
    assert bridge[0] == "fdb del 02:61:6e:79:00:02 dev tun7.ho self"
    assert any(x.startswith("route del 169.254.0.2") for x in ip)
    assert any(x.startswith("route replace 169.254.0.3") for x in ip)
    moved = member("s2", 2, "10.2.22.2")
    ip, bridge = ho.peer_commands(lay, [p2], [moved])
    assert bridge[-1].endswith("dst 10.2.22.2 self permanent")


def test_device_names_fit_the_kernel_limit() -> None:
    assert ho.device_name("tun7") == "tun7.ho"
    assert len(ho.device_name("a-very-long-device")) <= 15
    assert ho.mac_of(0x1234) == "02:61:6e:79:12:34"
    assert ho.hop4(0x1234) == "169.254.18.52" and ho.hop6(0x1234) == "fe80::616e:1234"
