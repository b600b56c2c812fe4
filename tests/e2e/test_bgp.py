"""Anycast by BGP in the lab: BIRD 2 on the router, ExaBGP on each server fed by
`anytun-relay exabgp`. The anycast prefixes go where healthy servers announce them; a
flapping check does not flap the route; a silent server is withdrawn by the hold timer or by
BFD; with ECMP both servers carry traffic and pinned connections, tunnels and relay calls keep
working."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import AA4, AA6, AK6, AnycastLab
from lab import sip as labkit
from lab.bgp import BgpFabric, BgpSettings
from lab.services import make_blob, serve_http, wait_port
from tests.c.support import preloaded, start_responders
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

pytestmark = pytest.mark.e2e


@pytest.fixture
def fabric(lab_factory, tmp_path: Path) -> Iterator[Callable[..., tuple[AnycastLab,
                                                                         BgpFabric]]]:
    require_program("bird")
    require_program("birdc")
    require_program("exabgp")
    made: list[BgpFabric] = []

    def make(settings: BgpSettings | None = None, **lab_kwargs) -> tuple[AnycastLab, BgpFabric]:
        lab = lab_factory(**lab_kwargs)
        fab = BgpFabric(lab, tmp_path / f"bgp{len(made)}", settings)
        made.append(fab)
        return lab, fab

    yield make
    for fab in made:
        fab.close()


def up_check(fab: BgpFabric, j: int) -> list[str]:
    """A health check the test flips: server j is healthy while its file exists."""
    flag = fab.dir / f"up{j}"
    flag.touch()
    return ["--check-command", f"test -e {flag}"]


def echo_source(lab: AnycastLab, node=None) -> str | None:
    """Who answers an echo to the kernel anycast address (it answers from its unicast)."""
    out = (node or lab.client).run(["ping", "-c1", "-W1", "-n", AK6], check=False).stdout
    return next((ln.split("from ")[1].split(": ")[0] for ln in out.splitlines()
                 if "bytes from" in ln), None)


def test_routes_follow_health(fabric) -> None:
    lab, fab = fabric()
    for j in (1, 2):
        fab.start_speaker(j, up_check(fab, j))
    fab.wait_paths(1)   # both announce; BIRD prefers the lower router id
    assert echo_source(lab) == lab.server(1).ip6
    (fab.dir / "up1").unlink()          # s1 turns unhealthy: withdrawn, s2 takes over
    fab.wait_paths(2)
    assert echo_source(lab) == lab.server(2).ip6
    assert "withdraw fd00:aa::/64, 10.255.0.0/24, fd00:ab::/64" in fab.speaker_log(1)
    (fab.dir / "up1").touch()
    fab.wait_paths(1)
    maint = fab.dir / "maint2"
    fab.stop_speaker(2)                 # a maintenance file drains at once
    fab.start_speaker(2, [*up_check(fab, 2), "--maintenance-file", str(maint)])
    fab.wait_paths(1)
    (fab.dir / "up1").unlink()
    fab.wait_paths(2)
    maint.touch()
    fab.wait_paths()                    # nobody announces: no route at all
    assert echo_source(lab) is None
    assert "health drain" in fab.speaker_log(2)
    maint.unlink()
    fab.wait_paths(2)
    fab.stop_speaker(2)                 # ExaBGP stops: its sessions close, routes go at once
    fab.wait_paths()


FLAP = """
if [ -e {flap} ]; then
  n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}; [ $((n % 2)) = 0 ]
