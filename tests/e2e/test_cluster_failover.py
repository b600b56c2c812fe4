"""Two anytun-relay nodes share state through a real Redis; uanytun clients on the anycast
address keep talking while the route moves between the nodes, two clients attached through
different nodes reach each other, replays captured on one node are refused by the other, Redis
restarts without taking the tunnels down, and a relay-mode call set up through node 1 keeps its
media flowing after the route moves to node 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import AA4, AA6, AnycastLab
from lab import sip as labkit
from lab.services import make_blob, wait_port
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

# one lab, one Redis and two nodes for the whole module: keep it on one xdist worker
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("cluster-failover")]
REDIS_PORT = 6390


def node_config(j: int) -> str:
    conns = "".join(
        f'[[connection]]\nmux = {m}\nname = "client{m}"\npassphrase = "pass-{m}"\n'
        f'routes = ["10.8.{m}.0/24", "fd00:8:{m}::/48"]\n\n' for m in (1, 2))
    return (f'[node]\ninterface = "{AA4}"\nsender_id = {j}\ndevice_name = "tun7"\n'
            f'ifconfig = ["10.8.0.1/16", "fd00:8::1/32"]\n\n'
            f'[open_tunnel]\nsnat4 = "{AA4}"\nsnat6 = "{AA6}"\n\n'
            f'[defaults]\nrole = "server"\n\n{conns}')


class Cluster:
    def __init__(self, lab: AnycastLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.redis_node = lab.hosts[0]
        self.url = f"redis://{self.redis_node.ip4}:{REDIS_PORT}/0"
        self.redis: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}
        self.clients: list[subprocess.Popen] = []

    def start_redis(self) -> None:
        self.redis = self.redis_node.popen(
            [require_program("redis-server"), "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--dir", str(self.tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.redis_node, REDIS_PORT)

    def stop_redis(self) -> None:
        if self.redis is not None:
            tu.stop(self.redis)
            self.redis = None

    def start_node(self, j: int) -> None:
        path = self.tmp / f"s{j}.toml"
        path.write_text(node_config(j))
        self.nodes[j] = tu.start(self.lab.server(j), tu.relay(
            "--config", str(path), "--sync", self.url, "--sync-node", f"s{j}",
            "--handover", self.lab.server(j).ip4), "tun7", "10.8.0.1")
        # the device comes up before the last services (handover, control socket) start
        tu.wait_for(lambda: self.lab.server(j).run([*tu.RELAY, "status", "tun7"], check=False,
                                                   timeout=20).returncode == 0, 10,
                    f"node {j}'s control socket")

    def stop_node(self, j: int) -> str:
        return tu.stop(self.nodes.pop(j))

    def start_clients(self) -> None:
        for m in (1, 2):
            c = self.lab.clients[m - 1]
            self.clients.append(tu.start(c, tu.uanytun(
                "-m", str(m), "-E", f"pass-{m}", "-e", "client", "-r", AA4, "-d", "tun8",
                "-n", f"10.8.{m}.2/16"), "tun8", f"10.8.{m}.2"))
            # open tunnel mode: the "internet" host is reached through the tunnel
            host = self.lab.hosts[0]
            c.run(["ip", "-6", "addr", "add", f"fd00:8:{m}::2/32", "dev", "tun8", "nodad"])
            c.run(["ip", "route", "add", f"{host.ip4}/32", "dev", "tun8"])
            c.run(["ip", "-6", "route", "add", f"{host.ip6}/128", "dev", "tun8"])

    def conn(self, j: int, mux: int) -> dict:
        st = tu.tunnel_status(self.lab.server(j), "tun7")
        return next(c for c in st["connections"] if c["mux"] == mux)

    def cluster_status(self, j: int) -> dict:
        return tu.status(self.lab.server(j), "tun7")["cluster"]

    def close(self) -> None:
        for p in [*self.clients, *self.nodes.values()]:
            tu.stop(p)
        self.stop_redis()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require_program("uanytun")
    with AnycastLab(servers=2, clients=2, hosts=1, tag="cluster") as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("cluster"))
        try:
            c.start_redis()
            c.start_node(1)
            c.start_node(2)
            # client 1 reaches the anycast address through node 1, client 2 through node 2:
            # each node learns one client's endpoint itself and the other's from Redis
            lab.move(2, client=2)
            c.start_clients()
            for cl in lab.clients:
                tu.ping_until(cl, "10.8.0.1", timeout=15)
            yield c
        finally:
            c.close()


class Pinger:
    """ping every 50 ms in the background; `lost()` after stop()."""

    def __init__(self, node, addr: str, seconds: float) -> None:
        count = int(seconds / 0.05)
        self.proc = node.popen(["ping", "-n", "-i", "0.05", "-c", str(count), "-W", "1", addr],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> tuple[int, int]:
        out, _ = self.proc.communicate(timeout=60)
        line = next(ln for ln in out.splitlines() if "received" in ln)
        sent, got = int(line.split()[0]), int(line.split(",")[1].split()[0])
        return sent, got


def test_state_is_shared_before_any_move(cluster: Cluster) -> None:
    # each node knows where the client that never sent it a packet is
    tu.wait_for(lambda: cluster.conn(2, 1)["remote"] is not None, 10, "endpoint on node 2")
    tu.wait_for(lambda: cluster.conn(1, 2)["remote"] is not None, 10, "endpoint on node 1")
    assert cluster.conn(2, 1)["rx_packets"] == 0 and cluster.conn(1, 2)["rx_packets"] == 0
    assert cluster.conn(2, 1)["remote"] == cluster.conn(1, 1)["remote"]
    assert cluster.conn(1, 2)["remote"] == cluster.conn(2, 2)["remote"]
    st = cluster.cluster_status(2)
    assert st["backend"]["connected"] is True and st["node"] == "s2"


def test_clients_attached_through_different_nodes_reach_each_other(cluster: Cluster) -> None:
    """Tunneling mode across nodes: a packet from client 1 for client 2 arrives at node 1,
    which seals it to client 2's endpoint (learned by node 2, known here through Redis) and
    sends it from the anycast address itself; uanytun accepts it whatever the sender ID."""
    lab = cluster.lab
    try:
        tx1, tx2 = cluster.conn(1, 2)["tx_packets"], cluster.conn(2, 1)["tx_packets"]
        rx1, rx2 = cluster.conn(1, 1)["rx_packets"], cluster.conn(2, 2)["rx_packets"]
        assert cluster.conn(1, 2)["rx_packets"] == 0   # client 2 never spoke to node 1
        tu.ping_until(lab.clients[0], "10.8.2.2", timeout=5)
        assert tu.ping(lab.clients[0], "10.8.2.2", count=10, interval=0.05) == 10
        assert tu.ping(lab.clients[1], "10.8.1.2", count=10, interval=0.05) == 10
        # requests went client 1 -> node 1 -> client 2, replies client 2 -> node 2 -> client 1
        assert cluster.conn(1, 2)["tx_packets"] - tx1 >= 20
        assert cluster.conn(2, 1)["tx_packets"] - tx2 >= 20
        assert cluster.conn(1, 1)["rx_packets"] - rx1 >= 20
        assert cluster.conn(2, 2)["rx_packets"] - rx2 >= 20
        assert cluster.conn(1, 2)["rx_packets"] == 0 and cluster.conn(2, 1)["rx_packets"] == 0
        # a TCP stream across the two nodes, both ways
        tu.transfer(lab.clients[0], lab.clients[1], "10.8.2.2", size=500_000)
        tu.transfer(lab.clients[1], lab.clients[0], "10.8.1.2", size=500_000, port=5002)
    finally:
        lab.move(1)   # both clients on node 1 again for the next tests


def test_ping_and_transfer_survive_route_moves(cluster: Cluster) -> None:
    lab = cluster.lab
    lab.limit(lab.clients[1], "6mbit")
    errors: list[BaseException] = []

    def transfer() -> None:
        try:
            tu.transfer(lab.clients[0], lab.clients[1], "10.8.2.2", size=3_000_000)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        pinger = Pinger(lab.clients[0], "10.8.2.2", 6.0)
        t = threading.Thread(target=transfer)
        t.start()
        time.sleep(1.5)
        lab.move(2)
        time.sleep(2.0)
        moved = cluster.conn(2, 1)["rx_packets"]
        lab.move(1)
        t.join(90)
        sent, got = pinger.result()
    finally:
        lab.unlimit(lab.clients[1])
        lab.move(1)
    assert not errors, errors
    assert moved > 0, "the route move did not bring traffic to node 2"
    lost = sent - got
    print(f"failover: {lost} of {sent} pings lost over two route moves")
    assert lost <= 4, f"{lost} of {sent} pings lost over two route moves"


def _capture_one_datagram(cluster: Cluster) -> bytes:
    lab = cluster.lab
    cap = tu.Capture(lab.clients[0], str(cluster.tmp / "c1.pcap"), "eth0",
                     f"udp and dst port 4444 and dst host {AA4}")
    try:
        tu.ping(lab.clients[0], "10.8.0.1", count=3)
    finally:
        frames = cap.stop()
    assert frames, "nothing captured"
    linktype, frame = frames[-1]
    return tu.udp_payload(tu.ip_of_frame(linktype, frame))


def test_replay_captured_on_node_1_is_refused_by_node_2(cluster: Cluster) -> None:
    lab = cluster.lab
    lab.move(1)
    datagram = _capture_one_datagram(cluster)
    seq = int.from_bytes(datagram[:4], "big")
    # node 2 has heard of the seq through the cluster before the route moves
    tu.wait_for(lambda: cluster.conn(2, 1)["recv_high"].get("0", -1) >= seq, 10,
                "receive high-water mark on node 2")
    lab.move(2)
    try:
        before = cluster.conn(2, 1)
        code = (f"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                f"s.sendto(bytes.fromhex('{datagram.hex()}'),('{AA4}',4444))")
        lab.clients[0].run(["python3", "-c", code])
        tu.wait_for(lambda: sum(cluster.conn(2, 1)["drops"].values()) >
                    sum(before["drops"].values()), 5, "the replay to be dropped")
        after = cluster.conn(2, 1)
        assert after["rx_packets"] == before["rx_packets"], "node 2 accepted a replay"
    finally:
        lab.move(1)


def test_redis_restart_and_node_restart_during_traffic(cluster: Cluster) -> None:
    lab = cluster.lab
    pinger = Pinger(lab.clients[0], "10.8.2.2", 5.0)
    cluster.stop_redis()
    tu.wait_for(lambda: not cluster.cluster_status(1)["backend"]["connected"], 10,
                "node 1 to notice Redis is gone")
    st = cluster.cluster_status(1)["backend"]
    assert "DISCONNECTED" in st["state"]
    time.sleep(0.5)
    cluster.start_redis()
    tu.wait_for(lambda: cluster.cluster_status(1)["backend"]["connected"], 10, "reconnect")
    sent, got = pinger.result()
    assert sent - got <= 1, f"{sent - got} pings lost while Redis restarted"
    # Redis came back empty: the nodes filled it again
    out = cluster.redis_node.run(["redis-cli", "-p", str(REDIS_PORT), "hlen",
                                  "anytun:rec:endpoint"]).stdout
    assert int(out) == 2
    # node 2 restarts while traffic flows through node 1, then takes the route
    seq_before = cluster.conn(1, 2)["send_seq"]
    cluster.stop_node(2)
    cluster.start_node(2)
    tu.wait_for(lambda: cluster.conn(2, 2)["remote"] is not None, 10, "state after restart")
    assert cluster.conn(2, 2)["send_seq"] >= seq_before  # progress came back
    lab.move(2)
    try:
        tu.ping_until(lab.clients[0], "10.8.2.2", timeout=5)
        assert tu.ping(lab.clients[0], "10.8.2.2", count=5, interval=0.05) == 5
    finally:
        lab.move(1)


def test_sync_option_mistakes_are_one_line_errors(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    # its own device and port: node 1 runs here, and a taken port is refused first
    path.write_text(node_config(3).replace('device_name = "tun7"',
                                           'device_name = "tun9"\nport = 4555'))
    for extra, words in ((["--sync", "http://x"], "--sync"),
                         (["--sync-node", "bad name"], "--sync-node"),
                         (["--cluster-key-file", "/nonexistent"], "--cluster-key-file"),
                         (["-I", "127.0.0.1"], "-I"),
                         (["-M", "a:99999"], "-M"),
                         (["--sync-tls-ca", "/tmp/ca.pem"], "without --sync"),
                         (["--sync", "rediss://127.0.0.1:6380", "--sync-tls-ca",
                           "/nonexistent/ca.pem"], "--sync-tls-ca"),
                         (["--sync", "rediss://127.0.0.1:6380", "--sync-tls-cert",
                           "/tmp/c.pem"], "--sync-tls-key"),
                         (["--handover", "10.2.1.2"], "--sync redis"),
                         (["--handover-block", "64"], "needs --handover"),
                         (["--sync", cluster.url, "--sync-cluster", "wrong", "--handover",
                           "10.2.1.2", "--handover-block", "8"], "--handover"),
                         (["--sync", cluster.url, "--sync-cluster", "wrong", "--handover",
                           "10.2.1.2", "--handover-ports", "4000-9999", "--handover-block", "256"],
                          "tunnel port"),
                         (["--sync", cluster.url, "--sync-cluster", "wrong", "--handover",
                           "10.9.9.9"], "not an address of this host")):
        proc = cluster.lab.server(1).run(tu.relay("--config", str(path), *extra), check=False,
                                         timeout=20)
        assert proc.returncode == 2, (extra, proc.stdout, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
        assert len(proc.stderr.strip().splitlines()) == 1


RTP_CTL = "udp:127.0.0.1:22222"
RTP_PORTS = "40000-40199"


def _relay_node(cluster: Cluster, j: int) -> subprocess.Popen:
    """A relay-mode-only node sharing sessions and the port pool through the same Redis (its
    own key prefix, so the tunnel nodes' records stay apart)."""
    proc = cluster.lab.server(j).popen(
        [*tu.RELAY, "-D", "-L", "stdout:4", "--rtpproxy", RTP_CTL, "--rtp-address", AA4,
         "--rtp-ports", RTP_PORTS, "--sync", cluster.url, "--sync-node", f"r{j}",
         "--sync-cluster", "media"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_port(cluster.lab.server(j), 22222, "udp")
    return proc


def _query(node, call: str) -> list[int]:
    (reply,) = labkit.control(node, RTP_CTL, [f"q1 Q {call} ftag;1 ttag;1"])
    assert reply is not None and not reply.split()[1].startswith(b"E"), reply
    return [int(x) for x in reply.split()[1:]]   # ttl, from caller, from callee, relayed, drops


def test_relay_call_keeps_its_media_after_the_route_moves(cluster: Cluster) -> None:
    lab = cluster.lab
    s1, s2 = lab.server(1), lab.server(2)
    caller, callee = lab.clients[0], lab.hosts[0]
    nodes = [_relay_node(cluster, 1), _relay_node(cluster, 2)]
    try:
        offer, answer = labkit.control(s1, RTP_CTL, [
            f"o1 U call-x {caller.ip4} 6000 ftag;1",
            f"a1 L call-x {callee.ip4} 6000 ftag;1 ttag;1"])
        assert offer is not None and answer is not None, (offer, answer)
        callee_side, caller_side = int(offer.split()[1]), int(answer.split()[1])
        # node 2 learned the session from Redis and holds the same relay ports
        tu.wait_for(lambda: f":{caller_side} " in s2.run(["ss", "-Huan"]).stdout, 10,
                    "node 2 to open the session's ports")
        # a fresh offer on node 2 gets other ports: the shared pool never hands one out twice
        (other,) = labkit.control(s2, RTP_CTL, [f"o2 U call-y {caller.ip4} 7000 ytag;1"])
        assert other is not None and int(other.split()[1]) not in (caller_side, callee_side)
        count = 150   # 3 s at 20 ms per packet, both ways
        phones = [node.popen([sys.executable, "-m", "lab.sip", "rtp", node.ip4,
                              "6000", AA4, str(port), str(count), "4.5"], stdout=subprocess.PIPE)
                  for node, port in ((caller, caller_side), (callee, callee_side))]
        time.sleep(1.7)   # 0.5 s until the phones send, then about 60 packets each way
        lab.move(2)
        results = [json.loads(p.communicate(timeout=30)[0]) for p in phones]
        before, after = _query(s1, "call-x"), _query(s2, "call-x")
    finally:
        lab.move(1)
        for proc in nodes:
            tu.stop(proc)
    print(f"relay call: node 1 relayed {before[1]} + {before[2]} packets before the move, "
          f"node 2 relayed {after[1]} + {after[2]} after it; phones got "
          f"{results[0]['received']} and {results[1]['received']} of {count}")
    # media flowed on both legs through node 1 before the move, and through node 2 after it
    assert before[1] > 20 and before[2] > 20, before
    assert after[1] > 20 and after[2] > 20, after
    for r, side in zip(results, (caller_side, callee_side), strict=True):
        assert r["sent"] == count
        assert set(r["sources"]) == {f"{AA4}:{side}"}, r   # same relay port on both nodes
        assert count - r["received"] <= 3, f"{count - r['received']} packets lost: {r}"


# -- open tunnel mode across nodes ---------------------------------------------------------------
@pytest.fixture(scope="module")
def website(cluster: Cluster) -> Iterator[tuple[str, bytes]]:
    """A web server on the lab's "internet" host, which knows nothing of tunnels; it logs the
    source address of every request."""
    host = cluster.lab.hosts[0]
    blob = make_blob(cluster.tmp / "www" / "big", 2_000_000)
    web = host.popen([sys.executable, "-c", WEB, str(blob.parent)], stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True)
    wait_port(host, 8080)
    yield f"http://{host.ip4}:8080/big", blob.read_bytes()
    web.terminate()
    _, seen = web.communicate(timeout=10)
    # every request reached the host from the anycast address, none from a client's own
    sources = {ln.strip().removeprefix("::ffff:") for ln in seen.splitlines() if ln.strip()}
    assert sources and sources <= {AA4, AA6}, sources


WEB = """
import http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=sys.argv[1], **k)
    def log_message(self, fmt, *args):
        sys.stderr.write(self.client_address[0] + "\\n"); sys.stderr.flush()
class S(http.server.ThreadingHTTPServer):
    address_family = __import__("socket").AF_INET6
    def server_bind(self):
        self.socket.setsockopt(41, 26, 0)  # IPV6_V6ONLY off: IPv4 too
        super().server_bind()
S(("::", 8080), H).serve_forever()
"""


def _handover(cluster: Cluster, j: int) -> dict:
    return tu.status(cluster.lab.server(j), "tun7")["handover"]


def _fetch(cluster: Cluster, url: str, out: Path) -> subprocess.Popen:
    return cluster.lab.clients[0].popen(["curl", "-sS", "-g", "--fail", "--max-time", "30",
                                         "-o", str(out), url], stderr=subprocess.PIPE, text=True)


def test_open_tunnel_download_survives_the_route_move(cluster: Cluster, website) -> None:
    """A client behind node 1 downloads from an outside host; mid-stream the anycast route of
    everybody (client and outside host) moves to node 2. Node 2 hands the client's packets and
    the host's replies to node 1, which holds the flow's translation."""
    url, blob = website
    lab = cluster.lab
    tu.wait_for(lambda: _handover(cluster, 2)["peers"] and _handover(cluster, 1)["peers"], 10,
                "the nodes to know each other")
    st1, st2 = _handover(cluster, 1), _handover(cluster, 2)
    # each node hands the other's port block to it
    assert [(p["node"], p["ports"]) for p in st1["peers"]] == [("s2", st2["ports"])]
    assert [(p["node"], p["ports"]) for p in st2["peers"]] == [("s1", st1["ports"])]
    assert st1["ports"] != st2["ports"]
    out = cluster.tmp / "got-move"
    lab.limit(lab.clients[0], "8mbit")   # about 2 s for the download
    try:
        dl = _fetch(cluster, url, out)
        time.sleep(0.8)
        lab.move(2)
        _, err = dl.communicate(timeout=40)
    finally:
        lab.unlimit(lab.clients[0])
        lab.move(1)
    assert dl.returncode == 0, err
    assert out.read_bytes() == blob
    # node 2 handed what it got of node 1's flow to node 1
    after1, after2 = _handover(cluster, 1), _handover(cluster, 2)
    moved = after2["handed_out"]["bytes"] - st2["handed_out"]["bytes"]
    print(f"open tunnel across a route move: node 2 handed {moved} bytes to node 1")
    assert moved > 500_000 and after1["handed_in"]["bytes"] - st1["handed_in"]["bytes"] >= moved


def test_open_tunnel_replies_arriving_at_the_other_node(cluster: Cluster, website) -> None:
    """The client's traffic reaches node 2 while the outside host's replies to the anycast
    address reach node 1 (asymmetric routing): node 1 hands the replies to node 2."""
    url, blob = website
    lab = cluster.lab
    host = lab.hosts[0]
    lab.move(2, client=1)
    try:
        for fam_url in (url, url.replace(host.ip4, f"[{host.ip6}]")):   # IPv4, then IPv6
            st1 = _handover(cluster, 1)
            out = cluster.tmp / "got-asym"
            dl = _fetch(cluster, fam_url, out)
            _, err = dl.communicate(timeout=40)
            assert dl.returncode == 0, (fam_url, err)
            assert out.read_bytes() == blob
            handed = _handover(cluster, 1)["handed_out"]["bytes"] - st1["handed_out"]["bytes"]
            assert handed > len(blob), f"node 1 handed only {handed} bytes to node 2"
    finally:
        lab.move(1)


VXLAN_PROBE = """
import socket, struct, sys
# a VXLAN frame for the node's handover device: header (VNI), Ethernet to the device's MAC,
# IPv4/UDP for the tunnel address; sent to the node's unicast address
mac = bytes.fromhex(sys.argv[2].replace(":", ""))
udp = struct.pack("!HHHH", 5555, 9999, 8 + 4, 0) + b"evil"
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton("10.3.1.2"), socket.inet_aton("10.8.0.1"))
frame = mac + bytes.fromhex("02616e79ffff") + b"\\x08\\x00" + ip + udp
vxlan = struct.pack("!II", 0x08000000, int(sys.argv[3]) << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(vxlan + frame, (sys.argv[1], 4789))
"""


def _vxlan_in(cluster: Cluster, j: int) -> int:
    return _handover(cluster, j)["handed_in"]["packets"]


def test_open_tunnel_handover_accepts_members_only(cluster: Cluster) -> None:
    lab = cluster.lab
    s1 = lab.server(1)
    args = [s1.ip4, "02:61:6e:79:00:01", str(0x616E01)]
    before = _vxlan_in(cluster, 1)
    lab.clients[0].run([sys.executable, "-c", VXLAN_PROBE, *args])     # not a member
    time.sleep(0.3)
    assert _vxlan_in(cluster, 1) == before, "VXLAN from a stranger reached the node"
    rules = s1.run(["nft", "list", "chain", "ip", "anytun_ho_tun7", "raw"]).stdout
    assert "udp dport 4789" in rules and "packets 5 " in rules, rules
    lab.server(2).run([sys.executable, "-c", VXLAN_PROBE, *args])     # the member: same bytes
    tu.wait_for(lambda: _vxlan_in(cluster, 1) >= before + 5, 5, "the member's frames")


def _publish(cluster: Cluster, key: str, data: dict | None, stamp: int) -> None:
    rec = json.dumps({"k": "node", "id": key, "t": stamp, "n": "mallory", "d": data})
    cluster.redis_node.run(["redis-cli", "-p", str(REDIS_PORT), "publish", "anytun:changes",
                            rec])


def test_open_tunnel_bad_member_records_change_nothing(cluster: Cluster) -> None:
    good = _handover(cluster, 2)["peers"]
    stamp = int(time.time() * 1000) + 60_000
    bad = {"mallory": {"sid": 1, "address": "10.2.9.9", "ports": [11264, 12287],
                       "vxlan": [0x616E01, 4789]},                  # node 1's sender ID
           "eve": {"sid": 7, "address": "10.2.9.9", "ports": [11000, 12287],
                   "vxlan": [0x616E01, 4789]},                      # node 1's ports
           "junk": {"sid": "x", "address": "::", "ports": [1], "vxlan": None}}
    try:
        for key, data in bad.items():
            _publish(cluster, key, data, stamp)
        tu.wait_for(lambda: len(_handover(cluster, 2)["problems"]) >= 2, 5, "problems")
        st = _handover(cluster, 2)
        text = " ".join(st["problems"])
        # node 2: node 1's sender ID is claimed twice -> nobody gets node 1's flows; eve's
        # block is not the block of its sender ID
        assert "claimed by mallory, s1" in text and "eve" in text, text
        assert st["peers"] == [], st
        # node 1 refuses a record that claims its own sender ID, and keeps its peer
        st1 = _handover(cluster, 1)
        assert any("mallory" in p for p in st1["problems"]) and st1["peers"][0]["node"] == "s2"
        assert tu.ping(cluster.lab.clients[0], "10.8.0.1", count=2, interval=0.1) == 2
    finally:
        for key in bad:
            _publish(cluster, key, None, stamp + 1)
    tu.wait_for(lambda: not _handover(cluster, 2)["problems"], 5, "the records to go")
    assert _handover(cluster, 2)["peers"] == good
