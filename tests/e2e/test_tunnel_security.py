"""What an attacker on the path can and cannot do to an anytun-relay endpoint: wrong keys,
forged and junk datagrams, replays from elsewhere, fuzzed input; and the endpoint's own duties:
a restarted peer recovers, no stray bytes on the device, oversized inner packets are handled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import AnycastLab, Node
from tests.e2e import tunnel_util as tu

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_tunnel_security")]  # one shared lab

SENDER = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_DGRAM)
for line in sys.stdin:
    line = line.strip()
    if line == 'END':
        print('done', flush=True)
        continue
    try:
        s.sendto(bytes.fromhex(line), (host, port))
    except OSError as exc:
        print('error', exc, flush=True)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[AnycastLab]:
    with tu.tunnel_lab("tunsec", "uanytun", "tcpdump", clients=2) as lab:
        yield lab


class Sender:
    """A UDP sender in the attacker's namespace, fed over stdin."""

    def __init__(self, node: Node, host: str, port: int = 4444) -> None:
        self.proc = node.popen([sys.executable, "-c", SENDER, host, str(port)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, *datagrams: bytes) -> None:
        for d in datagrams:
            self.proc.stdin.write(d.hex() + "\n")  # type: ignore[union-attr]
        self.proc.stdin.write("END\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        assert self.proc.stdout.readline().strip() == "done"  # type: ignore[union-attr]

    def close(self) -> None:
        tu.stop(self.proc)


def relay_server(lab: AnycastLab, *extra: str) -> subprocess.Popen:
    return tu.start(lab.server(1), tu.relay("-d", "tun7", "-n", "10.9.0.1/24", "-E", "secret",
                                            "-e", "left", *extra), "tun7", "10.9.0.1")


def uanytun_client(lab: AnycastLab, passphrase: str = "secret", *extra: str,
                   node: Node | None = None) -> subprocess.Popen:
    node = node or lab.client
    return tu.start(node, tu.uanytun("-d", "tun8", "-n", "10.9.0.2/24", "-E", passphrase,
                                     "-e", "right", "-r", lab.server(1).ip4, *extra),
                    "tun8", "10.9.0.2")


def conn_status(lab: AnycastLab) -> dict:
    return tu.tunnel_status(lab.server(1), "tun7")["connections"][0]


def dev_rx_packets(node: Node, dev: str) -> int:
    out = node.run(["cat", f"/sys/class/net/{dev}/statistics/rx_packets"]).stdout
    return int(out)


def test_wrong_keys_never_reach_the_device(lab: AnycastLab) -> None:
    srv = relay_server(lab)
    bad = uanytun_client(lab, "not-the-secret")
    try:
        assert tu.ping(lab.client, "10.9.0.1", 3) == 0
        c = conn_status(lab)
        assert c["rx_packets"] == 0 and c["remote"] is None and c["drops"]["auth"] >= 3
        assert dev_rx_packets(lab.server(1), "tun7") == 0
        tu.stop(bad)
        good = uanytun_client(lab)
        try:
            tu.ping_until(lab.client, "10.9.0.1")
            assert conn_status(lab)["remote"] == f"{lab.client.ip4}:4444"
        finally:
            tu.stop(good)
    finally:
        tu.stop(bad), tu.stop(srv)


def test_forged_datagrams_lock_nobody_out(lab: AnycastLab) -> None:
    from relay.satp import PT_IPV4, Role, SatpContext, Suite, from_passphrase
    srv = relay_server(lab)
    attacker = Sender(lab.clients[1], lab.server(1).ip4)
    try:
        guess = SatpContext(Suite(), from_passphrase("guess", 16), Role.RIGHT)
        attacker.send(
            b"\x00\x00\x00\x00\x00\x00\x00\x07" + os.urandom(40),   # another MUX
            guess.seal(0, 0, 0, PT_IPV4, b"\x45" + bytes(40)),      # our MUX, wrong key
            b"", b"\x00", b"\x00" * 7, b"\x00" * 12,                # empty, truncated
            os.urandom(65000),                                       # oversized junk
        )
        time.sleep(0.3)
        c = conn_status(lab)
        assert c["remote"] is None and c["rx_packets"] == 0
        client = uanytun_client(lab)  # the real peer arrives after the junk
        try:
            tu.ping_until(lab.client, "10.9.0.1")
            assert tu.ping(lab.server(1), "10.9.0.2") == 3
            st = tu.tunnel_status(lab.server(1), "tun7")
            assert st["connections"][0]["remote"] == f"{lab.client.ip4}:4444"
            drops = st["dataplane"]["drops"]
            assert drops["unknown_mux"] >= 1 and drops["auth"] >= 1 and drops["short"] >= 3
        finally:
            tu.stop(client)
    finally:
        attacker.close(), tu.stop(srv)


def _captured_datagrams(lab: AnycastLab, tmp: str, window: list[str]) -> tuple[list[bytes],
                                                                               list]:
    srv = relay_server(lab, *window)
    client = uanytun_client(lab)
    cap = tu.Capture(lab.server(1), tmp, "eth0", f"udp and src host {lab.client.ip4}")
    tu.ping_until(lab.client, "10.9.0.1")
    assert tu.ping(lab.client, "10.9.0.1", 3) == 3
    datagrams = [tu.udp_payload(tu.ip_of_frame(*p)) for p in cap.stop()]
    assert len(datagrams) >= 3
    return datagrams, [srv, client]


@pytest.mark.parametrize("window", [[], ["-w", "0"]], ids=["default-window", "w0"])
def test_replays_are_dropped_and_never_re_point_the_peer(lab: AnycastLab, tmp_path,
                                                         window: list[str]) -> None:
    datagrams, procs = _captured_datagrams(lab, str(tmp_path / "c.pcap"), window)
    attacker = Sender(lab.clients[1], lab.server(1).ip4)
    try:
        before = conn_status(lab)
        attacker.send(*datagrams)
        time.sleep(0.3)
        after = conn_status(lab)
        assert after["remote"] == f"{lab.client.ip4}:4444"  # not the replayer
        if window:  # -w 0: anytun's behaviour, replays pass but never move the peer
            assert after["rx_packets"] == before["rx_packets"] + len(datagrams)
        else:
            assert after["rx_packets"] == before["rx_packets"]
            assert after["drops"].get("replay", 0) == len(datagrams)
        assert tu.ping(lab.server(1), "10.9.0.2", 3) == 3  # replies still reach the client
    finally:
        attacker.close()
        for p in procs:
            tu.stop(p)


_junk = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=0, max_size=1600).map(lambda b: b"\x00\x00\x00\x05\x00\x00\x00\x00" + b),
    st.builds(lambda seq, mux, body: seq.to_bytes(4, "big") + b"\x00\x00" +
              mux.to_bytes(2, "big") + body, st.integers(0, 2**32 - 1), st.integers(0, 3),
              st.binary(max_size=200)),
    st.integers(1400, 9000).map(os.urandom),
)


