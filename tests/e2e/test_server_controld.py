"""anytun-relay as a multi-client server configured by the real anytun-config and
anytun-controld, serving two uanytun clients and one anytun client (tunneling mode)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import AA4, AnycastLab
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_server_controld")]  # one shared lab

INNER = {1: "10.8.1.2", 2: "10.8.2.2", 3: "10.8.3.2"}


def _config(path: Path, node, entries) -> None:
    with path.open("wb") as f:
        for argv in entries:
            f.write(node.run(["anytun-config", *argv]).stdout.encode())


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[AnycastLab, dict]]:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    for prog in ("anytun-config", "anytun-controld", "uanytun", "anytun"):
        require_program(prog)
    tmp = tmp_path_factory.mktemp("controld")
    with AnycastLab(servers=1, clients=4, tag="srvctl") as lab:
        s = lab.server(1)
        table = tmp / "routingtable"
        _config(table, s, [
            ["-m", "1", "-E", "pass-one", "-e", "server", "-R", "10.8.1.0/24"],
            ["-m", "2", "-E", "pass-two", "-e", "server", "-R", "10.8.2.0/24", "-w", "64"],
            ["-m", "3", "-K", "00112233445566778899aabbccddeeff", "-A",
             "0123456789abcddcba9876543210", "-e", "server", "-R", "10.8.3.0/25"],
        ])
        procs = [s.popen(["anytun-controld", "-D", "-f", str(table), "-X", "127.0.0.1:2323"])]
        time.sleep(0.3)
        procs.append(tu.start(s, tu.relay("-X", "127.0.0.1:2323", "-i", AA4, "-s", "1",
                                          "-d", "tun7", "-n", "10.8.0.1/16"), "tun7", "10.8.0.1"))
        clients = {
            1: tu.uanytun("-m", "1", "-E", "pass-one"),
            2: tu.uanytun("-m", "2", "-E", "pass-two"),
            3: tu.anytun("-m", "3", "-K", "00112233445566778899aabbccddeeff",
                         "-A", "0123456789abcddcba9876543210", "-s", "3"),
        }
        for mux, argv in clients.items():
            node = lab.clients[mux - 1]
            procs.append(tu.start(node, [*argv, "-e", "client", "-r", AA4, "-d", "tun8",
                                         "-n", f"{INNER[mux]}/16"], "tun8", INNER[mux]))
        try:
            _all_known(lab)
            yield lab, {"procs": procs, "table": table}
        finally:
            for p in reversed(procs):
                tu.stop(p)


def _all_known(lab: AnycastLab) -> None:
    """Every client has sent to the node, so the node knows where each one is (the tests may
    run in any order)."""
    for mux in INNER:
        tu.ping_until(lab.clients[mux - 1], "10.8.0.1")


def test_every_client_reaches_the_node_and_each_other(served) -> None:
    lab, _ = served
    for mux in INNER:
        tu.ping_until(lab.clients[mux - 1], "10.8.0.1")
    for a in INNER:
        for b in INNER:
            if a != b:
                assert tu.ping(lab.clients[a - 1], INNER[b], 2) == 2, f"client {a} -> {b}"
    st = tu.tunnel_status(lab.server(1), "tun7")
    remotes = {c["mux"]: c["remote"] for c in st["connections"]}
    assert remotes == {m: f"{lab.clients[m - 1].ip4}:4444" for m in INNER}
    assert st["dataplane"]["relayed"] >= 12  # client to client without the kernel
    windows = {c["mux"]: c["window"] for c in st["connections"]}
    assert windows == {1: 1024, 2: 64, 3: 1024}  # anytun-config's -w 0 is its unsafe default
    text = lab.server(1).run([*tu.RELAY, "status", "tun7"]).stdout
    assert f"Client 1: {lab.clients[0].ip4}:4444" in text
    assert "Route: 10.8.3.0/25 -> 3" in text
    # the kernel routes client prefixes to the device (replies, open tunnel mode)
    routes = lab.server(1).run(["ip", "route", "show", "dev", "tun7"]).stdout
    assert "10.8.1.0/24" in routes and "10.8.3.0/25" in routes


def test_tcp_transfer_between_clients_through_the_relay(served) -> None:
    lab, _ = served
    tu.ping_until(lab.clients[0], INNER[3])
    tu.transfer(lab.clients[0], lab.clients[2], INNER[3], 1_000_000)
    tu.transfer(lab.clients[2], lab.clients[1], INNER[2], 1_000_000)


def test_client_with_the_wrong_key_reaches_nobody_and_disturbs_nobody(served) -> None:
    lab, _ = served
    intruder = lab.clients[3]
    before = {c["mux"]: c for c in tu.tunnel_status(lab.server(1), "tun7")["connections"]}
    proc = tu.start(intruder, tu.uanytun("-m", "1", "-E", "guessed", "-e", "client", "-r", AA4,
                                         "-d", "tun8", "-n", f"{INNER[1]}/16"), "tun8",
                    INNER[1])
    try:
        assert tu.ping(intruder, "10.8.0.1", 3) == 0
        assert tu.ping(intruder, INNER[2], 2) == 0
        after = {c["mux"]: c for c in tu.tunnel_status(lab.server(1), "tun7")["connections"]}
        assert after[1]["remote"] == before[1]["remote"]  # mux 1 still points at client 1
        assert after[1]["drops"].get("auth", 0) >= 5
        assert tu.ping(lab.clients[0], INNER[2], 2) == 2  # the real client 1 is unaffected
    finally:
        tu.stop(proc)


def test_controld_restart_replaces_the_configuration(served, tmp_path: Path) -> None:
    """A new controld table is applied as a whole: a client missing from it is removed."""
    lab, ctx = served
    s = lab.server(1)
    table = tmp_path / "smaller"
    _config(table, s, [["-m", "1", "-E", "pass-one", "-e", "server", "-R", "10.8.1.0/24"],
                       ["-m", "3", "-K", "00112233445566778899aabbccddeeff", "-A",
                        "0123456789abcddcba9876543210", "-e", "server", "-R", "10.8.3.0/25"]])
    tu.stop(ctx["procs"][0])
    ctx["procs"][0] = s.popen(["anytun-controld", "-D", "-f", str(table), "-X",
                               "127.0.0.1:2323"])
    try:
        tu.wait_for(lambda: {c["mux"] for c in tu.tunnel_status(s, "tun7")["connections"]}
                    == {1, 3}, 20, "the new controld table")
        assert tu.ping(lab.clients[1], "10.8.0.1", 2) == 0  # client 2 was removed
        assert tu.ping(lab.clients[0], INNER[3], 2) == 2    # 1 and 3 keep talking
        assert "10.8.2.0/24" not in s.run(["ip", "route", "show", "dev", "tun7"]).stdout
    finally:  # back to the full table for the other tests
        tu.stop(ctx["procs"][0])
        ctx["procs"][0] = s.popen(["anytun-controld", "-D", "-f", str(ctx["table"]), "-X",
                                   "127.0.0.1:2323"])
        tu.wait_for(lambda: len(tu.tunnel_status(s, "tun7")["connections"]) == 3, 20,
                    "the full controld table again")
        _all_known(lab)
