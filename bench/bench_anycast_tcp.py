"""Full anycast TCP: what a route move costs a tunnel on ONE TCP connection to the anycast
address, beside the same tunnel over UDP, in the same lab and run.

Two anytun-relay nodes (a real Redis, the cluster key, `--anycast-tcp`), one anytun-relay
client on the anycast address, first with `--transport anycast-tcp`, then with UDP:
* throughput: iperf3 from the client through the tunnel to node 1's tunnel address;
* owner alive: a ping every 20 ms through the tunnel while the route moves 1 -> 2 -> 1 (node 2
  hands the TCP segments to node 1; for UDP node 2 answers itself);
* owner killed: node 1 dies by SIGKILL as the route moves to node 2 (node 2 re-creates the TCP
  connection with TCP_REPAIR; for UDP it simply answers).
Each recovery row is the longest time without a ping reply; bytes lost are the stream bytes
the two ends' framing skipped to find the next frame. Every process runs the default data
plane: the C hub at the nodes and at the anycast-tcp client (its stream framing in
relay/fastpath/stream.c), the point-to-point C engine at the UDP client; the notes say which
plane each end reported. `python -m bench.bench_anycast_tcp`; never raises.
"""

from __future__ import annotations

import itertools
import json
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
from lab.netns import stop_process, wait_for
from lab.services import wait_port

REDIS_PORT = 6395
# BENCH_ANYCAST_DATAPLANE=python: the same run on the Python plane (the reference)
RELAY = [sys.executable, "-m", "relay.cli", "-D", "-L", "stdout:3", "--dataplane",
         os.environ.get("BENCH_ANYCAST_DATAPLANE", "auto")]
INNER = "10.8.0.0/16"


def _toml(j: int) -> str:
    return (f'[node]\ninterface = "{AA4}"\nsender_id = {j}\ndevice_name = "tun7"\n'
            'transports = ["udp", "anycast-tcp"]\nkeepalive = 1\n'
            'ifconfig = ["10.8.0.1/16"]\n\n[defaults]\nrole = "server"\n\n'
            + "".join(f'[[connection]]\nmux = {m}\npassphrase = "pass-{m}"\n'
                      f'routes = ["10.8.{m}.0/24"]\n\n' for m in (1, 2)))


def _status(node, dev: str) -> dict | None:
    proc = node.run([sys.executable, "-m", "relay.cli", "status", "--json", dev], check=False,
                    timeout=20)
    return json.loads(proc.stdout) if proc.returncode == 0 else None



