"""anytun-relay against the real uanytun and anytun: both roles, tun and tap, inner and outer
IPv4/IPv6, null transforms, 128/192/256-bit keys, tag lengths, sender IDs and MUX.

All cases share one lab (a client and a server namespace); each starts both daemons, pings
both ways and stops them. TCP transfers run for a representative subset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab import AnycastLab
from tests.e2e import tunnel_util as tu
from tests.e2e.tunnel_util import K256, NULL, SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_tunnel_interop")]  # one shared lab

K192 = ["-K", "000102030405060708090a0b0c0d0e0f1011121314151617",
        "-A", "a0a1a2a3a4a5a6a7a8a9aaabacad", "-c", "aes-ctr-192", "-k", "aes-ctr-192"]
MIXED = ["-K", "00112233445566778899aabbccddeeff", "-A", "0123456789abcddcba9876543210",
         "-c", "aes-ctr-256", "-k", "aes-ctr"]


@dataclass
class Case(tu.TunnelCase):
    transfer: bool = False


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
    with tu.tunnel_lab("tuninterop", "uanytun", "anytun") as lab:
        yield lab


def _fast_path_built() -> bool:
    try:
        from relay import fastpath
    except ImportError:
        return False
    return bool(getattr(fastpath, "available", lambda: False)())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_interop(lab: AnycastLab, case: Case) -> None:
    with tu.tunnel_pair(lab, case, (7, 8)) as t:
        tu.ping_until(t.client, t.srv_in)
        assert tu.ping(t.client, t.srv_in, 3) == 3
        assert tu.ping(t.server, t.cli_in, 3) == 3
        if case.transfer:
            tu.transfer(t.client, t.server, t.srv_in, 2_000_000)
            tu.transfer(t.server, t.client, t.cli_in, 2_000_000)
        st = tu.tunnel_status(t.relay_node, t.relay_dev)
        if case.dataplane == "auto" and _fast_path_built():
            assert "external_dataplane" in st  # the hook handed the tunnel to the fast path
        conn = st["connections"][0]
        assert conn["remote"] is not None and t.peer_ip in conn["remote"]
        assert conn["rx_packets"] >= 6 and not conn["drops"].get("auth")