def test_fuzzed_datagrams_never_crash_the_daemon(lab: AnycastLab) -> None:
    srv = relay_server(lab)
    client = uanytun_client(lab)
    attacker = Sender(lab.clients[1], lab.server(1).ip4)
    try:
        tu.ping_until(lab.client, "10.9.0.1")
        rx_before = conn_status(lab)["rx_packets"]

        @settings(max_examples=150, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(_junk, min_size=1, max_size=8))
        def fuzz(batch: list[bytes]) -> None:
            attacker.send(*batch)

        fuzz()
        assert srv.poll() is None, "the daemon died"
        assert tu.ping(lab.client, "10.9.0.1", 3) == 3
        c = conn_status(lab)
        assert c["remote"] == f"{lab.client.ip4}:4444"
        assert c["rx_packets"] == rx_before + 3 + 0  # only the pings got through
    finally:
        attacker.close(), tu.stop(client), tu.stop(srv)


@pytest.mark.parametrize("window,before", [([], 10), (["-w", "16"], 40)],
                         ids=["seen-seqs", "below-window"])
def test_restarted_peer_recovers_without_reopening_replays(lab: AnycastLab, window: list[str],
                                                           before: int) -> None:
    """uanytun restarts at seq 0; the relay accepts the new run once the old stream has been
    quiet for the restart period (docs/tunnel.md), whether the new seqs were seen before or
    lie below the window."""
    srv = relay_server(lab, *window)
    client = uanytun_client(lab)
    try:
        tu.ping_until(lab.client, "10.9.0.1")
        assert tu.ping(lab.client, "10.9.0.1", before, 0.02) == before
        tu.stop(client)
        client = uanytun_client(lab)
        tu.ping(lab.client, "10.9.0.1", 15, 0.2)  # the restarted run (and the quiet period)
        tu.ping_until(lab.client, "10.9.0.1", timeout=15)
        drops = conn_status(lab)["drops"]
        assert drops.get("replay" if not window else "too_old", 0) >= 1
        assert tu.ping(lab.client, "10.9.0.1", 3) == 3
    finally:
        tu.stop(client), tu.stop(srv)


