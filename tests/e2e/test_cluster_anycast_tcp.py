"""Full anycast TCP in the cluster lab: two anytun-relay nodes, a real Redis, real kernel TCP.

An anytun-relay client keeps one TCP connection to the anycast address (`--transport
anycast-tcp`). While the node that holds it lives, the other node hands its segments over
(route moves 1 -> 2 -> 1 mid-transfer); when it is killed, the other node re-creates the
connection with TCP_REPAIR. An unmodified curl downloads from an HTTP server on the anycast
address across a route move. Fragments split between the nodes are dropped; segments of unknown
connections, and records forged or replayed, change nothing."""

from __future__ import annotations

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

from lab import AA4, AnycastLab
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
  chain input { type filter hook input priority 0; policy accept;
    ip saddr 10.255.0.1 tcp flags rst counter name rst_in; }
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
            "--anycast-tcp-ports", f"{HTTP_PORT},{SINK_PORT}"), "tun7", "10.8.0.1")
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

    def start_client(self) -> None:
        c = self.lab.client
        self.client = tu.start(c, tu.relay(
            "-r", AA4, "-o", str(TUNNEL_PORT), "--transport", "anycast-tcp", "--keepalive",
            KEEPALIVE, "-m", "1", "-E", "pass-1", "-e", "client", "-d", "tun8",
            "-n", "10.8.1.2/16"), "tun8", "10.8.1.2")
        c.run(["ip", "route", "add", f"{self.host.ip4}/32", "dev", "tun8"])
        c.run(["nft", "-f", "-"], input=RST_COUNTER)

    def client_transport(self) -> dict:
        st = tu.tunnel_status(self.lab.client, "tun8")
        return next(t for t in st["transports"] if t["kind"] == "anycast-tcp")

    def rsts(self) -> int:
        out = self.lab.client.run(["nft", "-j", "list", "counters", "table", "ip",
                                   "atcp_watch"]).stdout
        return sum(i["counter"]["packets"] for i in json.loads(out)["nftables"]
                   if "counter" in i)

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
        gap = max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=0.0)
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
