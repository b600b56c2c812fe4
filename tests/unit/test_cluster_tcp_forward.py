"""Full anycast TCP, the kernel side as text: the ruleset, the link commands, the kernel's
socket table, netfilter log messages; and the command line's answers to bad options."""

from __future__ import annotations

import argparse
import socket
import struct

import pytest

from relay.cluster import cli as cluster_cli
from relay.cluster import tcp_forward as tf
from relay.cluster import tcp_nflog as nl
from relay.cluster.tcp_owner import Flow
from relay.runtime.errors import ConfigError
from relay.tunnel import cli as tunnel_cli

LAYOUT = tf.Layout(1, "10.2.1.2", ("10.255.0.1", "fd00:aa::1"), (80, 4444), (4444,))


def test_the_ruleset_keeps_held_handed_and_new_connections_apart() -> None:
    text = tf.nft_script(LAYOUT, [tf.Peer(2, "10.2.2.2"), tf.Peer(3, "10.2.3.2", False)])
    cut = text.index("table ip6 ")
    ip, ip6 = text[:cut], text[cut:]
    for part in (ip, ip6):
        svc_in = part[part.index("chain svc_in"):part.index("chain defrag")]
        rules = [r.strip() for r in svc_in.splitlines()[1:] if r.strip() not in ("", "}")]
        # order matters: what this node holds, the handshake's end, nothing else from the
        # link, new connections, the other nodes' connections, and the rest is held
        assert rules[0].endswith("@mine accept")
        assert "@half add @mine" in rules[1] and "delete @half" in rules[1]
        assert rules[2].startswith('iifname "atcp0"') and rules[2].endswith("drop")
        assert "vmap @peers" in rules[-2] and rules[-1] == "jump hold"
        assert "tproxy" in part              # fragments are reassembled first
        assert "dup to" in part[part.index("chain to_2"):part.index("chain to_3")]
        assert "jump hold" in part[part.index("chain to_3"):part.index("chain svc_out")]
        assert "maxseg size set" in part
    assert "maxseg size set 1410" in ip and "maxseg size set 1390" in ip6
    assert "10.2.2.2, 10.2.3.2" in ip and "chain link" in ip and "chain link" not in ip6
    assert "meta mark 0x61746370" in ip and "elements = { 4444 }" in ip


def test_a_node_without_ipv6_service_gets_only_its_underlay_filter() -> None:
    layout = tf.Layout(1, "fd00:2:1::2", ("10.255.0.1",), (80,))
    text = tf.nft_script(layout, [])
    ip6 = text[text.index("table ip6 "):]
    assert "chain link" in ip6 and "svc_in" not in ip6
    assert "set guard { type inet_service; }" in text     # no transport port: nothing guarded


def test_chain_and_element_commands() -> None:
    down = tf.chain_update(LAYOUT, tf.Peer(2, "10.2.2.2", alive=False), create=False)
    assert "flush chain ip anytun_atcp to_2" in down and "jump hold" in down
    assert "add chain ip6 anytun_atcp to_5" in tf.chain_update(LAYOUT, tf.Peer(5, "x"), True)
    f6 = Flow("fd00:aa::1", 80, "fd00:1::2", 5555)
    assert tf.peers_add(f6, 2) == \
        "add element ip6 anytun_atcp peers { fd00:1::2 . 5555 . 80 : goto to_2 }\n"
    assert tf.mine_delete(Flow("10.255.0.1", 4444, "10.1.1.2", 9)) == \
        "delete element ip anytun_atcp mine { 10.1.1.2 . 9 . 4444 }\n"
    assert "flush chain ip anytun_atcp link" in tf.link_filter(LAYOUT, ["10.2.2.2"])


def test_link_commands_change_only_what_changed() -> None:
    a, b = tf.Peer(2, "10.2.2.2"), tf.Peer(3, "10.2.3.2")
    ip, bridge = tf.link_commands(LAYOUT, [], [a])
    assert bridge == ["fdb replace 02:61:74:63:00:02 dev atcp0 dst 10.2.2.2 self permanent"]
    assert "route replace 169.254.0.2 via 169.254.0.2 dev atcp0 onlink table 24943" in ip
    assert any(line.startswith("neigh replace fe80::6174:2") for line in ip)
    assert tf.link_commands(LAYOUT, [a], [tf.Peer(2, "10.2.2.2", alive=False)]) == ([], [])
    ip, bridge = tf.link_commands(LAYOUT, [a], [b])
    assert "fdb del 02:61:74:63:00:02 dev atcp0 self" in bridge and len(bridge) == 2


PROC = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  t inode
   0: 0100FF0A:115C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1
   1: 0100FF0A:115C 0201010A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1002 1
   2: 0100FF0A:0050 0201010A:9C41 06 00000000:00000000 00:00000000 00000000     0        0 0 3
   3: 0100FF0A:0050 0201010A:9C42 03 00000000:00000000 00:00000000 00000000     0        0 0 3
   4: 0201020A:115C 0201010A:9C43 01 00000000:00000000 00:00000000 00000000     0        0 1003 1
   5: 0100FF0A:115C 0201010A:9C45 04 00000000:00000000 00:00000000 00000000     0        0 0 1
   6: garbage
