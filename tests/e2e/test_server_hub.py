"""anytun-relay as a multi-client server on the C data plane (`--dataplane fast`: the start
fails unless the C hub takes the configuration), with the real uanytun and anytun as clients:
configured by the real anytun-config and anytun-controld, or by a TOML file. Routing between
clients both ways (tunneling mode), a wrong-key client that disturbs nobody, a client that
roams to a new address, a tap hub learning MACs, a SIGHUP reload adding and removing clients
during a third client's transfer, IPv6 inside, and anytun-relay clients over UDP and TCP."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from lab import AA4, AnycastLab
from relay import fastpath
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_server_hub")]  # one shared lab

INNER = {1: "10.8.1.2", 2: "10.8.2.2", 3: "10.8.3.2"}


def _hub(st: dict) -> dict:
    ext = st.get("external_dataplane")
    assert ext and ext["kind"] == "c-hub" and ext["running"], st
    return ext


@pytest.fixture(scope="module")
def lab() -> Iterator[AnycastLab]:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    for prog in ("anytun-config", "anytun-controld", "uanytun", "anytun"):
        require_program(prog)
    with AnycastLab(servers=1, clients=4, tag="srvhub") as lab:
        yield lab


@pytest.fixture(scope="module")
def served(lab: AnycastLab, tmp_path_factory) -> Iterator[dict]:
    """controld serves three clients: uanytun (1, 2) and anytun (3) through the C hub."""
    s = lab.server(1)
    table = tmp_path_factory.mktemp("hub") / "routingtable"
    with table.open("wb") as f:
        for argv in (["-m", "1", "-E", "pass-one", "-e", "server", "-R", "10.8.1.0/24"],
                     ["-m", "2", "-E", "pass-two", "-e", "server", "-R", "10.8.2.0/24"],
                     ["-m", "3", "-E", "pass-three", "-e", "server", "-R", "10.8.3.0/25"]):
            f.write(s.run(["anytun-config", *argv]).stdout.encode())
    procs = [s.popen(["anytun-controld", "-D", "-f", str(table), "-X", "127.0.0.1:2323"])]
    time.sleep(0.3)
    procs.append(tu.start(s, tu.fast("-X", "127.0.0.1:2323", "-i", AA4, "-s", "1", "-d", "tun7",
                                     "-n", "10.8.0.1/16"), "tun7", "10.8.0.1"))
    clients = {1: tu.uanytun("-m", "1", "-E", "pass-one"),
               2: tu.uanytun("-m", "2", "-E", "pass-two"),
               3: tu.anytun("-m", "3", "-E", "pass-three", "-s", "3")}
    try:
        for mux, argv in clients.items():
            procs.append(tu.start(lab.clients[mux - 1], [*argv, "-e", "client", "-r", AA4,
                                                         "-d", "tun8", "-n", f"{INNER[mux]}/16"],
                                  "tun8", INNER[mux]))
        for mux in INNER:
            tu.ping_until(lab.clients[mux - 1], "10.8.0.1")
        yield {"procs": procs}
    finally:
        for p in reversed(procs):
            out = tu.stop(p)
        print(out[-3000:])  # the hub's log, if a test failed


def test_clients_reach_each_other_both_ways_through_the_c_hub(lab, served) -> None:
    for a in INNER:
        for b in INNER:
            if a != b:
                assert tu.ping(lab.clients[a - 1], INNER[b], 2) == 2, f"client {a} -> {b}"
    tu.transfer(lab.clients[0], lab.clients[2], INNER[3], 2_000_000)  # uanytun -> anytun
    tu.transfer(lab.clients[2], lab.clients[1], INNER[2], 2_000_000)  # anytun -> uanytun
    st = tu.tunnel_status(lab.server(1), "tun7")
    hub = _hub(st)
    assert hub["connections"] == 3 and hub["workers"] >= 1
    assert st["dataplane"]["relayed"] >= 1000  # client to client, never through the device
    assert st["dataplane"]["relayed"] == hub["counters"]["relayed"]
    remotes = {c["mux"]: c["remote"] for c in st["connections"]}
    assert remotes == {m: f"{lab.clients[m - 1].ip4}:4444" for m in INNER}
    by_mux = {c["mux"]: c for c in st["connections"]}
    assert by_mux[1]["rx_packets"] > 500 and by_mux[3]["tx_packets"] > 500
    text = lab.server(1).run([*tu.RELAY, "status", "tun7"]).stdout
    assert f"Client 1: {lab.clients[0].ip4}:4444" in text and "Route: 10.8.3.0/25 -> 3" in text


def test_a_wrong_key_client_reaches_nobody_and_disturbs_nobody(lab, served) -> None:
    intruder = lab.clients[3]
    proc = tu.start(intruder, tu.uanytun("-m", "1", "-E", "guessed", "-e", "client", "-r", AA4,
                                         "-d", "tun8", "-n", f"{INNER[1]}/16"), "tun8",
                    INNER[1])
    try:
        assert tu.ping(intruder, "10.8.0.1", 3) == 0
        assert tu.ping(intruder, INNER[2], 2) == 0
        st = tu.tunnel_status(lab.server(1), "tun7")
        c1 = next(c for c in st["connections"] if c["mux"] == 1)
        assert c1["remote"] == f"{lab.clients[0].ip4}:4444"  # still the real client 1
        assert c1["drops"].get("auth", 0) >= 5 and st["dataplane"]["drops"]["auth"] >= 5
        assert tu.ping(lab.clients[0], INNER[2], 2) == 2  # the real client 1 is unaffected
    finally:
        tu.stop(proc)


def test_a_client_roams_to_a_new_address(lab, served) -> None:
    node = lab.clients[1]
    new = node.ip4.rsplit(".", 1)[0] + ".3"
    node.run(["ip", "addr", "add", f"{new}/24", "dev", "eth0"])
    node.run(["ip", "route", "replace", "default", "via", node.gw4, "src", new])
    try:
        tu.ping_until(node, "10.8.0.1")  # uanytun's next datagrams leave from the new address
        st = tu.tunnel_status(lab.server(1), "tun7")
        assert {c["mux"]: c["remote"] for c in st["connections"]}[2] == f"{new}:4444"
        assert tu.ping(lab.clients[0], INNER[2], 3) == 3  # others reach it where it is now
        tu.transfer(lab.clients[2], node, INNER[2], 500_000)
    finally:
        node.run(["ip", "route", "replace", "default", "via", node.gw4, "src", node.ip4])
        node.run(["ip", "addr", "del", f"{new}/24", "dev", "eth0"])
        tu.ping_until(node, "10.8.0.1")


# -- nodes configured by a TOML file (port 4450: the controld node above keeps running) -------
NODE = f"""
[node]
interface = "{AA4}"
port = 4450
sender_id = 1
device_name = "tun5"
ifconfig = ["10.6.0.1/16", "fd00:6::1/32"]
transports = ["udp", "tcp"]

