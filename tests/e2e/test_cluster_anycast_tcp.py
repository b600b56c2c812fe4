"""Full anycast TCP in the cluster lab: two anytun-relay nodes, a real Redis, real kernel TCP.

An anytun-relay client keeps one TCP connection to the anycast address (`--transport
anycast-tcp`). While the node that holds it lives, the other node hands its segments over
(route moves 1 -> 2 -> 1 mid-transfer); when it is killed, the other node re-creates the
connection with TCP_REPAIR. An unmodified curl downloads from an HTTP server on the anycast
address across a route move. Fragments split between the nodes are dropped; segments of unknown
connections, and records forged or replayed, change nothing. Both ends run the C data plane
(the hub of relay/fastpath, its anycast framing in stream.c); the checks of that read its
counters, and a last case runs the client on the Python plane against the C nodes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import AA4, AA6, AnycastLab
from lab.services import make_blob, wait_port
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("cluster-anycast-tcp")]
REDIS_PORT = 6394
TUNNEL_PORT = 4444
HTTP_PORT = 80
SINK_PORT = 9000
KEEPALIVE = "1"
INNER = "10.8.0.0/16"


def node_config(j: int) -> str:
    return (f'[node]\ninterface = "{AA4}"\nsender_id = {j}\ndevice_name = "tun7"\n'
            f'transports = ["udp", "anycast-tcp"]\nkeepalive = {KEEPALIVE}\n'
            f'ifconfig = ["10.8.0.1/16"]\n\n[defaults]\nrole = "server"\n\n'
            '[[connection]]\nmux = 1\nname = "client1"\npassphrase = "pass-1"\n'
            'routes = ["10.8.1.0/24"]\n')


RST_COUNTER = """
table ip atcp_watch {
  counter rst_in { }
  counter rst_out { }
  counter answers { }
  chain input { type filter hook input priority 0; policy accept;
    ip saddr 10.255.0.1 tcp flags rst counter name rst_in
    ip saddr 10.255.0.1 tcp dport 30000-30999 counter name answers; }
  chain output { type filter hook output priority 0; policy accept;
    ip daddr 10.255.0.1 tcp flags rst counter name rst_out; }
}
"""


class Cluster:
    def __init__(self, lab: AnycastLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.host = lab.hosts[0]            # Redis, and the far end of transfers
        self.url = f"redis://{self.host.ip4}:{REDIS_PORT}/0"
        self.key = tmp / "cluster.key"
        self.key.write_text("anycast tcp cluster key for the lab\n")
        self.nodes: dict[int, subprocess.Popen] = {}
        self.procs: list[subprocess.Popen] = []
        self.client: subprocess.Popen | None = None

    def start_redis(self) -> None:
        self.procs.append(self.host.popen(
            [require_program("redis-server"), "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--dir", str(self.tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.host, REDIS_PORT)

    def redis(self, *args: str) -> str:
        return self.host.run(["redis-cli", "-p", str(REDIS_PORT), *args]).stdout

    def start_node(self, j: int) -> None:
        node = self.lab.server(j)
        path = self.tmp / f"s{j}.toml"
        path.write_text(node_config(j))
        self.nodes[j] = tu.start(node, tu.relay(
            "--config", str(path), "--sync", self.url, "--sync-node", f"s{j}",
            "--cluster-key-file", str(self.key), "--anycast-tcp", node.ip4,
            "--anycast-tcp-address", f"{AA4},{AA6}",
            "--anycast-tcp-ports", f"{HTTP_PORT},{SINK_PORT}", dataplane="auto"), "tun7",
            "10.8.0.1")
        tu.wait_for(lambda: self.status(j) is not None, 15, f"node {j}'s anycast TCP")

    def kill_node(self, j: int) -> None:
        proc = self.nodes.pop(j)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        tu.stop(proc)

    def status(self, j: int) -> dict | None:
        proc = self.lab.server(j).run([*tu.RELAY, "status", "--json", "tun7"], check=False,
                                      timeout=20)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout).get("anycast_tcp")

    def start_client(self, dataplane: str = "auto") -> None:
        c = self.lab.client
        self.client = tu.start(c, tu.relay(
            "-r", AA4, "-o", str(TUNNEL_PORT), "--transport", "anycast-tcp", "--keepalive",
            KEEPALIVE, "-m", "1", "-E", "pass-1", "-e", "client", "-d", "tun8",
            "-n", "10.8.1.2/16", dataplane=dataplane), "tun8", "10.8.1.2")
        c.run(["ip", "route", "replace", f"{self.host.ip4}/32", "dev", "tun8"])
        c.run(["nft", "-f", "-"], input=RST_COUNTER)

    def tunnel(self, j: int | None) -> dict:
        """The tunnel status of node j, or of the client (None)."""
        if j is None:
            return tu.tunnel_status(self.lab.client, "tun8")
        return tu.tunnel_status(self.lab.server(j), "tun7")

    def stream_transport(self, j: int | None) -> dict:
        return next(t for t in self.tunnel(j)["transports"] if t["kind"] == "anycast-tcp")

    def hub(self, j: int | None) -> dict:
        """The C hub's status (kind, counters) of node j or of the client."""
        return self.tunnel(j).get("external_dataplane") or {}

    def client_transport(self) -> dict:
        return self.stream_transport(None)

    def watched(self) -> dict[str, int]:
        out = self.lab.client.run(["nft", "-j", "list", "counters", "table", "ip",
                                   "atcp_watch"]).stdout
        return {i["counter"]["name"]: i["counter"]["packets"]
                for i in json.loads(out)["nftables"] if "counter" in i}

    def rsts(self) -> int:
        w = self.watched()
        return w["rst_in"] + w["rst_out"]

    def move(self, j: int) -> None:
        """The anycast route, and the route back to the tunnel's inner addresses."""
        self.lab.move(j)
        self.lab.router.run(["ip", "route", "replace", INNER, "via", self.lab.server(j).ip4])

    def close(self) -> None:
        for p in [*([self.client] if self.client else []), *self.nodes.values(), *self.procs]:
            tu.stop(p)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require_program("redis-server")
    require_program("nft")
    with AnycastLab(servers=2, clients=1, hosts=1, tag="atcp") as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("atcp"))
        try:
            for node in lab.servers:
                node.host.sysctl("net.ipv4.ip_forward", 1)
            c.start_redis()
            c.start_node(1)
            c.start_node(2)
            tu.wait_for(lambda: len((c.status(1) or {}).get("members", [])) == 1
                        and len((c.status(2) or {}).get("members", [])) == 1, 10,
                        "the nodes to see each other")
            c.move(1)
            c.start_client()
            tu.ping_until(lab.client, "10.8.0.1", timeout=15)
            yield c
        finally:
            c.close()