"""
PROC6 = """  sl  local_address remote_address st tx rx tr retr uid timeout inode
   0: 0000000000000000FFFF00000100FF0A:0050 0000000000000000FFFF00000201010A:9C44 01 0 0 0 0 0 77
"""


def test_the_kernels_sockets_on_the_service_addresses() -> None:
    got = tf.parse_proc_tcp(PROC, {"10.255.0.1"}, {80, 4444})
    assert got == {Flow("10.255.0.1", 4444, "10.1.1.2", 40000): (tf.TCP_ESTABLISHED, True),
                   Flow("10.255.0.1", 80, "10.1.1.2", 40001): (6, False),   # TIME_WAIT
                   Flow("10.255.0.1", 4444, "10.1.1.2", 40005): (4, False)}  # an orphan
    assert tf.parse_proc_tcp(PROC6, {"10.255.0.1"}, {80}) == {
        Flow("10.255.0.1", 80, "10.1.1.2", 40004): (tf.TCP_ESTABLISHED, True)}


def _nlmsg(mtype: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body + \
        b"\0" * (-len(body) % 4)


def test_netfilter_log_messages() -> None:
    pkt = b"\x45" + b"\x00" * 39
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7))
    body += nl._attr(nl.NFULA_PREFIX, b"atcp-hold\0") + nl._attr(nl.NFULA_PAYLOAD, pkt)
    err = struct.pack("=i", -16) + b"\0" * 16
    ack = struct.pack("=i", 0) + b"\0" * 16
    msgs = list(nl.parse(_nlmsg(nl.NFNL_SUBSYS_ULOG << 8, body) + _nlmsg(nl.NLMSG_ERROR, err)
                         + _nlmsg(nl.NLMSG_ERROR, ack)))
    assert msgs == [("atcp-hold", pkt), 16, 0]
    # cut or lying lengths end the datagram instead of reading past it
    assert list(nl.parse(_nlmsg(nl.NFNL_SUBSYS_ULOG << 8, body)[:-8])) == []
    assert list(nl.parse(struct.pack("=IHHII", 8, 0, 0, 0, 0))) == []
    cfg = nl.config_message(7, 1, cmd=nl.NFULNL_CFG_CMD_BIND)
    assert struct.unpack_from("=IH", cfg) == (len(cfg), (4 << 8) | 1)
    with pytest.raises(ValueError):
        nl.NflogSocket(70000)


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    tunnel_cli.add_arguments(p)
    cluster_cli.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("argv, words", [
    (["--anycast-tcp-ports", "80"], "needs --anycast-tcp ADDR"),
    (["--anycast-tcp", "10.2.1.2"], "--sync redis"),
    (["--anycast-tcp", "10.2.1.2", "--sync", "redis://127.0.0.1:1"], "--cluster-key-file"),
    (["--anycast-tcp", "nonsense", "--sync", "redis://x:1", "--cluster-key-file", "{key}"],
     "unicast IP address"),
    (["--anycast-tcp", "10.2.1.2", "--sync", "redis://x:1", "--cluster-key-file", "{key}",
      "--anycast-tcp-ports", "80,http"], "not a port"),
    (["--anycast-tcp", "10.2.1.2", "--sync", "redis://x:1", "--cluster-key-file", "{key}",
      "--anycast-tcp-address", "10.2.1.2"], "is the anycast address"),
    (["--anycast-tcp", "10.2.1.2", "--sync", "redis://x:1", "--cluster-key-file", "{key}",
      "--anycast-tcp-timeout", "0.01"], "0.3..60"),
    (["--anycast-tcp", "10.2.1.2", "--sync", "redis://x:1", "--cluster-key-file", "{key}",
      "--anycast-tcp-vni", "0"], "1..16777215"),
])
def test_bad_anycast_tcp_options_are_one_line_errors(argv, words, tmp_path) -> None:
    key = tmp_path / "k"
    key.write_text("a cluster key, long enough")
    with pytest.raises(ConfigError) as exc:
        cluster_cli.settings_from_args(_args(*(a.format(key=key) for a in argv)))
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("argv, words", [
    (["--transport", "anycast-tcp,udp", "-r", "10.255.0.1", "-E", "x"], "give only anycast-tcp"),
    (["--keepalive", "2", "-E", "x"], "only applies to --transport anycast-tcp"),
    (["--transport", "anycast-tcp", "--keepalive", "0", "-E", "x"], "0.1..3600"),
    (["--transport", "anycast-udp", "-E", "x"], "unknown transport"),
])
def test_bad_transport_options_are_one_line_errors(argv, words) -> None:
    with pytest.raises(ConfigError) as exc:
        tunnel_cli.settings_from_args(_args(*argv))
    assert words in str(exc.value)


def test_a_client_of_the_anycast_address() -> None:
    s = tunnel_cli.settings_from_args(_args("--transport", "anycast-tcp", "-r", "10.255.0.1",
                                            "--keepalive", "2", "-E", "x", "-e", "client"))
    assert s.node.transports == ("anycast-tcp",) and s.node.keepalive == 2.0
