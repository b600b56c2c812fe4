"""anytun-relay to anytun-relay over the seeds' transports: anycast UDP, anycast light UDP
(UDP-Lite, checksum over the header only) and unicast TCP with anycast initialisation (the
client resolves the anycast address through AARP and stays on that server)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from lab import AA4, AA6, AnycastLab
from tests.conftest import require
from tests.e2e import tunnel_util as tu

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_tunnel_transports")]  # one shared lab


@pytest.fixture(scope="module")
def lab() -> Iterator[AnycastLab]:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    with AnycastLab(servers=2, clients=1, tag="tuntransp") as lab:
        yield lab


def _pair(lab: AnycastLab, transport: str, remote: str, *server_extra: str):
    s, c = lab.server(1), lab.client
    srv = tu.start(s, tu.relay("-d", "tun7", "-n", "10.9.0.1/24", "-E", "secret", "-e", "left",
                               "--transport", transport, *server_extra), "tun7", "10.9.0.1")
    cli = tu.start(c, tu.relay("-d", "tun8", "-n", "10.9.0.2/24", "-E", "secret", "-e", "right",
                               "--transport", transport, "-r", remote), "tun8", "10.9.0.2")
    return srv, cli


@pytest.mark.parametrize("outer", [4, 6])
def test_anycast_udp(lab: AnycastLab, outer: int) -> None:
    lab.move(1)
    aa = AA4 if outer == 4 else AA6
    srv, cli = _pair(lab, "udp", aa, "-i", aa)  # the server answers from the anycast address
    try:
        tu.ping_until(lab.client, "10.9.0.1")
        assert tu.ping(lab.server(1), "10.9.0.2") == 3
        tu.transfer(lab.client, lab.server(1), "10.9.0.1", 1_000_000)
        conn = tu.tunnel_status(lab.server(1), "tun7")["connections"][0]
        assert conn["remote"].startswith(lab.client.ip4 if outer == 4 else f"[{lab.client.ip6}]")
        # the client still talks to the anycast address: replies came from it
        peer = tu.tunnel_status(lab.client, "tun8")["connections"][0]["remote"]
        assert peer == (f"{aa}:4444" if outer == 4 else f"[{aa}]:4444")
    finally:
        tu.stop(cli), tu.stop(srv)


def test_udplite_covers_only_the_header(lab: AnycastLab, tmp_path) -> None:
    lab.move(1)
    srv, cli = _pair(lab, "udplite", lab.server(1).ip4)
    cap = tu.Capture(lab.server(1), str(tmp_path / "lite.pcap"), "eth0", "ip proto 136")
    try:
        tu.ping_until(lab.client, "10.9.0.1")
        assert tu.ping(lab.client, "10.9.0.1") == 3
        packets = [tu.ip_of_frame(*p) for p in cap.stop()]
        assert packets, "no UDP-Lite packet seen on the wire"
        for ip in packets:
            assert ip[9] == 136
            ihl = (ip[0] & 15) * 4
            coverage = int.from_bytes(ip[ihl + 4: ihl + 6], "big")
            assert coverage == 8, "checksum coverage must be the UDP-Lite header only"
        tu.transfer(lab.server(1), lab.client, "10.9.0.2", 1_000_000)
        # the sockets really are UDP-Lite (IP protocol 136), none is plain UDP
        lite = lab.server(1).run(["cat", "/proc/net/udplite"]).stdout
        udp = lab.server(1).run(["cat", "/proc/net/udp"]).stdout
        assert ":115C " in lite and ":115C " not in udp
        st = tu.tunnel_status(lab.server(1), "tun7")
        assert st["transports"][0]["kind"] == "udplite"
        assert "(udplite)" in st["connections"][0]["remote"]
    finally:
        tu.stop(cli), tu.stop(srv)


def test_tcp_with_anycast_initialisation_stays_on_one_server(lab: AnycastLab) -> None:
    lab.move(1)
    responders = [s.popen([sys.executable, "-m", "aarp.cli.responder", "--anycast", AA4])
                  for s in lab.servers]
    servers = [tu.start(s, tu.relay("-d", "tun7", "-n", "10.9.0.1/24", "-E", "secret",
                                    "-e", "left", "--transport", "udp,tcp"), "tun7", "10.9.0.1")
               for s in lab.servers]
    cli = tu.start(lab.client, tu.relay("-d", "tun8", "-n", "10.9.0.2/24", "-E", "secret",
                                        "-e", "right", "--transport", "tcp", "-r", AA4),
                   "tun8", "10.9.0.2")
    try:
        tu.ping_until(lab.client, "10.9.0.1", timeout=15)
        conn = tu.tunnel_status(lab.client, "tun8")["connections"][0]
        assert conn["remote"] == f"{lab.server(1).ip4}:4444 (tcp)"  # the UA, not the AA
        lab.move(2)  # anycast now goes to server 2; the TCP tunnel stays with server 1
        assert tu.ping(lab.client, "10.9.0.1", 3) == 3
        tu.transfer(lab.client, lab.server(1), "10.9.0.1", 1_000_000)
        tu.transfer(lab.server(1), lab.client, "10.9.0.2", 1_000_000)
        s1 = tu.tunnel_status(lab.server(1), "tun7")["connections"][0]
        s2 = tu.tunnel_status(lab.server(2), "tun7")["connections"][0]
        assert s1["remote"].startswith(f"{lab.client.ip4}:") and s1["remote"].endswith("(tcp)")
        assert s2["remote"] is None and s2["rx_packets"] == 0
    finally:
        lab.move(1)
        for p in (cli, *servers, *responders):
            tu.stop(p)