[defaults]
role = "server"
"""


def conn(mux: int, *routes: str) -> str:
    quoted = ", ".join(f'"{r}"' for r in routes)
    return f'[[connection]]\nmux = {mux}\npassphrase = "hub-{mux}"\nroutes = [{quoted}]\n'


def _client(lab: AnycastLab, mux: int, prog: str = "uanytun", *extra: str):
    node = lab.clients[mux - 1]
    make = {"uanytun": tu.uanytun, "fast": tu.fast}[prog]
    return tu.start(node, make("-m", str(mux), "-E", f"hub-{mux}", "-e", "client", "-r", AA4,
                               "-o", "4450", "-p", "4451", "-d", "tun6",
                               "-n", f"10.6.{mux}.2/16", *extra),
                    "tun6", f"10.6.{mux}.2")


def test_sighup_reload_adds_and_removes_clients_during_a_transfer(lab, tmp_path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE + conn(1, "10.6.1.0/24") + conn(2, "10.6.2.0/24"))
    s = lab.server(1)
    srv = tu.start(s, tu.fast("--config", str(path)), "tun5", "10.6.0.1")
    procs = [_client(lab, 1), _client(lab, 2), _client(lab, 3)]
    try:
        for m in (1, 2):
            tu.ping_until(lab.clients[m - 1], "10.6.0.1")
        assert tu.ping(lab.clients[2], "10.6.0.1", 2) == 0  # client 3 not configured yet
        lab.limit(lab.clients[0], "6mbit")  # client 1's download lasts a few seconds
        errors: list[BaseException] = []

        def run() -> None:
            try:
                tu.transfer(lab.clients[1], lab.clients[0], "10.6.1.2", 3_000_000)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        tu.wait_for(lambda: next(c for c in tu.tunnel_status(s, "tun5")["connections"]
                                 if c["mux"] == 1)["tx_packets"] > 200, 15, "the transfer")
        path.write_text(NODE + conn(1, "10.6.1.0/24") + conn(3, "10.6.3.0/24")
                        + conn(2, "10.6.2.0/24"))  # 3 added; 2 stays (it is the sender)
        os.kill(srv.pid, signal.SIGHUP)
        tu.wait_for(lambda: {c["mux"] for c in tu.tunnel_status(s, "tun5")["connections"]}
                    == {1, 2, 3}, 10, "the reload")
        tu.ping_until(lab.clients[2], "10.6.0.1")
        path.write_text(NODE + conn(1, "10.6.1.0/24") + conn(2, "10.6.2.0/24"))  # 3 removed
        os.kill(srv.pid, signal.SIGHUP)
        tu.wait_for(lambda: {c["mux"] for c in tu.tunnel_status(s, "tun5")["connections"]}
                    == {1, 2}, 10, "the second reload")
        assert t.is_alive(), "the transfer ended before the reloads; slow it down"
        t.join(90)
        assert not errors, errors  # client 1's transfer ran through both reloads intact
        assert tu.ping(lab.clients[2], "10.6.0.1", 2) == 0  # client 3 is really gone
        assert "10.6.3.0/24" not in s.run(["ip", "route", "show", "dev", "tun5"]).stdout
        _hub(tu.tunnel_status(s, "tun5"))
    finally:
        lab.unlimit(lab.clients[0])
        for p in procs:
            tu.stop(p)
        tu.stop(srv)


def test_ipv6_inside_and_anytun_relay_clients_over_udp_and_tcp(lab, tmp_path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE + conn(1, "10.6.1.0/24", "fd00:6:1::/64")
                    + conn(2, "10.6.2.0/24", "fd00:6:2::/64"))
    s = lab.server(1)
    srv = tu.start(s, tu.fast("--config", str(path)), "tun5", "10.6.0.1")
    procs = [_client(lab, 1, "fast"), _client(lab, 2, "fast", "--transport", "tcp", "--no-aarp")]
    try:
        for m in (1, 2):
            lab.clients[m - 1].run(["ip", "-6", "addr", "add", f"fd00:6:{m}::2/32", "dev",
                                    "tun6", "nodad"])
            tu.ping_until(lab.clients[m - 1], "10.6.0.1")
        assert tu.ping(lab.clients[0], "fd00:6:2::2", 3) == 3  # UDP client -> TCP client, v6
        tu.transfer(lab.clients[0], lab.clients[1], "fd00:6:2::2", 3_000_000)
        tu.transfer(lab.clients[1], lab.clients[0], "10.6.1.2", 3_000_000)
        st = tu.tunnel_status(s, "tun5")
        assert _hub(st)["streams"] == 1
        remotes = {c["mux"]: c["remote"] for c in st["connections"]}
        assert remotes[1] == f"{lab.clients[0].ip4}:4451"
        assert remotes[2].startswith(f"{lab.clients[1].ip4}:") and remotes[2].endswith("(tcp)")
        client2 = tu.tunnel_status(lab.clients[1], "tun6")
        assert _hub(client2)["streams"] == 1  # the TCP client runs on the C plane too
    finally:
        for p in procs:
            tu.stop(p)
        tu.stop(srv)


def test_a_tap_hub_learns_macs(lab, tmp_path) -> None:
    path = tmp_path / "tap.toml"
    path.write_text(f"""