class Pinger:
    """ping every 50 ms through the tunnel, with a timestamp per reply."""

    def __init__(self, node, addr: str, seconds: float) -> None:
        self.proc = node.popen(["ping", "-D", "-n", "-i", "0.05", "-c", str(int(seconds / 0.05)),
                                "-W", "2", addr], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)

    def result(self) -> tuple[int, int, float]:
        """(sent, received, the longest time without a reply in seconds)."""
        out, _ = self.proc.communicate(timeout=120)
        line = next(ln for ln in out.splitlines() if "received" in ln)
        sent, got = int(line.split()[0]), int(line.split(",")[1].split()[0])
        stamps = [float(ln[1:ln.index("]")]) for ln in out.splitlines()
                  if ln.startswith("[") and "bytes from" in ln]
        gap = max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)
        return sent, got, gap


def _background_transfer(src, dst, addr: str, size: int, errors: list, port: int
                         ) -> threading.Thread:
    def run() -> None:
        try:
            tu.transfer(src, dst, addr, size=size, port=port)
        except BaseException as exc:   # reported by the test
            errors.append(exc)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_the_c_plane_carries_the_stream_at_both_ends(cluster: Cluster) -> None:
    """The C hub holds the stream at the client and at node 1 and moves the packets: its
    counters grow with a ping, and the transport's figures are the hub's."""
    lab = cluster.lab
    before = {j: cluster.hub(j) for j in (None, 1)}
    py_before = {j: cluster.stream_transport(j)["received"] for j in (None, 1)}
    assert tu.ping(lab.client, "10.8.0.1", count=20, interval=0.05) >= 19
    time.sleep(0.3)   # the plane's figures reach the table every 0.1 s
    for j in (None, 1):
        hub, t = cluster.hub(j), cluster.stream_transport(j)
        where = "the client" if j is None else f"node {j}"
        assert hub.get("kind") == "c-hub" and hub["running"], f"{where}: {hub}"
        assert t["plane"] == "c-hub" and t["streams_on_c_plane"] == 1, f"{where}: {t}"
        assert hub["streams"] == 1, f"{where}: {hub}"
        assert hub["counters"]["rx"] - before[j]["counters"]["rx"] >= 19, where
        assert hub["counters"]["tx"] - before[j]["counters"]["tx"] >= 19, where
        # the transport's figures are the hub's: every datagram went through its stream
        got = hub["counters"]["anycast_rx"] - before[j]["counters"]["anycast_rx"]
        assert got >= 19 and t["received"] - py_before[j] == got, f"{where}: {t}"
        assert hub["counters"]["anycast_tx"] - before[j]["counters"]["anycast_tx"] >= 19
        # the keep-alives of the agreed interval come from the hub at both ends
        assert hub["counters"]["stream_keepalives_tx"] >= 1, where
        assert hub["counters"]["stream_keepalives_rx"] >= 1, where
        assert t["keepalives_sent"] >= hub["counters"]["stream_keepalives_tx"], where
    # the same figures as the Python plane would show: the connection's counters moved
    conn = cluster.tunnel(1)["connections"][0]
    assert conn["rx_packets"] >= 19 and conn["remote"].endswith("(anycast-tcp)")


