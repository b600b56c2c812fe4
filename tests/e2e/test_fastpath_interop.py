"""anytun-relay on the C fast path (`--dataplane fast`, refused if the fast path declines)
against the real uanytun and anytun, against itself with TUN offloads (TSO reads, GSO/USO
writes, UDP GSO/GRO on the wire) and against the Python data plane: ping and a TCP transfer
with a checked hash, both ways.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from aarp.lab import AnycastLab, LabError, Node
from relay import fastpath
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

pytestmark = pytest.mark.e2e

SECRET = ["-E", "secret"]
NULL = ["-c", "null", "-a", "null", "-k", "null"]
K256 = ["-E", "have_a_very_safe_and_productive_day", "-c", "aes-ctr-256", "-k", "aes-ctr-256"]
INNER = {4: ("10.9.0.1", "10.9.0.2"), 6: ("fd00:9::1", "fd00:9::2")}


def fast(*args: str) -> list[str]:
    return [*tu.RELAY, "-D", "-L", "stdout:5", "--dataplane", "fast", *args]


@dataclass
class Case:
    id: str
    peer: str                  # uanytun | anytun | fast | python
    relay_role: str = "left"
    relay_on: str = "server"   # the client side has -r
    dev: str = "tun"
    outer: int = 4
    inner: int = 4
    crypto: list[str] = field(default_factory=lambda: list(SECRET))
    relay_extra: list[str] = field(default_factory=list)
    peer_extra: list[str] = field(default_factory=list)
    size: int = 3_000_000
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("uanytun-tun-v4", "uanytun"),
    Case("uanytun-right-client-v6-256", "uanytun", "right", "client", outer=6, inner=6,
         crypto=K256),
    Case("uanytun-tap", "uanytun", "right", dev="tap", size=1_000_000),
    Case("uanytun-null", "uanytun", "left", "client", crypto=NULL),
    Case("anytun-tun-v4", "anytun", "right", "client"),
    Case("anytun-v6-sid-mux-tag20", "anytun", "left", "server", outer=6, inner=6,
         crypto=[*SECRET, "-b", "20"], relay_extra=["-s", "1", "-m", "300"],
         peer_extra=["-s", "2", "-m", "300"]),
    Case("fast-offloads-v4", "fast", size=30_000_000),
    Case("fast-offloads-v6", "fast", "right", "client", outer=6, inner=6, size=30_000_000),
    Case("fast-no-offloads", "fast", size=10_000_000, env={"RELAY_FASTPATH_OFFLOADS": "0"}),
    Case("python-plane", "python", "left", "client", size=2_000_000),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[AnycastLab]:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    require_program("uanytun")
    require_program("anytun")
    with AnycastLab(servers=1, clients=1, tag="fastinterop") as lab:
        yield lab


def start(node: Node, argv: list[str], dev: str, addr: str,
          env: dict[str, str] | None) -> subprocess.Popen:
    proc = node.popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise LabError(f"{argv[0]} on {node.name} exited {proc.returncode}:\n{out[-3000:]}")
        return tu.device_ready(node, dev, addr)

    tu.wait_for(ready, 15, f"device {dev} on {node.name}")
    return proc


def _external(node: Node, dev: str) -> dict:
    st = tu.tunnel_status(node, dev)
    ext = st.get("external_dataplane")
    assert ext and ext["kind"] == "c-fastpath" and ext["running"], st
    return ext


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fastpath_interop(lab: AnycastLab, case: Case) -> None:
    server, client = lab.server(1), lab.client
    server_outer = server.ip4 if case.outer == 4 else server.ip6
    peer_role = "right" if case.relay_role == "left" else "left"
    procs = {}
    env = {**os.environ, **case.env} if case.env else None
    try:
        for side, node, addr in (("server", server, "10.9.0.1/24"),
                                 ("client", client, "10.9.0.2/24")):
            is_relay = side == case.relay_on
            dev = f"{case.dev}{5 if is_relay else 6}"
            common = ["-d", dev, "-t", case.dev, "-n", addr, *case.crypto]
            if side == "client":
                common += ["-r", server_outer]
            if is_relay:
                argv = fast(*common, "-e", case.relay_role, *case.relay_extra)
            else:
                maker = {"uanytun": tu.uanytun, "anytun": tu.anytun, "fast": fast,
                         "python": tu.relay}[case.peer]
                argv = maker(*common, "-e", peer_role, *case.peer_extra)
            procs[side] = (start(node, argv, dev, addr.split("/")[0], env), node, dev)
        srv_in, cli_in = INNER[case.inner]
        if case.inner == 6:
            for (_, node, dev), a in ((procs["server"], srv_in), (procs["client"], cli_in)):
                node.run(["ip", "-6", "addr", "add", f"{a}/64", "dev", dev, "nodad"])
        tu.ping_until(client, srv_in)
        assert tu.ping(client, srv_in, 3) == 3
        assert tu.ping(server, cli_in, 3) == 3
        tu.transfer(client, server, srv_in, case.size)
        tu.transfer(server, client, cli_in, case.size)
        relay_node, relay_dev = procs[case.relay_on][1], procs[case.relay_on][2]
        ext = _external(relay_node, relay_dev)
        counters = ext["counters"]
        assert counters["rx_packets"] > 100 and counters["tx_packets"] > 100
        assert counters["rx_auth"] == 0 and counters["rx_replay"] == 0
        st = tu.tunnel_status(relay_node, relay_dev)
        conn = st["connections"][0]
        peer_ip = (client.ip4 if case.outer == 4 else client.ip6) \
            if case.relay_on == "server" else server_outer
        assert conn["remote"] is not None and peer_ip in conn["remote"]
        assert conn["send_seq"] >= counters["tx_packets"] // 2  # progress reaches the table
        if case.peer == "fast" and not case.env:
            assert "tun" in ext["offloads"] and "udp-gso" in ext["offloads"]
            assert counters["tx_segmented"] > 0  # TSO reads were cut into wire packets
            assert counters["rx_coalesced"] > 0  # and received segments merged for the kernel
        if case.env:
            assert ext["offloads"] == []
    except BaseException:
        for side, (proc, _, _) in procs.items():
            print(f"--- {side} output ---\n{tu.stop(proc)[-3000:]}")
        raise
    finally:
        for proc, _, _ in procs.values():
            tu.stop(proc)