def test_seq_file_keeps_a_restarted_relay_acceptable_to_a_windowed_peer(lab: AnycastLab,
                                                                         tmp_path) -> None:
    """uanytun with -w 64 drops a restarted anytun-relay's seqs (they look old) unless the
    relay continues from its seq file -- which also avoids reusing keystream."""
    server = lab.server(1)
    seqfile = str(tmp_path / "seq.json")

    def relay(*extra: str) -> subprocess.Popen:
        return tu.start(lab.client, tu.relay("-d", "tun8", "-n", "10.9.0.2/24", "-E", "secret",
                                             "-e", "right", "-r", server.ip4, *extra),
                        "tun8", "10.9.0.2")

    for extra in ([], ["--seq-file", seqfile]):
        peer = tu.start(server, tu.uanytun("-d", "tun7", "-n", "10.9.0.1/24", "-E", "secret",
                                           "-e", "left", "-w", "64"), "tun7", "10.9.0.1")
        try:
            r = relay(*extra)
            tu.ping_until(lab.client, "10.9.0.1")
            assert tu.ping(lab.client, "10.9.0.1", 80, 0.01) >= 78
            tu.stop(r)
            r = relay(*extra)
            got = tu.ping(lab.client, "10.9.0.1", 3)
            tu.stop(r)
            if extra:
                assert got == 3
            else:
                assert got == 0  # seq 0..2 again: uanytun calls them replays
        finally:
            tu.stop(peer)


def test_no_stray_bytes_on_the_device(lab: AnycastLab, tmp_path) -> None:
    srv = relay_server(lab)
    client = uanytun_client(lab)
    cap = tu.Capture(lab.server(1), str(tmp_path / "tun.pcap"), "tun7", "icmp")
    try:
        tu.ping_until(lab.client, "10.9.0.1")
        assert tu.ping(lab.client, "10.9.0.1", 3, wait=1) == 3
        packets = [tu.ip_of_frame(*p) for p in cap.stop()]
        assert len(packets) >= 6
        for ip in packets:
            assert len(ip) == int.from_bytes(ip[2:4], "big")  # exactly the IP packet
    finally:
        tu.stop(client), tu.stop(srv)


def test_oversized_inner_packets_are_fragmented_or_refused_cleanly(lab: AnycastLab) -> None:
    srv = relay_server(lab, "--mtu", "4000")  # bigger than any datagram the peer can read
    client = uanytun_client(lab)
    try:
        tu.ping_until(lab.client, "10.9.0.1")
        big = lab.server(1).run(["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "2000",
                                 "10.9.0.2"], check=False)
        assert "mtu = 1580" in big.stdout + big.stderr  # ICMP "fragmentation needed"
        # without DF the relay fragments the inner packet and the peer reassembles it
        out = lab.server(1).run(["ping", "-n", "-c", "2", "-W", "2", "-M", "dont", "-s", "3000",
                                 "10.9.0.2"], check=False).stdout
        assert "2 received" in out
        lab.server(1).run(["ip", "-6", "addr", "add", "fd00:9::1/64", "dev", "tun7", "nodad"])
        lab.client.run(["ip", "-6", "addr", "add", "fd00:9::2/64", "dev", "tun8", "nodad"])
        # IPv6: "packet too big" teaches the sending kernel, which then fragments itself
        lab.server(1).run(["ping", "-6", "-n", "-c", "1", "-W", "1", "-s", "2000", "fd00:9::2"],
                          check=False)
        tu.wait_for(lambda: tu.ping(lab.server(1), "fd00:9::2", 1) == 1, 5, "ipv6 ping")
        out = lab.server(1).run(["ping", "-6", "-n", "-c", "2", "-W", "2", "-s", "2000",
                                 "fd00:9::2"], check=False).stdout
        assert "2 received" in out
        assert srv.poll() is None
        assert tu.tunnel_status(lab.server(1), "tun7")["dataplane"]["drops"]["oversize"] >= 2
    finally:
        tu.stop(client), tu.stop(srv)