def test_garbage_and_half_frames_on_a_stream_are_skipped_and_counted(cluster: Cluster
                                                                     ) -> None:
    """A TCP connection to the tunnel's port that sends garbage, forged frames and half a
    frame: node 1's hub skips and counts the bytes, nothing reaches the tunnel, the node and
    the real tunnel carry on; the stream is closed when it ends."""
    lab = cluster.lab
    hub0 = cluster.hub(1)["counters"]
    script = f"""if True:
        import socket, time
        s = socket.create_connection(("{AA4}", {TUNNEL_PORT}), 5)
        junk = bytes(range(256)) * 16
        forged = bytes([0xA7, 0x53, 0, 40]) + bytes(6) + bytes([0, 1]) + bytes(32)
        s.sendall(junk + forged + bytes([0xA7, 0x53, 0xFF, 0xFF]) + bytes(64)
                  + bytes([0xA7, 0x53, 0, 200]) + bytes(50))
        time.sleep(1.0)
        s.close()
    """
    lab.client.run([sys.executable, "-c", script], timeout=20)
    tu.wait_for(lambda: cluster.hub(1)["counters"]["stream_skipped"] -
                hub0["stream_skipped"] >= 4096, 10, "the hub to count the skipped bytes")
    tu.wait_for(lambda: cluster.hub(1)["streams"] == 1, 10, "the junk stream to be closed")
    hub1 = cluster.hub(1)["counters"]
    # the garbage, the forgery (its tag does not verify) and the frame too long for the
    # tunnel are skipped; the half frame at the end waited for its rest until the close
    assert hub1["stream_skipped"] - hub0["stream_skipped"] == 4096 + 44 + 68, hub1
    assert hub1["stream_resyncs"] == hub0["stream_resyncs"], "junk was taken for a frame"
    assert hub1["auth"] == hub0["auth"], "a forged frame reached the connection"
    assert tu.ping(lab.client, "10.8.0.1", count=10, interval=0.05) >= 9
    assert cluster.client_transport()["connects"] == 1


