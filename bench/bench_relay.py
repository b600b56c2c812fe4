"""Relay mode: RTP forwarding of anytun-relay vs rtpengine's userspace forwarding.

The media relay runs in namespace `b` (10.9.0.2), both RTP parties of every call in `a`
(10.9.0.1). Both relays are driven the same way, through the rtpproxy control protocol over
UDP (U for the offer, L for the answer, tags with ";1" media index as Kamailio sends them);
rtpengine runs without its kernel module (--table=-1), so it forwards in userspace.
bench/blast.c `rtp` mode plays the parties: one socket per party, each sending RTP-sized
datagrams (172 bytes: 12 header + 160 G.711 payload) with its send time inside, each counting
what it receives and the one-way delay.

Every measurement follows half a second of the same traffic (latching, first packets), so
the figures are the steady state.

* load: many concurrent calls at 50 packets/s per direction (20 ms ptime): delivered share,
  delay added over the same path without a relay (p50/p99), CPU per forwarded packet;
* capacity: a few calls at a far higher rate: forwarded packets/s under overload.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import CpuWindow, NsPair, blaster, median, rounds, row, rss_bytes, seconds
from lab import stop_process

CONTROL_PORT = 22222
PORTS = (30000, 39999)
RTP_SIZE = 172
LOAD_CALLS, LOAD_PPS = 200, 50          # 200 calls = 400 streams = 20 kpps offered
FLOOD_CALLS, FLOOD_PPS = 20, 10000       # 40 streams x 10 kpps = 400 kpps offered
PARTY_A, PARTY_B = 20000, 45000          # local port bases of the two parties
WARMUP = 0.5                             # seconds of traffic before each measurement
PY_MEDIA = "anytun-relay (Python media path)"
C_MEDIA = "anytun-relay (C media path)"
REFERENCE = "rtpengine"

CONTROL_CLIENT = """
import json, socket, sys
calls, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
a, b, me = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
def cmd(text):
    for _ in range(3):
        s.sendto(text.encode(), (host, port))
        try:
            reply = s.recv(2000).decode().split()
        except socket.timeout:
            continue
        if reply[0] == text.split()[0]:
            return reply[1:]
    raise SystemExit(f"no answer to {text!r}")
out = []
for i in range(calls):
    call = f"bench-{i}"
    p1 = cmd(f"u{i} U {call} {me} {a + 2 * i} ft{i};1")
    p2 = cmd(f"l{i} L {call} {me} {b + 2 * i} ft{i};1 tt{i};1")
    if not p1[0].isdigit() or not p2[0].isdigit():
        raise SystemExit(f"relay refused: {p1} {p2}")
    out.append((int(p1[0]), int(p2[0])))