fi
"""


def _watch(fab: BgpFabric, seconds: float) -> list[frozenset[int]]:
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(frozenset(fab.paths()))
        time.sleep(0.05)
    return seen


def _changes(seen: list[frozenset[int]]) -> int:
    return sum(1 for a, b in itertools.pairwise(seen) if a != b)


def test_flapping_check_does_not_flap_the_route(fabric) -> None:
    _, fab = fabric()
    flap, count = fab.dir / "flap", fab.dir / "count"
    check = ["--check-command", FLAP.format(flap=flap, count=count)]
    fab.start_speaker(2, up_check(fab, 2))
    fab.start_speaker(1, check, rise=3, fall=3, interval=0.1)
    fab.wait_paths(1)
    flap.touch()                          # from now on s1's check alternates bad, good, ...
    seen = _watch(fab, 3.0)
    checks = int(count.read_text())
    print(f"dampened: {checks} alternating checks, route changes {_changes(seen)}")
    assert checks >= 10, "the check did not run often enough to show anything"
    assert set(seen) == {frozenset({1})}, "a flapping check flapped the route"
    assert fab.speaker_log(1).count("anytun-relay exabgp: withdraw") == 0
    # the same flapping check without dampening (rise 1, fall 1) does flap the route
    fab.stop_speaker(1)
    fab.start_speaker(1, check, rise=1, fall=1, interval=0.1)
    seen = _watch(fab, 3.0)
    print(f"undampened: route changes {_changes(seen)}")
    assert _changes(seen) >= 4 and frozenset({2}) in seen and frozenset({1}) in seen


def _last_error(fab: BgpFabric, j: int) -> str:
    out = fab.birdc(f"show protocols all {lab_name(fab, j)}v4")
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if "Last error" in ln), "")


def lab_name(fab: BgpFabric, j: int) -> str:
    return fab.lab.server(j).name


@pytest.mark.parametrize("bfd", [False, True], ids=["hold-timer", "bfd"])
def test_a_silent_server_is_withdrawn(fabric, bfd: bool) -> None:
    """s1 falls silent (no FIN, no NOTIFICATION): the router withdraws it when the hold timer
    expires, or when BFD declares the session down."""
    lab, fab = fabric(BgpSettings(bfd=bfd))
    for j in (1, 2):
        fab.start_speaker(j, up_check(fab, j))
    fab.wait_paths(1)
    if bfd:
        fab.wait(lambda: fab.birdc("show bfd sessions").count(" Up ") >= 4, 10,
                 "BFD sessions up")
    t0 = time.monotonic()
    fab.crash(1)
    fab.wait_paths(2, timeout=15)
    took = time.monotonic() - t0
    print(f"silent server withdrawn after {took:.2f}s ({'BFD' if bfd else 'hold timer'})")
    assert echo_source(lab) == lab.server(2).ip6
    error = _last_error(fab, 1)
    assert ("BFD session down" if bfd else "Hold timer expired") in error, error
    # s1 comes back: its sessions come up again and it takes the route back
    fab.start_speaker(1, up_check(fab, 1))
    fab.wait_paths(1)


# -- ECMP --------------------------------------------------------------------------------------
REDIS_PORT = 6393
RTP_CTL = "udp:127.0.0.1:22222"


def _node_config(j: int) -> str:
    conns = "".join(f'[[connection]]\nmux = {m}\npassphrase = "ecmp-{m}"\n'
                    f'routes = ["10.8.{m}.0/24"]\n\n' for m in (1, 2))
    return (f'[node]\ninterface = "{AA4}"\nsender_id = {j}\ndevice_name = "tun7"\n'
            f'ifconfig = ["10.8.0.1/16"]\n\n[defaults]\nrole = "server"\n\n{conns}')


def _who(lab: AnycastLab, url: str, source_port: int, preload: bool = False) -> str:
    argv = ["curl", "-sS", "-g", "--max-time", "5", "--local-port", str(source_port), url]
    proc = lab.clients[2].run(preloaded(argv) if preload else argv, check=False)
    return proc.stdout.strip()


def test_ecmp_spreads_flows_and_everything_keeps_working(fabric, tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root")
    require_program("uanytun")
    require_program("redis-server")
    lab, fab = fabric(BgpSettings(multipath=True), servers=2, clients=3, hosts=1)
    for j in (1, 2):
        fab.start_speaker(j, up_check(fab, j))
    fab.wait_paths(1, 2)
    procs: list[subprocess.Popen] = []
    try:
        # the router hashes flows by their ports: plain requests from 24 source ports reach
        # both servers
        for node in lab.servers:
            d = tmp_path / "www" / node.name
            d.mkdir(parents=True)
            (d / "who").write_text(node.name)
            make_blob(d / "big", 1_500_000)
            procs.append(serve_http(node, d))
        seen = {_who(lab, f"http://{AA4}/who", 41000 + i) for i in range(24)}
        print(f"plain flows to {AA4} reached {sorted(seen)}")
        assert seen == {"s1", "s2"}, seen

        # pinned connections: libaarp.so resolves AA to the UA of whichever server answered
        # the probe and connects there; downloads complete intact even when s2 leaves the
        # ECMP set mid-download (a plain connection hashed elsewhere would break)
        start_responders(lab)
        lab.limit(lab.clients[2], "8mbit")
        blobs = {n.name: (tmp_path / "www" / n.name / "big").read_bytes() for n in lab.servers}
        downloads = []
        for i, url in enumerate([f"http://[{AA6}]/big", f"http://{AA4}/big"] * 3):
            out = tmp_path / f"pinned{i}"
            downloads.append((out, lab.clients[2].popen(preloaded(
                ["curl", "-sS", "-g", "--max-time", "60", "-o", str(out), url]),
                stdout=subprocess.DEVNULL)))
        time.sleep(1.0)
        (fab.dir / "up2").unlink()
        fab.wait_paths(1)
        got = []
        for out, proc in downloads:
            assert proc.wait(90) == 0, proc.stderr.read().decode(errors="replace")[-2000:]
            data = out.read_bytes()
            got.append(next((name for name, blob in blobs.items() if blob == data), None))
        lab.unlimit(lab.clients[2])
        print(f"pinned downloads came from {got}")
        assert None not in got, "a pinned download arrived damaged"
        (fab.dir / "up2").touch()
        fab.wait_paths(1, 2)

        # the cluster's tunnels: two uanytun clients, each flow hashed to one node, the
        # nodes sharing state through Redis
        host = lab.hosts[0]
        url = f"redis://{host.ip4}:{REDIS_PORT}/0"
        procs.append(host.popen(["redis-server", "--port", str(REDIS_PORT), "--bind",
                                 "0.0.0.0", "--save", "", "--appendonly", "no",
                                 "--protected-mode", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(host, REDIS_PORT)
        for j in (1, 2):
            path = tmp_path / f"s{j}.toml"
            path.write_text(_node_config(j))
            procs.append(tu.start(lab.server(j), tu.relay(
                "--config", str(path), "--sync", url, "--sync-node", f"s{j}"), "tun7",
                "10.8.0.1"))
            procs.append(lab.server(j).popen(
                [*tu.RELAY, "-D", "-L", "stdout:3", "--rtpproxy", RTP_CTL, "--rtp-address",
                 AA4, "--rtp-ports", "40000-40199", "--sync", url, "--sync-node", f"r{j}",
                 "--sync-cluster", "media"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
            wait_port(lab.server(j), 22222, "udp")
        for m in (1, 2):
            procs.append(tu.start(lab.clients[m - 1], tu.uanytun(
                "-m", str(m), "-E", f"ecmp-{m}", "-e", "client", "-r", AA4, "-d", "tun8",
                "-n", f"10.8.{m}.2/16"), "tun8", f"10.8.{m}.2"))
        for m in (1, 2):
            tu.ping_until(lab.clients[m - 1], "10.8.0.1", timeout=15)
        tu.ping_until(lab.clients[0], "10.8.2.2", timeout=15)
        assert tu.ping(lab.clients[0], "10.8.2.2", count=20, interval=0.05) == 20
        tu.transfer(lab.clients[0], lab.clients[1], "10.8.2.2", size=500_000)
        carried = {j: sum(c["rx_packets"] for c in tu.tunnel_status(lab.server(j), "tun7")
                          ["connections"]) for j in (1, 2)}
        print(f"tunnel packets received per node under ECMP: {carried}")
        assert sum(carried.values()) > 40

        # a relay call: each phone's RTP flow is hashed on its own; the session is shared
        caller, callee = lab.clients[0], host
        offer, answer = labkit.control(lab.server(1), RTP_CTL, [
            f"o1 U ecmp-call {caller.ip4} 6000 ftag;1",
            f"a1 L ecmp-call {callee.ip4} 6000 ftag;1 ttag;1"])
        assert offer is not None and answer is not None, (offer, answer)
        callee_side, caller_side = int(offer.split()[1]), int(answer.split()[1])
        tu.wait_for(lambda: f":{caller_side} " in lab.server(2).run(["ss", "-Huan"]).stdout,
                    10, "node 2 to open the session's ports")
        count = 100
        phones = [node.popen([sys.executable, "-m", "lab.sip", "rtp", node.ip4, "6000", AA4,
                              str(port), str(count), "3.5"], stdout=subprocess.PIPE)
                  for node, port in ((caller, caller_side), (callee, callee_side))]
        results = [json.loads(p.communicate(timeout=30)[0]) for p in phones]
        print(f"relay call under ECMP: phones got {results[0]['received']} and "
              f"{results[1]['received']} of {count}")
        for r, side in zip(results, (caller_side, callee_side), strict=True):
            assert set(r["sources"]) == {f"{AA4}:{side}"}, r
            assert count - r["received"] <= 3, r
    finally:
        lab.unlimit(lab.clients[2])
        for p in reversed(procs):
            tu.stop(p)


# -- anytun-relay's own health drives the announcements ---------------------------------------
def _health_node(lab: AnycastLab, tmp: Path, j: int, url: str, port: int) -> subprocess.Popen:
    path = tmp / f"h{j}.toml"
    path.write_text(_node_config(j))
    proc = tu.start(lab.server(j), tu.relay(
        "--config", str(path), "--sync", url, "--sync-node", f"s{j}", "--health-needs-sync",
        "--http-listen", "127.0.0.1:9180"), "tun7", "10.8.0.1")
    tu.wait_for(lambda: lab.server(j).run([*tu.RELAY, "health", "tun7"], check=False,
                                          timeout=20).returncode == 0, 15, f"node {j} healthy")
    return proc


def test_relay_health_drain_and_redis_loss_move_the_route(fabric, tmp_path: Path) -> None:
    """Announcers ask anytun-relay (control socket on s1, HTTP /health on s2). A node that
    loses Redis with --health-needs-sync is withdrawn; `anytun-relay drain` withdraws s1,
    waits until its tunnel traffic went to s2, then stops s1 while the tunnel goes on."""
    require_program("uanytun")
    require_program("redis-server")
    lab, fab = fabric(servers=2, clients=2, hosts=1)
    host = lab.hosts[0]
    url = f"redis://{host.ip4}:{REDIS_PORT}/0"
    redis = host.popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
                        "--save", "", "--appendonly", "no", "--protected-mode", "no",
                        "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    procs = [redis]
    try:
        wait_port(host, REDIS_PORT)
        nodes = {j: _health_node(lab, tmp_path, j, url, 9180) for j in (1, 2)}
        procs += nodes.values()
        fab.start_speaker(1, ["--check-relay", "tun7"])
        fab.start_speaker(2, ["--check-http", "http://127.0.0.1:9180/health"])
        fab.wait_paths(1)
        for m in (1, 2):
            procs.append(tu.start(lab.clients[m - 1], tu.uanytun(
                "-m", str(m), "-E", f"ecmp-{m}", "-e", "client", "-r", AA4, "-d", "tun8",
                "-n", f"10.8.{m}.2/16"), "tun8", f"10.8.{m}.2"))
            tu.ping_until(lab.clients[m - 1], "10.8.0.1", timeout=15)
        tu.ping_until(lab.clients[0], "10.8.2.2", timeout=15)

        # Redis becomes unreachable from s1 only: s1 reports it and is withdrawn
        s1 = lab.server(1)
        s1.run(["nft", "-f", "-"], input="table inet bgpnoredis {\n chain out { type filter "
               f"hook output priority 0; ip daddr {host.ip4} tcp dport {REDIS_PORT} "
               "reject with tcp reset; }\n}\n")
        s1.run(["ss", "-K", "dst", host.ip4, "dport", "=", str(REDIS_PORT)], check=False)
        fab.wait_paths(2, timeout=30)
        health = json.loads(s1.run([*tu.RELAY, "health", "--json", "tun7"],
                                   check=False).stdout)
        assert not health["healthy"] and "redis backend unreachable" in " ".join(
            health["reasons"]), health
        assert tu.ping(lab.clients[0], "10.8.2.2", count=5, interval=0.1) == 5
        s1.run(["nft", "delete", "table", "inet", "bgpnoredis"])
        fab.wait_paths(1, timeout=30)

        # drain s1 under traffic
        pinger = lab.clients[0].popen(["ping", "-n", "-i", "0.05", "-c", "120", "-W", "1",
                                       "10.8.2.2"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        drain = s1.run([*tu.RELAY, "drain", "--timeout", "20", "tun7"], check=False, timeout=40)
        assert drain.returncode == 0, drain.stdout + drain.stderr
        assert "traffic gone" in drain.stdout, drain.stdout
        assert fab.paths() == {2}
        assert nodes[1].wait(10) == 0
        out, _ = pinger.communicate(timeout=30)
        line = next(ln for ln in out.splitlines() if "received" in ln)
        sent, got = int(line.split()[0]), int(line.split(",")[1].split()[0])
        print(f"drain: {sent - got} of {sent} pings lost; {drain.stdout.strip()}")
        assert sent - got <= 3, line
    finally:
        for p in reversed(procs):
            tu.stop(p)