def test_tunnel_survives_route_moves_while_the_owner_lives(cluster: Cluster) -> None:
    lab = cluster.lab
    before = cluster.client_transport()
    rsts = cluster.rsts()
    handed = (cluster.status(1) or {})["kernel"]["handed_in"]["packets"]
    for node in lab.servers:
        lab.limit(node, "12mbit")
    errors: list = []
    try:
        pinger = Pinger(lab.client, "10.8.0.1", 6.0)
        t = _background_transfer(lab.client, lab.server(1), "10.8.0.1", 3_000_000, errors,
                                 5001)
        time.sleep(1.5)
        cluster.move(2)
        time.sleep(2.0)
        cluster.move(1)
        t.join(90)
        sent, got, gap = pinger.result()
    finally:
        for node in lab.servers:
            lab.unlimit(node)
        cluster.move(1)
    assert not errors, errors
    after = cluster.client_transport()
    print(f"anycast-tcp, owner alive: {sent - got} of {sent} pings lost over two route "
          f"moves, longest gap {gap * 1000:.0f} ms")
    assert after["connects"] == before["connects"] == 1, "the client reconnected"
    assert after["local"] == before["local"], "the client's TCP socket changed"
    assert cluster.rsts() == rsts, "a reset reached the client's link"
    handed_now = (cluster.status(1) or {})["kernel"]["handed_in"]["packets"]
    assert handed_now > handed, "node 2 handed nothing to node 1"
    assert sent - got <= 6, f"{sent - got} of {sent} pings lost"


def test_tunnel_is_taken_over_when_its_node_is_killed(cluster: Cluster) -> None:
    lab = cluster.lab
    before = cluster.client_transport()
    rsts = cluster.rsts()
    taken = (cluster.status(2) or {})["events"].get("taken_over", 0)
    lab.limit(lab.hosts[0], "12mbit")
    errors: list = []
    try:
        pinger = Pinger(lab.client, cluster.host.ip4, 6.0)
        t = _background_transfer(lab.client, cluster.host, cluster.host.ip4, 3_000_000,
                                 errors, 5002)
        time.sleep(1.5)
        cluster.kill_node(1)
        cluster.move(2)
        t.join(90)
        sent, got, gap = pinger.result()
    finally:
        lab.unlimit(lab.hosts[0])
    assert not errors, errors
    st2 = cluster.status(2) or {}
    after = cluster.client_transport()
    print(f"anycast-tcp, owner killed: took over after {gap * 1000:.0f} ms without replies; "
          f"{sent - got} of {sent} pings lost; client stream resynced {after['resyncs']} "
          f"times, skipped {after['skipped_bytes']} bytes")
    assert st2["events"].get("taken_over", 0) == taken + 1, st2["events"]
    # node 2's hub carries the re-created connection: it started mid-stream and resynced
    t2 = cluster.stream_transport(2)
    assert t2["plane"] == "c-hub" and t2["streams_on_c_plane"] == 1, t2
    assert cluster.hub(2)["counters"]["stream_resyncs"] >= 1, cluster.hub(2)
    assert after["connects"] == before["connects"] == 1, "the client reconnected"
    assert after["local"] == before["local"], "the client's TCP socket changed"
    assert cluster.rsts() == rsts, "a reset reached the client's link"
    assert gap < 10, f"no reply for {gap:.1f}s"
    # node 1 comes back; the connection stays with node 2, which now holds it
    cluster.start_node(1)
    cluster.move(1)
    try:
        tu.wait_for(lambda: any(m["node"] == "s1" and m["state"] == "alive"
                                for m in (cluster.status(2) or {}).get("members", [])), 10,
                    "node 1 to be back")
        assert tu.ping(lab.client, "10.8.0.1", count=10, interval=0.05) == 10
    finally:
        cluster.move(1)


