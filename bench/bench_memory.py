"""Idle memory: the RSS of each daemon of a running point-to-point tunnel (up, one ping through
it, then idle for two seconds), anytun-relay on the C engine and on the Python plane against
uanytun and anytun in the same run; and anytun-relay's server and relay modes on their own.

anytun-relay runs on this interpreter (sys.executable): a development venv on a pyenv build
with a shared libpython adds about 1.5 MiB to what a regular install on Debian's python3
takes (docs/performance.md "Idle memory per mode" has both).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_tunnel import IMPLS, OURS, PY_PLANE, start_pair
from bench.common import NsPair, median, rounds, row, rss_bytes, wait_link
from lab import stop_process

MIB = 1024 * 1024
IDLE = 2.0       # seconds after the ping: timers ran, nothing in flight
SETTLE = 4.0     # seconds after a start without a peer (server, relay mode)
GOAL_MIB = 20

SERVER_TOML = """
[node]
interface = "{addr}"
port = 4450
device = "tun"
device_name = "bmem0"
ifconfig = ["10.11.0.1/16"]
tunneling = true
[defaults]
role = "left"
[[connection]]
mux = 1
passphrase = "one"
routes = ["10.11.1.0/24"]
[[connection]]
mux = 2
passphrase = "two"
routes = ["10.11.2.0/24"]
"""


def tunnel_rss(impl: str) -> float | None:
    """Median over rounds of the mean RSS of the two ends, in MiB; None if it cannot run."""
    if IMPLS[impl].available() is not None:
        return None
    samples = []
    for _ in range(rounds()):
        with NsPair("bmem") as net:
            pair = start_pair(net, IMPLS[impl], "aes-ctr", "bmem1")
            try:
                time.sleep(IDLE)
                samples.append(sum(rss_bytes(p) for p in pair.pids) / len(pair.pids) / MIB)
            finally:
                for p in pair.procs:
                    stop_process(p)
    return median(samples)


def alone_rss(argv: list[str], device: str | None) -> float:
    """RSS in MiB of anytun-relay started alone in a namespace, SETTLE seconds after start."""
    samples = []
    for _ in range(rounds()):
        with NsPair("bmem") as net, tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp, "server.toml")
            conf.write_text(SERVER_TOML.format(addr=NsPair.A4))
            args = [a.replace("{conf}", str(conf)) for a in argv]
            log = Path(tmp, "log")
            with open(log, "wb") as out:
                proc = net.a.popen([sys.executable, "-m", "relay", "-D", "-L", "stdout:2",
                                    *args], stdout=out, stderr=subprocess.STDOUT)
            try:
                if device is not None and not wait_link(net.a, device, 15):
                    raise RuntimeError(f"anytun-relay did not start: {log.read_text()[-300:]}")
                time.sleep(SETTLE)
                if proc.poll() is not None:
                    raise RuntimeError(f"anytun-relay exited: {log.read_text()[-300:]}")
                samples.append(rss_bytes(proc.pid) / MIB)
            finally:
                stop_process(proc)
    return median(samples) or 0.0


def run() -> list[dict]:
    ours, py = tunnel_rss(OURS), tunnel_rss(PY_PLANE)
    uanytun, anytun = tunnel_rss("uanytun"), tunnel_rss("anytun")
    where = f"this interpreter {sys.executable}"
    notes = [f"anytun {anytun:.1f} MiB" if anytun else "anytun not installed",
             f"python plane {py:.1f} MiB" if py else "", f"goal <= {GOAL_MIB} MiB on a "
             "regular install", where]
    rows = [row("idle rss, point-to-point vs uanytun", ours, uanytun, "MiB",
                "; ".join(n for n in notes if n))]
    server = alone_rss(["--config", "{conf}"], "bmem0")
    relay = alone_rss(["--rtpproxy", "udp:127.0.0.1:22222", "--rtp-address", NsPair.A4,
                       "--rtp-ports", "30000-30999"], None)
    rows.append(row("idle rss, server (2 clients, C hub)", server, None, "MiB", where))
    rows.append(row("idle rss, relay mode", relay, None, "MiB", where))
    return rows