print(json.dumps(out))
"""


@dataclass
class Relay:
    name: str
    argv: list[str]


def relays() -> dict[str, Relay | str]:
    """Relay name -> how to run it, or why it cannot run here."""
    out: dict[str, Relay | str] = {}
    args = ["-D", "--rtpproxy", f"udp:{NsPair.B4}:{CONTROL_PORT}", "--rtp-address", NsPair.B4,
            "--rtp-ports", f"{PORTS[0]}-{PORTS[1]}", "--rtp-timeout", "300"]
    from relay import fastpath
    # RELAY_FASTPATH_MEDIA=0 makes the daemon relay in Python (relay.rtpproxy.fastmedia)
    out[PY_MEDIA] = Relay(PY_MEDIA, ["env", "RELAY_FASTPATH_MEDIA=0", sys.executable, "-m",
                                     "relay.cli", *args])
    if fastpath.available():
        out[C_MEDIA] = Relay(C_MEDIA, [sys.executable, "-m", "relay.cli", *args])
    else:
        out[C_MEDIA] = fastpath.unavailable_reason() or "fast path not built"
    rtpengine = shutil.which("rtpengine") or ("/usr/bin/rtpengine"
                                              if os.path.exists("/usr/bin/rtpengine") else None)
    if rtpengine:
        out["rtpengine"] = Relay("rtpengine", [
            rtpengine, "--foreground", "--table=-1", f"--interface={NsPair.B4}",
            f"--listen-udp={NsPair.B4}:{CONTROL_PORT}", f"--port-min={PORTS[0]}",
            f"--port-max={PORTS[1]}", "--log-stderr", "--log-level=3", "--timeout=300"])
    else:
        out["rtpengine"] = "rtpengine is not installed (apt-get install rtpengine-daemon)"
    return out


def _wait_control(net: NsPair, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log.read_text(errors="replace")
            raise RuntimeError(f"relay exited: {err.strip()[-300:]}")
        ss = net.b.run(["ss", "-Huln", f"sport = :{CONTROL_PORT}"], check=False).stdout
        if ss.strip():
            return
        time.sleep(0.05)
    raise RuntimeError("relay control socket did not open")


def _sessions(net: NsPair, calls: int, base_a: int, base_b: int) -> list[tuple[int, int]]:
    out = net.a.run([sys.executable, "-c", CONTROL_CLIENT, str(calls), NsPair.B4,
                     str(CONTROL_PORT), str(base_a), str(base_b), NsPair.A4], timeout=120,
                    check=False)
    if out.returncode != 0:
        raise RuntimeError(f"session setup failed: {(out.stderr or out.stdout).strip()[-200:]}")
    return [tuple(p) for p in json.loads(out.stdout)]  # type: ignore[misc]


def _spec(path: Path, calls: int, base_a: int, base_b: int,
          ports: list[tuple[int, int]] | None) -> None:
    """Party A sends to the port L answered, party B to the port U answered; without ports
    the parties talk directly (the baseline path)."""
    lines = []
    for i in range(calls):
        a, b = base_a + 2 * i, base_b + 2 * i
        if ports is None:
            lines.append(f"{NsPair.A4} {a} {NsPair.A4} {b}")
            lines.append(f"{NsPair.A4} {b} {NsPair.A4} {a}")
        else:
            p_u, p_l = ports[i]
            lines.append(f"{NsPair.A4} {a} {NsPair.B4} {p_l}")
            lines.append(f"{NsPair.A4} {b} {NsPair.B4} {p_u}")
    path.write_text("\n".join(lines) + "\n")


def _blast(net: NsPair, spec: Path, secs: float, pps: int) -> dict:
    out = net.a.run([str(blaster()), "rtp", str(spec), str(secs), str(pps), str(RTP_SIZE)],
                    timeout=secs + 60, check=False).stdout.split()
    if not out or out[0] != "rtp":
        raise RuntimeError(f"rtp generator failed: {' '.join(out)[:200]}")
    vals = dict(zip(out[1::2], (int(v) for v in out[2::2]), strict=False))
    return vals


def measure(net: NsPair, relay: Relay | None, tmp: Path, calls: int, pps: int,
            secs: float, base: int, sessions=None) -> dict:
    """One run: start the relay (None = direct path), set up calls, play the streams."""
    spec = tmp / "spec.txt"
    proc = None
    try:
        ports = None
        if relay is not None:
            log = tmp / f"{relay.name}.log"
            with log.open("wb") as f:  # a file, not a pipe: a full pipe would stall the relay
                proc = net.b.popen(relay.argv, stdout=f, stderr=subprocess.STDOUT)
            _wait_control(net, proc, log)
            ports = (sessions or _sessions)(net, calls, PARTY_A + base, PARTY_B + base)
        _spec(spec, calls, PARTY_A + base, PARTY_B + base, ports)
        _blast(net, spec, WARMUP, pps)  # latching and first-packet work: not measured
        win = CpuWindow([proc.pid] if proc else [])
        win.start()
        got = _blast(net, spec, secs, pps)
        win.stop()
        res = {"sent": got["sent"], "received": got["received"],
               "kpps": got["received"] / secs / 1e3,
               "delivered": got["received"] / got["sent"] if got["sent"] else None,
               "p50_us": got["p50_us"], "p99_us": got["p99_us"]}
        if proc is not None:
            res["cpu_us_per_pkt"] = win.cpu / got["received"] * 1e6 if got["received"] else None
            res["rss_mb"] = rss_bytes(proc.pid) / 2**20
        return res
    finally:
        if proc is not None:
            stop_process(proc)


def run() -> list[dict]:
    return rows_from(*measure_all(relays(), _sessions))


def measure_all(avail: dict[str, Relay | str], sessions) -> tuple[dict, dict[str, str]]:
    """Every relay of `avail` (and the direct path) at load and in overload, rounds() times
    in rotating order; calls are set up by `sessions(net, calls, base_a, base_b)`."""
    names = [n for n, r in avail.items() if isinstance(r, Relay)]
    secs = seconds()
    results: dict[tuple[str, str], list[dict]] = {}
    errors: dict[str, str] = {n: r for n, r in avail.items() if isinstance(r, str)}
    with NsPair("benchrelay") as net, tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for r in range(rounds()):
            order = names[r % max(1, len(names)):] + names[:r % max(1, len(names))]
            for test, calls, pps in (("load", LOAD_CALLS, LOAD_PPS),
                                     ("flood", FLOOD_CALLS, FLOOD_PPS)):
                for name in [*order, "direct"] if test == "load" else order:
                    if name in errors:
                        continue
                    print(f"   round {r + 1}: {test} {name}", file=sys.stderr, flush=True)
                    try:
                        # fresh local ports each run: no stale socket state between runs
                        base = 2 * calls * (len(results.get((name, test), [])) % 4)
                        res = measure(net, avail[name] if name != "direct" else None,  # type: ignore[arg-type]
                                      tmp, calls, pps, secs, base, sessions)
                        results.setdefault((name, test), []).append(res)
                    except Exception as exc:
                        errors[name] = str(exc).splitlines()[0][:200]
    return results, errors


def _med(results: dict, name: str, test: str, key: str) -> float | None:
    return median(r.get(key) for r in results.get((name, test), []))


def rows_from(results: dict, errors: dict[str, str],
              ours_list: tuple[tuple[str, str], ...] = ((C_MEDIA, "C"), (PY_MEDIA, "Python")),
              reference: str = REFERENCE, prefix: str = "relay") -> list[dict]:
    base50 = _med(results, "direct", "load", "p50_us")
    base99 = _med(results, "direct", "load", "p99_us")

    def added(name: str, key: str, base: float | None) -> float | None:
        v = _med(results, name, "load", key)
        return None if v is None or base is None else max(0.0, v - base)

    load = f"{LOAD_CALLS} calls x 2 x {LOAD_PPS} pps"
    flood = f"{FLOOD_CALLS} calls x 2 x {FLOOD_PPS} pps offered"
    out = []
    for ours, tag in ours_list:
        err = "; ".join(f"{n}: {e}" for n, e in errors.items() if n in (ours, reference))
        if not results.get((ours, "load")) and not results.get((ours, "flood")):
            out.append(row(f"{prefix} ({tag} media path)", None, None, "", err or "not run"))
            continue
        out += [
            row(f"{prefix} {tag}: forwarded rate, overload", _med(results, ours, "flood", "kpps"),
                _med(results, reference, "flood", "kpps"), "kpps",
                "; ".join(x for x in (flood, err) if x)),
            row(f"{prefix} {tag}: delivered share at load",
                _med(results, ours, "load", "delivered"),
                _med(results, reference, "load", "delivered"), "share", load),
            row(f"{prefix} {tag}: added delay p50 at load", added(ours, "p50_us", base50),
                added(reference, "p50_us", base50), "us",
                f"lower is better; direct path p50 {base50:.0f} us" if base50 is not None
                else "lower is better"),
            row(f"{prefix} {tag}: added delay p99 at load", added(ours, "p99_us", base99),
                added(reference, "p99_us", base99), "us",
                f"lower is better; direct path p99 {base99:.0f} us" if base99 is not None
                else "lower is better"),
            row(f"{prefix} {tag}: cpu per packet at load",
                _med(results, ours, "load", "cpu_us_per_pkt"),
                _med(results, reference, "load", "cpu_us_per_pkt"), "us/pkt",
                "lower is better"),
            row(f"{prefix} {tag}: cpu per packet, overload",
                _med(results, ours, "flood", "cpu_us_per_pkt"),
                _med(results, reference, "flood", "cpu_us_per_pkt"), "us/pkt",
                "lower is better"),
            row(f"{prefix} {tag}: rss at load", _med(results, ours, "load", "rss_mb"),
                _med(results, reference, "load", "rss_mb"), "MiB", "lower is better"),
        ]
    return out