def test_a_restarted_node_takes_its_own_connection_back(cluster: Cluster) -> None:
    """The node that holds the tunnel dies and starts again at once, the route stays: the new
    process finds its predecessor's record and re-creates the connection itself."""
    lab = cluster.lab
    owner = next(j for j in (1, 2) if (cluster.status(j) or {})["connections"]["here"])
    before = cluster.client_transport()
    rsts = cluster.rsts()
    cluster.move(owner)
    try:
        cluster.kill_node(owner)
        cluster.start_node(owner)
        tu.ping_until(lab.client, "10.8.0.1", timeout=15)
        assert tu.ping(lab.client, "10.8.0.1", count=10, interval=0.05) >= 9
        st = cluster.status(owner) or {}
        assert st["events"].get("taken_over", 0) == 1, st["events"]
    finally:
        cluster.move(1)
    after = cluster.client_transport()
    assert after["connects"] == before["connects"] == 1 and after["local"] == before["local"]
    assert cluster.rsts() == rsts


def test_a_stopped_node_hands_its_connection_over_at_once(cluster: Cluster) -> None:
    """A clean stop (SIGTERM, as after a drain): the node closes its sockets silently and says
    it is drained; the other node takes the connection over without waiting for a timeout."""
    lab = cluster.lab
    owner = next(j for j in (1, 2) if (cluster.status(j) or {})["connections"]["here"])
    other = 3 - owner
    before = cluster.client_transport()
    taken = (cluster.status(other) or {})["events"].get("taken_over", 0)
    rsts = cluster.rsts()
    cluster.move(other)
    try:
        assert tu.ping(lab.client, "10.8.0.1", count=5, interval=0.05) == 5   # handed over
        tu.stop(cluster.nodes.pop(owner))
        tu.wait_for(lambda: (cluster.status(other) or {})["events"].get("taken_over", 0)
                    == taken + 1, 10, "the takeover")
        assert tu.ping(lab.client, "10.8.0.1", count=10, interval=0.05) >= 9
        members = (cluster.status(other) or {})["members"]
        assert [m["state"] for m in members if m["node"] == f"s{owner}"] == ["drained"]
    finally:
        cluster.start_node(owner)
        cluster.move(1)
    after = cluster.client_transport()
    assert after["connects"] == before["connects"] == 1 and after["local"] == before["local"]
    assert cluster.rsts() == rsts


