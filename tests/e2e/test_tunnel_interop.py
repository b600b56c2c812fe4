"""anytun-relay against the real uanytun and anytun: both roles, tun and tap, inner and outer
IPv4/IPv6, null transforms, 128/192/256-bit keys, tag lengths, sender IDs and MUX.

All cases share one lab (a client and a server namespace); each starts both daemons, pings
both ways and stops them. TCP transfers run for a representative subset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from aarp.lab import AnycastLab
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_tunnel_interop")]  # one shared lab

SECRET = ["-E", "secret"]
NULL = ["-c", "null", "-a", "null", "-k", "null"]
K192 = ["-K", "000102030405060708090a0b0c0d0e0f1011121314151617",
        "-A", "a0a1a2a3a4a5a6a7a8a9aaabacad", "-c", "aes-ctr-192", "-k", "aes-ctr-192"]
K256 = ["-E", "have_a_very_safe_and_productive_day", "-c", "aes-ctr-256", "-k", "aes-ctr-256"]
MIXED = ["-K", "00112233445566778899aabbccddeeff", "-A", "0123456789abcddcba9876543210",
         "-c", "aes-ctr-256", "-k", "aes-ctr"]


@dataclass
class Case:
    id: str
    peer: str                  # uanytun | anytun
    relay_role: str            # left | right
    relay_on: str              # server | client (the client side has -r)
    dev: str = "tun"
    outer: int = 4
    inner: int = 4
    crypto: list[str] = field(default_factory=lambda: list(SECRET))
    relay_extra: list[str] = field(default_factory=list)
    peer_extra: list[str] = field(default_factory=list)
    transfer: bool = False
    dataplane: str = "python"


CASES = [
    Case("u-left-tun-v4", "uanytun", "left", "server", transfer=True),
    Case("u-right-tun-v6in-v6out-256", "uanytun", "right", "client", outer=6, inner=6,
         crypto=K256, transfer=True),
    Case("u-right-tap", "uanytun", "right", "server", dev="tap"),
    Case("u-left-null", "uanytun", "left", "client", crypto=NULL),
    Case("u-left-sid-mux-tag20", "uanytun", "left", "server", crypto=[*SECRET, "-b", "20"],
         relay_extra=["-s", "4660", "-m", "22136"], peer_extra=["-s", "43981", "-m", "22136"]),
    Case("u-right-192-tag4-v6out", "uanytun", "right", "client", outer=6,
         crypto=[*K192, "-b", "4"]),
    Case("u-left-tap-v6-mixed-keylen", "uanytun", "left", "client", dev="tap", outer=6,
         inner=6, crypto=MIXED),
    Case("a-left-tun-v4", "anytun", "left", "server", transfer=True),
    Case("a-right-tun-v6in-v6out-256", "anytun", "right", "client", outer=6, inner=6,
         crypto=K256, transfer=True),
    Case("a-right-tap", "anytun", "right", "server", dev="tap"),
    Case("a-left-null", "anytun", "left", "client", crypto=NULL),
    Case("a-right-sid-mux-tag20", "anytun", "right", "server", crypto=[*SECRET, "-b", "20"],
         relay_extra=["-s", "1", "-m", "300"], peer_extra=["-s", "2", "-m", "300"]),
    Case("a-left-mixed-keylen-v6out", "anytun", "left", "client", outer=6, crypto=MIXED),
]


# Every other case runs with the default data plane (the C fast path where it is built and
# accepts the configuration), the rest with the Python one: both stay interoperable.
for _i, _case in enumerate(CASES):
    if _i % 2:
        _case.dataplane = "auto"
        _case.id += "-auto"


@pytest.fixture(scope="module")
def lab() -> Iterator[AnycastLab]:
    import os
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require_program("uanytun")
    require_program("anytun")
    with AnycastLab(servers=1, clients=1, tag="tuninterop") as lab:
        yield lab


INNER = {4: ("10.9.0.1", "10.9.0.2"), 6: ("fd00:9::1", "fd00:9::2")}


def _fast_path_built() -> bool:
    try:
        from relay import fastpath
    except ImportError:
        return False
    return bool(getattr(fastpath, "available", lambda: False)())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_interop(lab: AnycastLab, case: Case) -> None:
    server, client = lab.server(1), lab.client
    server_outer = server.ip4 if case.outer == 4 else server.ip6
    peer_role = "right" if case.relay_role == "left" else "left"
    procs = {}
    try:
        for side, node, addr in (("server", server, "10.9.0.1/24"),
                                 ("client", client, "10.9.0.2/24")):
            is_relay = side == case.relay_on
            dev = f"{case.dev}{7 if is_relay else 8}"
            common = ["-d", dev, "-t", case.dev, "-n", addr, *case.crypto]
            if side == "client":
                common += ["-r", server_outer]
            if is_relay:
                argv = tu.relay(*common, "-e", case.relay_role, *case.relay_extra,
                                dataplane=case.dataplane)
            else:
                maker = tu.uanytun if case.peer == "uanytun" else tu.anytun
                argv = maker(*common, "-e", peer_role, *case.peer_extra)
            procs[side] = (tu.start(node, argv, dev, addr.split("/")[0]), node, dev)
        srv_in, cli_in = INNER[case.inner]
        if case.inner == 6:
            for (_, node, dev), a in ((procs["server"], srv_in), (procs["client"], cli_in)):
                node.run(["ip", "-6", "addr", "add", f"{a}/64", "dev", dev, "nodad"])
        tu.ping_until(client, srv_in)
        assert tu.ping(client, srv_in, 3) == 3
        assert tu.ping(server, cli_in, 3) == 3
        if case.transfer:
            tu.transfer(client, server, srv_in, 2_000_000)
            tu.transfer(server, client, cli_in, 2_000_000)
        relay_node, relay_dev = procs[case.relay_on][1], procs[case.relay_on][2]
        st = tu.tunnel_status(relay_node, relay_dev)
        if case.dataplane == "auto" and _fast_path_built():
            assert "external_dataplane" in st  # the hook handed the tunnel to the fast path
        conn = st["connections"][0]
        peer_ip = (client.ip4 if case.outer == 4 else client.ip6) \
            if case.relay_on == "server" else server_outer
        assert conn["remote"] is not None and peer_ip in conn["remote"]
        assert conn["rx_packets"] >= 6 and not conn["drops"].get("auth")
    except BaseException:
        for side, (proc, _, _) in procs.items():
            print(f"--- {side} output ---\n{tu.stop(proc)[-3000:]}")
        raise
    finally:
        for proc, _, _ in procs.values():
            tu.stop(proc)
