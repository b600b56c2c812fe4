"""Failover loss: pings lost when the anycast route moves between two nodes and back.

Same lab, same run: two anytun-relay nodes sharing state through a real Redis, then two real
anytun servers with their own sync (-S/-M, fed by anytun-controld). Two uanytun clients on the
anycast address; client 1 pings client 2 through the tunnel every 20 ms while the route moves
from node 1 to node 2 and back. `python -m bench.bench_failover`; never raises.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import row, seconds
from lab import AA4, AnycastLab
from lab.netns import stop_process
from lab.services import wait_port

REDIS_PORT = 6390
RELAY = [sys.executable, "-m", "relay", "-D", "-L", "stdout:3"]


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


def _measure(lab: AnycastLab, span: float) -> tuple[int, int]:
    count = int(span / 0.02)
    p = lab.clients[0].popen(["ping", "-n", "-i", "0.02", "-c", str(count), "-W", "1",
                              "10.8.2.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    time.sleep(span / 3)
    lab.move(2)
    time.sleep(span / 3)
    lab.move(1)
    out, _ = p.communicate(timeout=span + 30)
    line = next(ln for ln in out.splitlines() if "received" in ln)
    return int(line.split()[0]), int(line.split(",")[1].split()[0])


def _ours(lab: AnycastLab, tmp: Path, span: float) -> tuple[int, int]:
    host = lab.hosts[0]
    procs = [host.popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
                         "--save", "", "--appendonly", "no", "--protected-mode", "no",
                         "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)]
    try:
        wait_port(host, REDIS_PORT)
        for j in (1, 2):
            path = tmp / f"s{j}.toml"
            path.write_text(_node_toml(j))
            procs.append(lab.server(j).popen(
                [*RELAY, "--config", str(path), "--sync",
                 f"redis://{host.ip4}:{REDIS_PORT}/0", "--sync-node", f"s{j}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_dev(lab.server(j), "tun7")
        procs += _clients(lab)
        time.sleep(0.5)
        return _measure(lab, span)
    finally:
        for p in reversed(procs):
            stop_process(p)


def _reference(lab: AnycastLab, tmp: Path, span: float) -> tuple[int, int]:
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


def run() -> list[dict]:
    span = max(3.0, seconds() * 2)
    missing = [p for p in ("uanytun", "anytun", "anytun-config", "anytun-controld",
                           "redis-server") if shutil.which(p) is None]
    if missing:
        return [row("failover loss", None, None, "pings", f"needs {', '.join(missing)}")]
    results: dict[str, tuple[int, int] | str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        for name, fn in (("ours", _ours), ("reference", _reference)):
            try:
                with AnycastLab(servers=2, clients=2, hosts=1, tag="benchfo") as lab:
                    d = Path(tmp) / name
                    d.mkdir()
                    results[name] = fn(lab, d, span)
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
    return [out]


if __name__ == "__main__":
    for r in run():
        print(r)