@pytest.fixture(scope="module")
def website(cluster: Cluster) -> Iterator[bytes]:
    """The same 6 MB file served over HTTP on the anycast address by both nodes (any TCP
    service: Python's http.server, no shim, nothing of ours in it)."""
    d = cluster.tmp / "www"
    blob = make_blob(d / "blob", 6_000_000).read_bytes()
    servers = [cluster.lab.server(j).popen(
        [sys.executable, "-m", "http.server", "--bind", "::", "--directory", str(d),
         str(HTTP_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for j in (1, 2)]
    for j in (1, 2):
        wait_port(cluster.lab.server(j), HTTP_PORT)
    yield blob
    for p in servers:
        tu.stop(p)


@pytest.mark.parametrize("host", [AA4, f"[{AA6}]"], ids=["ipv4", "ipv6"])
def test_plain_curl_downloads_across_a_route_move(cluster: Cluster, website: bytes,
                                                  host: str) -> None:
    lab = cluster.lab
    require_program("curl")
    rsts = cluster.rsts()
    handed = (cluster.status(1) or {})["kernel"]["handed_in"]["packets"]
    out = cluster.tmp / "got"
    lab.limit(lab.client, "16mbit")
    try:
        cluster.move(1)
        curl = lab.client.popen(["curl", "-sS", "--max-time", "60", "-o", str(out),
                                 f"http://{host}/blob"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        cluster.move(2)
        _, err = curl.communicate(timeout=90)
    finally:
        lab.unlimit(lab.client)
        cluster.move(1)
    assert curl.returncode == 0, err
    assert out.read_bytes() == website, "the download is not intact"
    handed_now = (cluster.status(1) or {})["kernel"]["handed_in"]["packets"]
    print(f"curl ({host}) across a move: node 2 handed {handed_now - handed} segments to "
          "node 1")
    assert handed_now - handed > 100, "the download did not cross node 2"
    assert cluster.rsts() == rsts


def test_a_service_port_that_is_not_kept_is_reset_by_the_move(cluster: Cluster,
                                                              website: bytes) -> None:
    """The control: the same download from a port the cluster does not keep breaks when the
    route moves (node 2's kernel knows nothing of the connection and resets it)."""
    lab = cluster.lab
    d = cluster.tmp / "www"
    servers = [lab.server(j).popen(
        [sys.executable, "-m", "http.server", "--bind", AA4, "--directory", str(d), "8080"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for j in (1, 2)]
    lab.limit(lab.client, "16mbit")
    try:
        for j in (1, 2):
            wait_port(lab.server(j), 8080)
        cluster.move(1)
        curl = lab.client.popen(["curl", "-sS", "--max-time", "30", "-o", "/dev/null",
                                 f"http://{AA4}:8080/blob"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        cluster.move(2)
        _, err = curl.communicate(timeout=60)
    finally:
        lab.unlimit(lab.client)
        cluster.move(1)
        for p in servers:
            tu.stop(p)
    assert curl.returncode != 0 and "reset" in err.lower(), err


SEGMENT = """
import socket, struct, sys
from relay.cluster.tcp_owner import tcp_checksum
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
tcp = struct.pack("!HHIIBBHHH", sport, dport, 123456, 654321, 5 << 4, 0x18, 502, 0, 0)
tcp += b"not a connection of anybody" * 4
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 4242, 0x4000, 64, 6, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(3):
    s.sendto(tcp_checksum(ip + tcp), (dst, 0))
"""


def _segment(cluster: Cluster, sport: int, dport: int) -> None:
    cluster.lab.client.run([sys.executable, "-c", SEGMENT, cluster.lab.client.ip4,
                            str(sport), AA4, str(dport)])


def _sockets(cluster: Cluster, j: int, port: int) -> str:
    return cluster.lab.server(j).run(["ss", "-Htan", f"dport = :{port}"]).stdout.strip()


def test_a_segment_of_no_known_connection_gets_no_state_and_no_answer(cluster: Cluster
                                                                      ) -> None:
    cluster.move(1)
    before = (cluster.status(1) or {})["events"]
    answers = cluster.watched()["answers"]
    for sport, dport in ((30010, TUNNEL_PORT), (30011, HTTP_PORT)):
        _segment(cluster, sport, dport)
    tu.wait_for(lambda: (cluster.status(1) or {})["events"].get("unknown", 0)
                >= before.get("unknown", 0) + 2, 5, "the segments to be judged")
    time.sleep(0.5)
    after = (cluster.status(1) or {})["events"]
    assert after.get("taken_over", 0) == before.get("taken_over", 0)
    assert cluster.watched()["answers"] == answers, "an unknown segment was answered"
    for port in (30010, 30011):
        assert not _sockets(cluster, 1, port), "a socket was created"
        assert cluster.redis("hget", "anytun:rec:tcpconn",
                             f"{AA4}:{TUNNEL_PORT}/{cluster.lab.client.ip4}:{port}") == "\n"


def _publish(cluster: Cluster, rec: dict) -> None:
    cluster.redis("publish", "anytun:changes", json.dumps(rec))


SHORT = """
import socket, sys
s = socket.socket(); s.bind(("", int(sys.argv[3]))); s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(b"hello"); s.shutdown(socket.SHUT_WR); s.recv(10); s.close()
"""
ONE_SHOT = """
import socket, sys
l = socket.create_server((sys.argv[1], int(sys.argv[2]))); print("ready", flush=True)
c, _ = l.accept()
while c.recv(100):
    pass
c.close()
"""


def test_forged_and_replayed_takeover_records_are_refused(cluster: Cluster) -> None:
    from relay.cluster import tcp_owner as to
    from relay.cluster.records import Version
    from relay.cluster.secrets import ClusterKey
    lab = cluster.lab
    cluster.move(1)
    cli = lab.client.ip4
    ev = lambda: (cluster.status(1) or {})["events"]   # noqa: E731
    # a genuine record of a connection that ended: captured while it lived
    sink = lab.server(1).popen([sys.executable, "-c", ONE_SHOT, AA4, str(SINK_PORT)],
                               stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
    key = f"{AA4}:{SINK_PORT}/{cli}:30020"
    lab.client.run([sys.executable, "-c", SHORT, AA4, str(SINK_PORT), "30020"])
    sink.wait(10)
    genuine = json.loads(tu.wait_for(lambda: cluster.redis(
        "hget", "anytun:rec:tcpconn", key).strip(), 5, "the record"))
    assert genuine["d"]["owner"] == "s1" and genuine["d"]["hs"] is not None
    tu.wait_for(lambda: json.loads(cluster.redis("hget", "anytun:rec:tcpconn", key))["d"]
                is None, 15, "the record to be deleted when the connection ended")
    before = ev()
    before_conns = (cluster.status(1) or {})["connections"]
    # 1. replayed as it was: the delete is newer, the store keeps it
    _publish(cluster, genuine)
    # 2. replayed under a newer version: the tag covers the version
    _publish(cluster, {**genuine, "t": genuine["t"] + 60_000})
    # 3. forged for another connection: signed without the cluster key
    now = int(time.time() * 1000)
    flow = to.Flow(AA4, TUNNEL_PORT, cli, 30021)
    v = Version(now + 60_000, "mallory")
    hs = to.Handshake(1460, 7, 7, True, True, True, 1, now)
    data = to.sign("tcpconn", flow.key, v, to.conn_data("ghost", hs),
                   ClusterKey.from_text("not the cluster key, but long"))
    _publish(cluster, {"k": "tcpconn", "id": flow.key, "t": v.stamp, "n": v.node, "d": data})
    # 4. the tag of a genuine record moved onto another connection
    _publish(cluster, {**genuine, "id": f"{AA4}:{SINK_PORT}/{cli}:30022",
                       "t": genuine["t"] + 60_000})
    tu.wait_for(lambda: ev().get("records_refused", 0) >= before.get("records_refused", 0) + 3,
                5, "the records to be refused")
    answers = cluster.watched()["answers"]
    for sport, dport in ((30020, SINK_PORT), (30021, TUNNEL_PORT), (30022, SINK_PORT)):
        _segment(cluster, sport, dport)
    tu.wait_for(lambda: ev().get("unknown", 0) >= before.get("unknown", 0) + 3, 5,
                "the segments to be judged")
    time.sleep(0.5)
    after = ev()
    assert after.get("taken_over", 0) == before.get("taken_over", 0), after
    assert cluster.watched()["answers"] == answers
    for port in (30020, 30021, 30022):
        assert not _sockets(cluster, 1, port)
    assert (cluster.status(1) or {})["connections"] == before_conns


FRAGMENTS = """
import hashlib, random, socket, struct, sys, time
from relay.cluster.tcp_owner import tcp_checksum
dst, port = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
first, rest = rnd.randbytes(20000), rnd.randbytes(20000)
c = socket.create_connection((dst, port))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.sendall(first)
time.sleep(0.5)
# where the stream is now (read in repair mode, left without a window probe)
c.setsockopt(socket.SOL_TCP, 19, 1)
c.setsockopt(socket.SOL_TCP, 20, 2)
snd = struct.unpack("=I", c.getsockopt(socket.SOL_TCP, 21, 4))[0]
c.setsockopt(socket.SOL_TCP, 20, 1)
rcv = struct.unpack("=I", c.getsockopt(socket.SOL_TCP, 21, 4))[0]
c.setsockopt(socket.SOL_TCP, 19, -1)
src, sport = c.getsockname()
inject = b"X" * 1200
tcp = struct.pack("!HHIIBBHHH", sport, port, snd, rcv, 5 << 4, 0x18, 502, 0, 0) + inject
ident = random.SystemRandom().randrange(1, 65536)   # fragments of an earlier run may linger
whole = tcp_checksum(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0, 64, 6, 0,
                                 socket.inet_aton(src), socket.inet_aton(dst)) + tcp)
body = whole[20:]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for n, (off, part, more) in enumerate(((0, body[:608], 1), (76, body[608:], 0)), 1):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), ident, (more << 13) | off, 64,
                      6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    print("ready", n, flush=True)
    sys.stdin.readline()
    raw.sendto(hdr + part, (dst, 0))
print("ready 3", flush=True)
sys.stdin.readline()
c.sendall(rest)
c.close()
sent = hashlib.sha256(first + rest).hexdigest()
injected = hashlib.sha256(first + inject + rest[len(inject):]).hexdigest()
print(len(first + rest), sent, injected, flush=True)
"""


def _fragments(cluster: Cluster, routes: tuple[int, int]) -> tuple[list[str], list[str]]:
    """A segment of a live connection, sent as two IP fragments: the first while the route
    is at node routes[0], the second at node routes[1]; then the real data."""
    lab = cluster.lab
    cluster.move(1)
    sink = lab.server(1).popen([sys.executable, "-c", tu.SINK, AA4, str(SINK_PORT)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    src = None
    try:
        assert sink.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        src = lab.client.popen([sys.executable, "-c", FRAGMENTS, AA4, str(SINK_PORT)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for step in (1, 2, 3):
            line = src.stdout.readline()  # type: ignore[union-attr]
            assert line.split() == ["ready", str(step)], line
            if step < 3:
                cluster.move(routes[step - 1])
                time.sleep(0.2)
            else:
                cluster.move(1)
                time.sleep(0.5)
            src.stdin.write("go\n")  # type: ignore[union-attr]
            src.stdin.flush()  # type: ignore[union-attr]
        sent = src.stdout.readline().split()  # type: ignore[union-attr]
        got = sink.stdout.readline().split()  # type: ignore[union-attr]
        return sent, got
    finally:
        cluster.move(1)
        for p in (src, sink):
            if p is not None:
                tu.stop(p)


def test_fragments_split_between_the_nodes_are_dropped(cluster: Cluster) -> None:
    sent, got = _fragments(cluster, (1, 2))
    size, clean, _ = sent
    assert got == [size, clean], "the split segment was assembled somewhere"


def test_fragments_at_one_node_are_reassembled_and_handed_over_whole(cluster: Cluster
                                                                     ) -> None:
    """The control: the same two fragments both reach node 2, which reassembles them and
    hands the segment to node 1 -- so the test above would see an assembled segment."""
    sent, got = _fragments(cluster, (2, 2))
    size, _, injected = sent
    assert got == [size, injected], "the segment did not arrive whole at its node"


def test_a_client_on_the_python_plane_talks_to_the_c_nodes(cluster: Cluster) -> None:
    """The reference framing (`--dataplane python`) at the client, the C one at the node:
    the same frames and keep-alives both ways."""
    lab = cluster.lab
    tu.stop(cluster.client)
    cluster.client = None
    cluster.move(1)
    cluster.start_client("python")
    tu.ping_until(lab.client, "10.8.0.1", timeout=20)
    assert tu.ping(lab.client, "10.8.0.1", count=20, interval=0.05) >= 19
    t = cluster.client_transport()
    assert t["plane"] == "python" and t["received"] >= 19, t
    assert t["keepalives_received"] >= 1 and t["resyncs"] == 0, t
    owner = next(j for j in (1, 2) if (cluster.status(j) or {})["connections"]["here"])
    assert cluster.stream_transport(owner)["plane"] == "c-hub"
    assert cluster.hub(owner)["counters"]["stream_keepalives_rx"] >= 1