class Bench:
    def __init__(self, lab: AnycastLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.host = lab.hosts[0]
        self.key = tmp / "key"
        self.key.write_text("bench cluster key, long enough\n")
        self.procs: list[subprocess.Popen] = []
        self.nodes: dict[int, subprocess.Popen] = {}
        self.client: subprocess.Popen | None = None
        self.procs.append(self.host.popen(
            ["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.host, REDIS_PORT)
        for node in lab.servers:
            node.host.sysctl("net.ipv4.ip_forward", 1)

    def start_node(self, j: int) -> None:
        node = self.lab.server(j)
        (self.tmp / f"s{j}.toml").write_text(_toml(j))
        self.nodes[j] = node.popen([
            *RELAY, "--config", str(self.tmp / f"s{j}.toml"), "--sync",
            f"redis://{self.host.ip4}:{REDIS_PORT}/0", "--sync-node", f"s{j}",
            "--cluster-key-file", str(self.key), "--anycast-tcp", node.ip4],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: (_status(node, "tun7") or {}).get("anycast_tcp") is not None, 20,
                 f"node {j}")

    def kill_node(self, j: int) -> None:
        proc = self.nodes.pop(j)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        stop_process(proc)

    def start_client(self, transport: str) -> None:
        """One connection per transport (a client that starts again with the same keys
        would look like a replay to the nodes' windows for a moment)."""
        c = self.lab.client
        m = 1 if transport == "anycast-tcp" else 2
        self.client = c.popen([*RELAY, "-r", AA4, "-o", "4444", "--transport", transport,
                               *(["--keepalive", "1"] if transport == "anycast-tcp" else []),
                               "-m", str(m), "-E", f"pass-{m}", "-e", "client", "-d",
                               "tun8", "-n", f"10.8.{m}.2/16"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: c.run(["ping", "-c1", "-W1", "10.8.0.1"], check=False).returncode == 0,
                 20, f"the {transport} tunnel")
        # the control socket may come up after the first packets pass
        wait_for(lambda: _status(c, "tun8") is not None, 10, "the client's status")

    def stop_client(self) -> None:
        if self.client is not None:
            stop_process(self.client)
            self.client = None
            wait_for(lambda: self.lab.client.run(["ip", "link", "show", "tun8"],
                                                 check=False).returncode != 0, 10, "tun8 to go")

    def move(self, j: int) -> None:
        self.lab.move(j)
        self.lab.router.run(["ip", "route", "replace", INNER, "via", self.lab.server(j).ip4])

    def iperf(self, secs: float) -> float:
        node = self.lab.server(1)
        server = node.popen(["iperf3", "-s", "-1", "-B", "10.8.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(node, 5201)
            out = self.lab.client.run(["iperf3", "-c", "10.8.0.1", "-t", str(secs), "-J"],
                                      check=False, timeout=secs + 30)
        finally:
            stop_process(server)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6

    def pinged(self, span: float, events: list[tuple[float, object]]) -> tuple[float, int]:
        """(longest time without a reply in ms, pings lost) while `events` happen."""
        ping = self.lab.client.popen(["ping", "-D", "-n", "-i", "0.02", "-W", "3", "-c",
                                      str(int(span / 0.02)), "10.8.0.1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        t0 = time.monotonic()
        for at, fn in events:
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            fn()  # type: ignore[operator]
        out, _ = ping.communicate(timeout=span + 30)
        stamps = [float(ln[1:ln.index("]")]) for ln in out.splitlines()
                  if ln.startswith("[") and "bytes from" in ln]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        return max(gaps, default=span) * 1000, int(span / 0.02) - len(stamps)

    def planes(self) -> str:
        """The data plane each end runs (the external plane's kind, or python)."""
        out = []
        for who, node, dev in (("client", self.lab.client, "tun8"),
                               *((f"node {j}", self.lab.server(j), "tun7")
                                 for j in sorted(self.nodes))):
            tun = (_status(node, dev) or {}).get("tunnel") or {}
            ext = tun.get("external_dataplane") or {}
            out.append(f"{who} {ext.get('kind', 'python')}")
        return ", ".join(out)

    def skipped(self) -> int:
        """Stream bytes both ends threw away to find the next frame."""
        total = 0
        for node, dev in ((self.lab.client, "tun8"), *((self.lab.server(j), "tun7")
                                                        for j in self.nodes)):
            for svc in (_status(node, dev) or {}).values():
                for t in (svc.get("transports", []) if isinstance(svc, dict) else []):
                    if t.get("kind") == "anycast-tcp":
                        total += t.get("skipped_bytes", 0)
        return total

    def close(self) -> None:
        self.stop_client()
        for p in [*self.nodes.values(), *self.procs]:
            stop_process(p)


def _measure(b: Bench, transport: str, span: float) -> dict:
    out: dict = {}
    b.move(1)
    b.start_client(transport)
    try:
        out["planes"] = b.planes()
        out["mbps"] = b.iperf(seconds())
        before = b.skipped()
        out["alive"] = b.pinged(span, [(span / 3, lambda: b.move(2)),
                                       (2 * span / 3, lambda: b.move(1))])
        out["alive_bytes"] = b.skipped() - before
        before = b.skipped()

        def kill() -> None:
            b.kill_node(1)
            b.move(2)
        out["killed"] = b.pinged(span, [(span / 3, kill)])
        out["killed_bytes"] = b.skipped() - before
    finally:
        b.stop_client()
        if 1 not in b.nodes:
            b.start_node(1)
        b.move(1)
    return out


def run() -> list[dict]:
    missing = [p for p in ("redis-server", "iperf3", "nft") if shutil.which(p) is None]
    if missing or os.geteuid() != 0:
        why = f"needs {', '.join(missing)}" if missing else "needs root"
        return [row("anycast-tcp vs udp", None, None, "Mbit/s", why)]
    span = max(4.5, seconds() * 2)
    res: dict[str, dict | str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-atcp-") as tmp:
        try:
            with AnycastLab(servers=2, clients=1, hosts=1, tag="benchatcp") as lab:
                b = Bench(lab, Path(tmp))
                try:
                    b.start_node(1)
                    b.start_node(2)
                    time.sleep(1.0)
                    for transport in ("anycast-tcp", "udp"):
                        try:
                            res[transport] = _measure(b, transport, span)
                        except Exception as exc:
                            traceback.print_exc(file=sys.stderr)
                            res[transport] = f"{type(exc).__name__}: {exc}"
                finally:
                    b.close()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return [row("anycast-tcp vs udp", None, None, "Mbit/s", f"lab failed: {exc}")]
    t, u = res.get("anycast-tcp"), res.get("udp")
    t = t if isinstance(t, dict) else {}
    u = u if isinstance(u, dict) else {}
    failed = "; ".join(f"{k} failed: {v}" for k, v in res.items() if isinstance(v, str))
    note = f"ping every 20 ms for {span:g}s" + (f"; {failed}" if failed else "")
    planes = "; ".join(f"{k}: {v['planes']}" for k, v in res.items()
                       if isinstance(v, dict) and "planes" in v)
    rows = [row("anycast-tcp throughput (vs udp transport)", t.get("mbps"), u.get("mbps"),
                "Mbit/s", f"iperf3 through the tunnel, {seconds():g}s; planes {planes}" +
                (f"; {failed}" if failed else ""))]
    for case, what in (("alive", "owner alive, route 1->2->1"),
                       ("killed", "owner SIGKILLed as the route moves")):
        tg, ug = t.get(case, (None, None)), u.get(case, (None, None))
        rows.append(row(f"anycast-tcp recovery, {what} (vs udp)", tg[0], ug[0], "ms",
                        f"{note}; pings lost: anycast-tcp {tg[1]}, udp {ug[1]}"))
        rows.append(row(f"anycast-tcp stream bytes lost, {what}", t.get(f"{case}_bytes"),
                        None, "bytes", "skipped by the framing to find the next frame"))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
