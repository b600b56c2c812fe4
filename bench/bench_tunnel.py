"""Tunnel throughput, packet rate and cost: anytun-relay vs uanytun vs anytun, pairwise.

Both ends of each tunnel run in namespaces `a` and `b` joined by one veth link (NsPair); the
programs get the same anytun-style command line (roles left/right, -E passphrase, defaults
aes-ctr + HMAC-SHA1 tag 10, or null transforms). Per round every implementation runs once, in
rotated order (alternating runs); the table shows medians over the rounds.

Figures per pair and crypto:
* TCP: iperf3 a -> b through the tunnel, receiver's rate;
* UDP 64 and 1400 (inner IPv4 packet sizes): bench/blast.c floods a -> b with sendmmsg; the
  rate is what arrives at a recvmmsg sink behind the far end (device counters would not do:
  a daemon that writes GSO super-packets moves many packets per device "packet");
* CPU per packet: user+system time of both daemons / packets that arrived (seal at one end +
  open at the other); CPU and RSS per Gbit/s from the TCP run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    CpuWindow,
    NsPair,
    blaster,
    median,
    rounds,
    row,
    rss_bytes,
    seconds,
    wait_link,
)
from lab import stop_process

TUN_A, TUN_B = "10.10.0.1", "10.10.0.2"
PASSPHRASE = "bench-passphrase"
CRYPTOS = {
    "aes-ctr": ["-E", PASSPHRASE],  # defaults: -c aes-ctr -a sha1 -b 10 -k aes-ctr
    "null": ["-c", "null", "-a", "null", "-k", "null"],
}
UDP_SIZES = (64, 1400)  # inner IPv4 packet sizes; payload = size - 28
SINK_PORT = 9000


@dataclass
class Impl:
    name: str
    command: Callable[[], list[str]]
    available: Callable[[], str | None]  # None when usable, else why not
    env: dict[str, str] = field(default_factory=dict)


def _which(prog: str) -> Callable[[], str | None]:
    def check() -> str | None:
        from shutil import which
        return None if which(prog) else f"{prog} is not installed"
    return check


def _relay_available() -> str | None:
    try:
        import relay.tunnel.cli  # noqa: F401
    except ImportError as exc:
        return f"anytun-relay has no tunnel endpoint yet ({exc})"
    return None


def _relay_command() -> list[str]:
    return [sys.executable, "-m", "relay.cli"]


IMPLS = {
    "anytun-relay": Impl("anytun-relay", _relay_command, _relay_available),
    # the same daemon without the C fast path: what the Python data plane alone achieves
    "anytun-relay-py": Impl("anytun-relay-py", lambda: [*_relay_command(), "--dataplane",
                                                         "python"], _relay_available),
    "uanytun": Impl("uanytun", lambda: ["uanytun"], _which("uanytun")),
    "anytun": Impl("anytun", lambda: ["anytun"], _which("anytun")),
}
OURS, REFERENCE, OTHER, PY_PLANE = "anytun-relay", "uanytun", "anytun", "anytun-relay-py"


@dataclass
class Pair:
    """A running tunnel: one daemon per namespace."""

    impl: str
    procs: list[subprocess.Popen]
    dev: str

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def start_pair(net: NsPair, impl: Impl, crypto: str, dev: str) -> Pair:
    procs = []
    sides = ((net.a, "left", NsPair.A4, NsPair.B4, TUN_A),
             (net.b, "right", NsPair.B4, NsPair.A4, TUN_B))
    env = {**os.environ, **impl.env} if impl.env else None
    logs = []
    try:
        for host, role, local, remote, addr in sides:
            argv = [*impl.command(), "-D", "-L", "stdout:2", "-i", local, "-p", "4444",
                    "-r", remote, "-o", "4444", "-d", dev, "-t", "tun", "-n", f"{addr}/24",
                    "-e", role, *CRYPTOS[crypto]]
            # output to a file: a pipe nobody reads would stall a chatty daemon
            fd, path = tempfile.mkstemp(prefix=f"bench-{impl.name}-", suffix=".log")
            logs.append(Path(path))
            with os.fdopen(fd, "wb") as f:
                procs.append(host.popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT))
        for (host, *_), proc, log in zip(sides, procs, logs, strict=True):
            if not wait_link(host, dev, 15) or proc.poll() is not None:
                err = log.read_text(errors="replace") if proc.poll() is not None \
                    else "device did not appear"
                raise RuntimeError(f"{impl.name} did not start: {err.strip()[-300:]}")
        pair = Pair(impl.name, procs, dev)
        # Traffic both ways first, so both ends have learned their remote.
        for _ in range(50):
            if net.a.run(["ping", "-c", "1", "-W", "1", "-q", TUN_B], check=False).returncode \
                    == 0:
                break
        else:
            raise RuntimeError(f"{impl.name}: no ping through the tunnel")
        return pair
    except BaseException:
        for p in procs:
            stop_process(p)
        raise
    finally:
        for log in logs:
            log.unlink(missing_ok=True)


def stop_pair(net: NsPair, pair: Pair) -> None:
    for p in pair.procs:
        stop_process(p)
    # The device goes with its daemon; wait so the next pair can reuse the addresses.
    for host in (net.a, net.b):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and \
                host.run(["ip", "link", "show", pair.dev], check=False).returncode == 0:
            time.sleep(0.05)


def measure_tcp(net: NsPair, pair: Pair, secs: float) -> dict:
    server = net.b.popen(["iperf3", "-s", "-1", "-B", TUN_B], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ss = net.b.run(["ss", "-Htln", "sport = :5201"], check=False).stdout
            if ss.strip():
                break
            time.sleep(0.05)
        win = CpuWindow(pair.pids)
        win.start()
        out = net.a.run(["iperf3", "-c", TUN_B, "-t", str(secs), "-J"], check=False,
                        timeout=secs + 30)
        win.stop()
        rss = max(rss_bytes(p) for p in pair.pids)
    finally:
        stop_process(server)
    try:
        rate = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"iperf3 through {pair.impl} failed: {out.stdout[-300:]}") from exc
    gbps = rate / 1e9
    return {"mbps": rate / 1e6, "cores": win.cpu / win.wall,
            "cores_per_gbps": win.cpu / win.wall / gbps,
            "rss_mb": rss / 2**20, "rss_mb_per_gbps": rss / 2**20 / gbps}


def measure_udp(net: NsPair, pair: Pair, size: int, secs: float) -> dict:
    blast = str(blaster())
    sink = net.b.popen([blast, "sink", str(SINK_PORT), str(secs + 30)], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        win = CpuWindow(pair.pids)
        win.start()
        sent = net.a.run([blast, "send", TUN_B, str(SINK_PORT), str(size - 28), str(secs)],
                         check=False, timeout=secs + 30)
        win.stop()
        time.sleep(0.2)  # what is still in flight arrives
        sink.send_signal(signal.SIGTERM)
        out, _ = sink.communicate(timeout=10)
    finally:
        stop_process(sink)
    words = out.decode().split()
    delivered = int(words[1]) if words[:1] == ["received"] else 0
    n_sent = int(sent.stdout.split()[1]) if sent.stdout.startswith("sent") else 0
    return {"kpps": delivered / win.wall / 1e3,
            "cpu_us_per_pkt": win.cpu / delivered * 1e6 if delivered else None,
            "loss": 1 - delivered / n_sent if n_sent else None}


def measure_pair(net: NsPair, impl: Impl, crypto: str, dev: str) -> dict:
    secs = seconds()
    pair = start_pair(net, impl, crypto, dev)
    try:
        result = {"tcp": measure_tcp(net, pair, secs)}
        for size in UDP_SIZES:
            result[f"udp{size}"] = measure_udp(net, pair, size, secs)
        return result
    finally:
        stop_pair(net, pair)


def collect(impls: list[str], cryptos: list[str]) -> dict[tuple[str, str], list[dict]]:
    """Alternating rounds: results[(impl, crypto)] is one dict per round."""
    results: dict[tuple[str, str], list[dict]] = {(i, c): [] for i in impls for c in cryptos}
    errors: dict[tuple[str, str], str] = {}
    n = 0
    with NsPair("benchtun") as net:
        for r in range(rounds()):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for crypto in cryptos:
                for name in order:
                    if (name, crypto) in errors:
                        continue
                    n += 1
                    print(f"   round {r + 1}: {name} {crypto}", file=sys.stderr, flush=True)
                    try:
                        results[(name, crypto)].append(
                            measure_pair(net, IMPLS[name], crypto, f"btun{n}"))
                    except Exception as exc:
                        errors[(name, crypto)] = str(exc).splitlines()[0][:200]
    for key, msg in errors.items():
        results[key] = [{"error": msg}]
    return results


def _med(runs: list[dict], test: str, key: str) -> float | None:
    return median(r[test][key] for r in runs if test in r and r[test].get(key) is not None)


def _error(runs: list[dict]) -> str | None:
    return next((r["error"] for r in runs if "error" in r), None)


FIGURES = [
    # (label, test, key, unit, lower_is_better)
    ("tcp throughput", "tcp", "mbps", "Mbit/s", False),
    ("udp 64 B rate", "udp64", "kpps", "kpps", False),
    ("udp 1400 B rate", "udp1400", "kpps", "kpps", False),
    ("cpu per packet, udp 64 B", "udp64", "cpu_us_per_pkt", "us/pkt", True),
    ("cpu per packet, udp 1400 B", "udp1400", "cpu_us_per_pkt", "us/pkt", True),
    ("cpu per Gbit/s, tcp", "tcp", "cores_per_gbps", "cores", True),
    ("rss per daemon, tcp", "tcp", "rss_mb", "MiB", True),
    ("rss per Gbit/s, tcp", "tcp", "rss_mb_per_gbps", "MiB", True),
]


def rows_from(results: dict[tuple[str, str], list[dict]], cryptos: list[str]) -> list[dict]:
    out = []
    for crypto in cryptos:
        ours, ref, other, py = (results.get((i, crypto), [])
                                for i in (OURS, REFERENCE, OTHER, PY_PLANE))
        for label, test, key, unit, lower in FIGURES:
            o, r, x, y = (_med(runs, test, key) for runs in (ours, ref, other, py))
            notes = []
            if lower:
                notes.append("lower is better")
            if x is not None:
                notes.append(f"anytun {x:.3g}" + (f" ({o / x:.2f}x)" if o is not None else ""))
            if y is not None:
                notes.append(f"python plane {y:.3g}")
            for who, runs in ((OURS, ours), (REFERENCE, ref), (OTHER, other)):
                err = _error(runs)
                if err and test == "tcp" and key == "mbps":
                    notes.append(f"{who}: {err}")
            if test.startswith("udp") and key == "kpps":
                losses = [(who, _med(runs, test, "loss")) for who, runs in
                          (("ours", ours), ("uanytun", ref))]
                text = ", ".join(f"{w} {v:.0%}" for w, v in losses if v is not None)
                if text:
                    notes.append(f"flood loss {text}")
            out.append(row(f"tunnel {crypto}: {label} vs uanytun", o, r, unit, "; ".join(notes)))
    return out


def run() -> list[dict]:
    impls = [name for name, impl in IMPLS.items() if impl.available() is None]
    missing = {name: why for name, impl in IMPLS.items() if (why := impl.available())}
    cryptos = list(CRYPTOS)
    results = collect(impls, cryptos)
    for name, why in missing.items():
        for crypto in cryptos:
            results[(name, crypto)] = [{"error": why}]
    return rows_from(results, cryptos)

