"""Failover loss: pings lost when the anycast route moves between two nodes, and how long
traffic stops.

Same run: two anytun-relay nodes sharing state through a real Redis, then two real anytun
servers with their own sync (-S/-M, fed by anytun-controld). Two uanytun clients on the anycast
address; client 1 pings client 2 through the tunnel every 20 ms while the route moves from node
1 to node 2 and back (`ip route replace` on the router: an instant flip).

Then the same anytun-relay cluster with real routing: BIRD 2 on the router, ExaBGP on each node
fed by `anytun-relay exabgp` (checks every 0.2 s, rise 2, fall 2), and node 1 leaves by
* drain: its maintenance file appears, the announcer withdraws at once;
* relay killed: anytun-relay dies by SIGKILL, the announcer's checks fail (fall 2) and withdraw;
* crash: the node falls silent and every process on it dies (no FIN, no NOTIFICATION): the
  router notices by the BGP hold timer (3 s), or by BFD (100 ms x 3) where configured;
with BFD off and on. Each row: the longest gap between two ping replies ("until traffic flows
again"), beside the flip's, and the pings lost. `python -m bench.bench_failover`; never raises.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import row, seconds
from lab import AA4, AnycastLab
from lab.bgp import BgpFabric, BgpSettings
from lab.netns import stop_process
from lab.services import wait_port

REDIS_PORT = 6390
RELAY = [sys.executable, "-m", "relay.cli", "-D", "-L", "stdout:3"]


def _node_toml(j: int) -> str:
    conns = "".join(f'[[connection]]\nmux = {m}\npassphrase = "pass-{m}"\n'
                    f'routes = ["10.8.{m}.0/24"]\n\n' for m in (1, 2))
    return (f'[node]\ninterface = "{AA4}"\nsender_id = {j}\ndevice_name = "tun7"\n'
            f'ifconfig = ["10.8.0.1/16"]\n\n[defaults]\nrole = "server"\n\n{conns}')


def _wait_dev(node, dev: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.run(["ip", "link", "show", dev], check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{dev} did not appear on {node.name}")


def _ping_ok(node, addr: str) -> bool:
    return node.run(["ping", "-n", "-c1", "-W1", addr], check=False).returncode == 0


def _wait_ping(node, addr: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not _ping_ok(node, addr):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ping {addr} from {node.name}")


def _clients(lab: AnycastLab) -> list[subprocess.Popen]:
    procs = []
    for m in (1, 2):
        c = lab.clients[m - 1]
        procs.append(c.popen(["uanytun", "-D", "-L", "stdout:2", "-m", str(m), "-E",
                              f"pass-{m}", "-e", "client", "-r", AA4, "-d", "tun8", "-n",
                              f"10.8.{m}.2/16"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL))
        _wait_dev(c, "tun8")
    for c in lab.clients:
        _wait_ping(c, "10.8.0.1")
    _wait_ping(lab.clients[0], "10.8.2.2")
    return procs


Result = tuple[int, int, float]   # pings sent, received, longest gap between replies (s)


def _measure(lab: AnycastLab, span: float, *moves) -> Result:
    """Ping every 20 ms for `span` seconds; the moves run evenly spaced inside it."""
    count = int(span / 0.02)
    p = lab.clients[0].popen(["ping", "-D", "-n", "-i", "0.02", "-c", str(count), "-W", "1",
                              "10.8.2.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    for move in moves:
        time.sleep(span / (len(moves) + 1))
        move()
    out, _ = p.communicate(timeout=span + 30)
    line = next(ln for ln in out.splitlines() if "received" in ln)
    stamps = [float(ln[1:ln.index("]")]) for ln in out.splitlines()
              if ln.startswith("[") and "bytes from" in ln]
    gap = max((b - a for a, b in itertools.pairwise(stamps)), default=span)
    return int(line.split()[0]), int(line.split(",")[1].split()[0]), gap


def _cluster(lab: AnycastLab,
             tmp: Path) -> tuple[list[subprocess.Popen], dict[int, subprocess.Popen]]:
    """Redis and two anytun-relay nodes; returns every process and the nodes by number."""
    host = lab.hosts[0]
    procs = [host.popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
                         "--save", "", "--appendonly", "no", "--protected-mode", "no",
                         "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)]
    nodes = {}
    try:
        wait_port(host, REDIS_PORT)
        for j in (1, 2):
            path = tmp / f"s{j}.toml"
            path.write_text(_node_toml(j))
            nodes[j] = lab.server(j).popen(
                [*RELAY, "--config", str(path), "--sync",
                 f"redis://{host.ip4}:{REDIS_PORT}/0", "--sync-node", f"s{j}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(nodes[j])
            _wait_dev(lab.server(j), "tun7")
    except BaseException:
        for p in reversed(procs):
            stop_process(p)
        raise
    return procs, nodes


def _ours(lab: AnycastLab, tmp: Path, span: float) -> Result:
    procs, _ = _cluster(lab, tmp)
    try:
        procs += _clients(lab)
        time.sleep(0.5)
        return _measure(lab, span, lambda: lab.move(2), lambda: lab.move(1))
    finally:
        for p in reversed(procs):
            stop_process(p)


def _bgp(lab: AnycastLab, tmp: Path, span: float, how: str, bfd: bool) -> Result:
    """Node 1 leaves the anycast set by `how` (drain, kill, crash) under real routing."""
    procs, nodes = _cluster(lab, tmp)
    try:
        with BgpFabric(lab, tmp / "bgp", BgpSettings(bfd=bfd)) as fab:
            for j in (1, 2):
                fab.start_speaker(j, ["--check-command",
                                      f"{sys.executable} -m relay.cli status tun7",
                                      "--maintenance-file", str(tmp / f"drain{j}")])
            fab.wait_paths(1)
            procs += _clients(lab)
            time.sleep(0.5)

            def leave() -> None:
                if how == "drain":
                    (tmp / "drain1").touch()
                elif how == "kill":
                    os.killpg(nodes[1].pid, signal.SIGKILL)
                else:
                    fab.crash(1, nodes[1])

            return _measure(lab, span, leave)
    finally:
        for p in reversed(procs):
            stop_process(p)


def _reference(lab: AnycastLab, tmp: Path, span: float) -> Result:
    conf = tmp / "controld.conf"
    lines = []
    for m in (1, 2):
        lines.append(subprocess.run(["anytun-config", "-m", str(m), "-E", f"pass-{m}",
                                     "-e", "left", "-R", f"10.8.{m}.0/24"],
                                    capture_output=True, text=True, check=True).stdout)
    conf.write_text("".join(lines))
    procs = []
    try:
        for j in (1, 2):
            s = lab.server(j)
            other = lab.server(3 - j)
            # anytun hands client-to-client packets to the kernel, which must forward them
            s.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            procs.append(s.popen(["anytun-controld", "-D", "-f", str(conf), "-X",
                                  "127.0.0.1:2324"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL))
            wait_port(s, 2324)
            procs.append(s.popen(["anytun", "-D", "-L", "stdout:2", "-i", AA4, "-s", str(j),
                                  "-t", "tun", "-d", "tun7", "-n", "10.8.0.1/16",
                                  "-X", "127.0.0.1:2324", "-S", "2323", "-I", s.ip4,
                                  "-M", f"{other.ip4}:2323"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL))
            _wait_dev(s, "tun7")
        procs += _clients(lab)
        time.sleep(0.5)
        return _measure(lab, span)
    finally:
        for p in reversed(procs):
            stop_process(p)


BGP_CASES = (("drain", "drain", False), ("drain, BFD", "drain", True),
             ("relay killed", "kill", False), ("crash, hold timer", "crash", False),
             ("crash, BFD", "crash", True))


def run() -> list[dict]:
    span = max(3.0, seconds() * 2)
    missing = [p for p in ("uanytun", "anytun", "anytun-config", "anytun-controld",
                           "redis-server") if shutil.which(p) is None]
    if missing:
        return [row("failover loss", None, None, "pings", f"needs {', '.join(missing)}")]
    results: dict[str, Result | str] = {}
    plan: list[tuple[str, object]] = [("ours", _ours), ("reference", _reference)]
    if all(shutil.which(p) for p in ("bird", "birdc", "exabgp")):
        for label, how, bfd in BGP_CASES:
            plan.append((label, lambda lab, d, span, how=how, bfd=bfd:
                         _bgp(lab, d, max(span, 6.0), how, bfd)))
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        for i, (name, fn) in enumerate(plan):
            try:
                with AnycastLab(servers=2, clients=2, hosts=1, tag="benchfo") as lab:
                    d = Path(tmp) / f"run{i}"
                    d.mkdir()
                    results[name] = fn(lab, d, span)  # type: ignore[operator]
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                results[name] = f"{type(exc).__name__}: {exc}"
    ours, ref = results["ours"], results["reference"]
    note = f"ping every 20 ms for {span:g}s, route moved 1->2->1"
    lost_o = ours[0] - ours[1] if isinstance(ours, tuple) else None
    lost_r = ref[0] - ref[1] if isinstance(ref, tuple) else None
    if isinstance(ours, str):
        note += f"; ours failed: {ours}"
    if isinstance(ref, str):
        note += f"; anytun failed: {ref}"
    out = row("failover loss (Redis vs anytun sync)", lost_o, lost_r, "pings lost", note)
    if lost_o is not None and lost_r == 0:
        out["ratio"] = None if lost_o else 1.0
    rows = [out]
    flip = ours[2] * 1000 if isinstance(ours, tuple) else None
    if len(plan) == 2:
        rows.append(row("failover by BGP", None, flip, "ms", "needs bird, birdc, exabgp"))
    for label, _, _ in BGP_CASES:
        res = results.get(label)
        if res is None:
            continue
        if isinstance(res, str):
            rows.append(row(f"failover by BGP: {label}", None, flip, "ms", f"failed: {res}"))
            continue
        rows.append(row(f"failover by BGP: {label}", res[2] * 1000, flip,
                        "ms until traffic flows",
                        f"{res[0] - res[1]} of {res[0]} pings lost; node 1 leaves once; "
                        "reference: the ip route flip"))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
