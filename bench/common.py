"""Helpers shared by the benchmark modules: settings, rows, process costs, namespace pairs.

Settings come from the environment so `run()` keeps no arguments:
BENCH_ROUNDS (alternating rounds per figure, default 3) and BENCH_SECONDS (seconds per
measurement, default 3). `python -m bench --rounds/--seconds` sets them.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab import Host, Namespaces

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rounds() -> int:
    return max(1, int(os.environ.get("BENCH_ROUNDS", "3")))


def seconds() -> float:
    return max(0.5, float(os.environ.get("BENCH_SECONDS", "3")))


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def row(name: str, ours: float | None, reference: float | None, unit: str,
        note: str = "") -> dict:
    """A table row; ratio = ours / reference when both exist."""
    ratio = ours / reference if ours is not None and reference else None
    return {"name": name, "ours": ours, "reference": reference, "unit": unit,
            "ratio": ratio, "note": note}


def machine_summary() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} x {model or platform.processor() or '?'}, "
            f"Linux {platform.release()}, load average {load}")


# -- process costs --------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class CpuWindow:
    """CPU seconds a set of processes used between start() and stop()."""

    pids: list[int]
    t0: float = 0.0
    c0: float = 0.0
    wall: float = 0.0
    cpu: float = 0.0

    def start(self) -> None:
        self.c0 = sum(cpu_seconds(p) for p in self.pids)
        self.t0 = time.monotonic()

    def stop(self) -> None:
        self.cpu = sum(cpu_seconds(p) for p in self.pids) - self.c0
        self.wall = time.monotonic() - self.t0


# -- two namespaces joined by one veth link --------------------------------------------------------

class NsPair:
    """Namespaces `a` (10.9.0.1, fd00:9::1) and `b` (10.9.0.2, fd00:9::2) on one veth link."""

    A4, B4 = "10.9.0.1", "10.9.0.2"
    A6, B6 = "fd00:9::1", "fd00:9::2"

    def __init__(self, tag: str = "bench") -> None:
        self.ns = Namespaces(tag)
        try:
            self.a = self.ns.add("a")
            self.b = self.ns.add("b")
            self.ns.link(self.a, "eth0", self.b, "eth0")
            for host, v4, v6 in ((self.a, self.A4, self.A6), (self.b, self.B4, self.B6)):
                host.run(["ip", "addr", "add", f"{v4}/24", "dev", "eth0"])
                host.run(["ip", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad"])
            self.a.run(["ping", "-c", "1", "-W", "2", "-q", self.B4])
        except BaseException:
            self.ns.close()
            raise

    def close(self) -> None:
        self.ns.close()

    def __enter__(self) -> NsPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def link_counter(host: Host, ifname: str, counter: str) -> int:
    """A statistics counter of an interface inside a namespace (e.g. rx_packets)."""
    out = host.run(["cat", f"/sys/class/net/{ifname}/statistics/{counter}"], check=False)
    return int(out.stdout.strip() or 0)


def wait_link(host: Host, ifname: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(["ip", "link", "show", ifname], check=False).returncode == 0:
            return True
        time.sleep(0.05)
    return False


# -- the UDP packet generator (C, compiled once per run) -------------------------------------------

_BLAST: Path | None = None


def blaster() -> Path:
    """Path of the compiled bench/blast.c (a sendmmsg flooder and recvmmsg sink)."""
    global _BLAST
    if _BLAST is None or not _BLAST.exists():
        cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
        if cc is None:
            raise RuntimeError("no C compiler to build bench/blast.c")
        out = Path(tempfile.mkdtemp(prefix="bench-blast-")) / "blast"
        subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE",
                        "-o", str(out), str(HERE / "blast.c")], check=True,
                       capture_output=True, text=True)
        _BLAST = out
    return _BLAST
