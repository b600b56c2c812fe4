"""Two anytun-relay nodes share state through a real Redis; uanytun clients on the anycast
address keep talking while the route moves between the nodes, replays captured on one node are
refused by the other, and Redis restarts without taking the tunnels down."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aarp.lab import AA4, AnycastLab
from aarp.lab.services import wait_port
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

pytestmark = pytest.mark.e2e
REDIS_PORT = 6390


def node_config(j: int) -> str:
    conns = "".join(
        f'[[connection]]\nmux = {m}\nname = "client{m}"\npassphrase = "pass-{m}"\n'
        f'routes = ["10.8.{m}.0/24"]\n\n' for m in (1, 2))
    return (f'[node]\ninterface = "{AA4}"\nsender_id = {j}\ndevice_name = "tun7"\n'
            f'ifconfig = ["10.8.0.1/16"]\n\n[defaults]\nrole = "server"\n\n{conns}')


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
            "--config", str(path), "--sync", self.url, "--sync-node", f"s{j}"), "tun7",
            "10.8.0.1")

    def stop_node(self, j: int) -> str:
        return tu.stop(self.nodes.pop(j))

    def start_clients(self) -> None:
        for m in (1, 2):
            self.clients.append(tu.start(self.lab.clients[m - 1], tu.uanytun(
                "-m", str(m), "-E", f"pass-{m}", "-e", "client", "-r", AA4, "-d", "tun8",
                "-n", f"10.8.{m}.2/16"), "tun8", f"10.8.{m}.2"))

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
            c.start_clients()
            for cl in lab.clients:  # each client makes itself known to node 1
                tu.ping_until(cl, "10.8.0.1", timeout=15)
            tu.ping_until(lab.clients[0], "10.8.2.2", timeout=15)
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
    # node 2 never saw a packet of either client, yet knows where they are
    tu.wait_for(lambda: cluster.conn(2, 2)["remote"] is not None, 10, "endpoint on node 2")
    assert cluster.conn(2, 2)["rx_packets"] == 0
    assert cluster.conn(2, 1)["remote"] == cluster.conn(1, 1)["remote"]
    st = cluster.cluster_status(2)
    assert st["backend"]["connected"] is True and st["node"] == "s2"


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
    path.write_text(node_config(3).replace("tun7", "tun9"))
    for extra, words in ((["--sync", "http://x"], "--sync"),
                         (["--sync-node", "bad name"], "--sync-node"),
                         (["--cluster-key-file", "/nonexistent"], "--cluster-key-file"),
                         (["-I", "127.0.0.1"], "-I"),
                         (["-M", "a:99999"], "-M")):
        proc = cluster.lab.server(1).run(tu.relay("--config", str(path), *extra), check=False,
                                         timeout=20)
        assert proc.returncode == 2, (extra, proc.stdout, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
        assert len(proc.stderr.strip().splitlines()) == 1
