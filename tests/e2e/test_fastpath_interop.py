"""anytun-relay on the C fast path (`--dataplane fast`, refused if the fast path declines)
against the real uanytun and anytun, against itself with TUN offloads (TSO reads, GSO/USO
writes, UDP GSO/GRO on the wire) and against the Python data plane: ping and a TCP transfer
with a checked hash, both ways.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from lab import AnycastLab, Node
from relay import fastpath
from tests.conftest import require
from tests.e2e import tunnel_util as tu
from tests.e2e.tunnel_util import K256, NULL, SECRET

pytestmark = pytest.mark.e2e


@dataclass
class Case(tu.TunnelCase):
    dataplane: str = "fast"
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
    # the crypto on OpenSSL's libcrypto, as on CPUs without AES-NI/SHA-NI
    Case("uanytun-openssl-crypto", "uanytun", size=1_000_000,
         env={"ANYTUN_RELAY_CRYPTO": "openssl"}),
    Case("anytun-openssl-crypto-256", "anytun", "right", "client", crypto=K256,
         size=1_000_000, env={"ANYTUN_RELAY_CRYPTO": "openssl"}),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[AnycastLab]:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    with tu.tunnel_lab("fastinterop", "uanytun", "anytun") as lab:
        yield lab


def _external(node: Node, dev: str) -> dict:
    st = tu.tunnel_status(node, dev)
    ext = st.get("external_dataplane")
    assert ext and ext["kind"] == "c-fastpath" and ext["running"], st
    return ext


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fastpath_interop(lab: AnycastLab, case: Case) -> None:
    env = {**os.environ, **case.env} if case.env else None
    with tu.tunnel_pair(lab, case, (5, 6), env) as t:
        tu.ping_until(t.client, t.srv_in)
        assert tu.ping(t.client, t.srv_in, 3) == 3
        assert tu.ping(t.server, t.cli_in, 3) == 3
        tu.transfer(t.client, t.server, t.srv_in, case.size)
        tu.transfer(t.server, t.client, t.cli_in, case.size)
        ext = _external(t.relay_node, t.relay_dev)
        counters = ext["counters"]
        assert counters["rx_packets"] > 100 and counters["tx_packets"] > 100
        assert counters["rx_auth"] == 0 and counters["rx_replay"] == 0
        st = tu.tunnel_status(t.relay_node, t.relay_dev)
        conn = st["connections"][0]
        assert conn["remote"] is not None and t.peer_ip in conn["remote"]
        assert conn["send_seq"] >= counters["tx_packets"] // 2  # progress reaches the table
        if case.peer == "fast" and "RELAY_FASTPATH_OFFLOADS" not in case.env:
            assert "tun" in ext["offloads"] and "udp-gso" in ext["offloads"]
            assert counters["tx_segmented"] > 0  # TSO reads were cut into wire packets
            assert counters["rx_coalesced"] > 0  # and received segments merged for the kernel
        if "RELAY_FASTPATH_OFFLOADS" in case.env:
            assert ext["offloads"] == []
        wanted = case.env.get("ANYTUN_RELAY_CRYPTO")
        assert ext["crypto"] == ("openssl" if wanted == "openssl" else fastpath.crypto_name())