[node]
interface = "{AA4}"
port = 4446
device = "tap"
device_name = "tap5"
ifconfig = "10.5.0.1/24"

[defaults]
role = "server"
""" + conn(1) + conn(2) + conn(3))
    s = lab.server(1)
    srv = tu.start(s, tu.fast("--config", str(path)), "tap5", "10.5.0.1")
    procs = []
    try:
        for mux in (1, 2, 3):
            procs.append(tu.start(lab.clients[mux - 1], tu.uanytun(
                "-m", str(mux), "-E", f"hub-{mux}", "-e", "client", "-r", AA4, "-o", "4446",
                "-p", "4447", "-t", "tap", "-d", "tap6", "-n", f"10.5.0.1{mux}/24"),
                "tap6", f"10.5.0.1{mux}"))
        for mux in (1, 2, 3):
            tu.ping_until(lab.clients[mux - 1], "10.5.0.1")
        tu.ping_until(lab.clients[0], "10.5.0.12")  # ARP floods, then learned MACs
        assert tu.ping(lab.clients[2], "10.5.0.11") == 3
        tu.transfer(lab.clients[0], lab.clients[1], "10.5.0.12", 1_000_000)
        st = tu.tunnel_status(s, "tap5")
        assert _hub(st)["running"] and st["dataplane"]["relayed"] >= 500
        macs = {lab.clients[m - 1].run(["cat", "/sys/class/net/tap6/address"]).stdout.strip(): m
                for m in (1, 2, 3)}
        assert {k: v for k, v in st["macs"].items() if v in (1, 2, 3)} == macs
    finally:
        for p in procs:
            tu.stop(p)
        tu.stop(srv)
