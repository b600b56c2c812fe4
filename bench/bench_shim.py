"""libaarp.so overhead: what preloading the library costs a program, measured in the lab.

Each program run does a warm-up and then N timed calls and reports the median per call; the
order of the runs rotates every round (bench/__main__ collects the rows;
`python -m bench.bench_shim` prints them):

* steady state: socket()+connect()+close() over TCP to AA through the library (answer cached)
  vs the same to UA, the calls alternating in one process so both see the same kernel state
  (separate processes drift by +-20 % from TIME_WAIT and scheduling alone); UA passes the
  hook untouched, whose cost the rows below measure on their own -- goal <= 1.05;
* cold first connect: the same with the library's cache flushed before every connect (one
  probe round trip plus bookkeeping) minus the direct connect -- goal <= 1 ms; for BGP-style
  anycast (in-band answer from aarp-responder) and for kernel anycast (ICMP source answer);
* destinations outside the anycast prefixes: with vs without the library, over TCP and over a
  bare UDP connect() (which magnifies the per-call cost of the hook) -- goal: no difference;
* the host cache: a cold first connect (process cache flushed before every connect) answered
  by a warm host cache, vs a direct connect to UA -- goal <= 1.05;
* event-loop lag: an asyncio loop timing its own 1 ms ticks while it opens non-blocking
  connections to AA, with the library on a cache miss (the responder answers), on a silent
  address (probes dropped) and with a warm host cache, against the same loop without it;
* the seccomp supervisor (aarp-shim --seccomp): a TCP connect to AA (cached) and one outside
  the prefixes (let through), vs the same connect to UA without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aarp import shim
from bench.common import median, rounds, row
from lab import AA4, AA6, AK6, AnycastLab

PORT = 7000
CALLS = 3000

# Times `mode` calls in a loop; with the library preloaded, "cold" flushes its cache first
# (aarp_cache_flush found with dlsym, so the program itself needs no link to it).
CONNBENCH = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}
static int parse(const char *text, int port, struct sockaddr_storage *ss, socklen_t *len) {
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET6, text, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6; a6->sin6_port = htons(port); *len = sizeof *a6;
        return 0;
    }
    if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET; a4->sin_port = htons(port); *len = sizeof *a4;
        return 0;
    }
    return -1;
}
/* mode ADDR[,ADDR2] PORT N: N timed socket+connect+close per address; with two addresses the
 * calls alternate, so both see the same kernel state. Prints one median (ns) per address. */
int main(int argc, char **argv) {
    if (argc != 5) return 2;
    const char *mode = argv[1];
    int n = atoi(argv[4]), tcp = strstr(mode, "tcp") != NULL, cold = strstr(mode, "cold") != NULL;
    void (*flush)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "aarp_cache_flush");
    char addrs[2][64] = {{0}};
    int naddr = sscanf(argv[2], "%63[^,],%63s", addrs[0], addrs[1]);
    struct sockaddr_storage ss[2];
    socklen_t len[2];
    for (int k = 0; k < naddr; k++)
        if (parse(addrs[k], atoi(argv[3]), &ss[k], &len[k]) != 0) return 2;
    int warm = n / 10 < 50 ? n / 10 : 50;
    long long *t[2] = {calloc((size_t)n, sizeof(long long)), calloc((size_t)n, sizeof(long long))};
    for (int i = -warm; i < n; i++) {
        for (int k = 0; k < naddr; k++) {
            if (cold && flush) flush();
            struct sockaddr *sa = (struct sockaddr *)&ss[k];
            long long t0 = now_ns();
            int fd = socket(sa->sa_family, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
            int rc = connect(fd, sa, len[k]);
            close(fd);
            long long t1 = now_ns();
            if (rc != 0) { perror("connect"); return 1; }
            if (i >= 0) t[k][i] = t1 - t0;
        }
    }
    for (int k = 0; k < naddr; k++) {
        qsort(t[k], (size_t)n, sizeof(long long), cmp);
        printf("%lld%s", t[k][n / 2], k + 1 < naddr ? " " : "\n");
    }
    return 0;
}
"""

WHOAMI = Path(__file__).resolve().parents[1] / "tests" / "c" / "whoami.c"


def _compile(src: str, name: str, workdir: Path) -> Path:
    path = workdir / f"{name}.c"
    path.write_text(src)
    exe = workdir / name
    subprocess.run(["gcc", "-std=c11", "-O2", str(path), "-o", str(exe), "-ldl"], check=True,
                   capture_output=True, text=True)
    os.chmod(workdir, 0o755)
    return exe


ANYCAST = "fd00:aa::/64, 10.255.0.0/24, fd00:ab::/64"
SHIM = str(Path(sys.executable).parent / "aarp-shim")


def _wrap(cmd: list[str], how: str | bool, cache: Path | None = None) -> list[str]:
    """`cmd` as run for `how`: False/"plain" alone, True/"lib" preloaded (no host cache),
    "host" preloaded with the host cache, "seccomp" under aarp-shim --seccomp."""
    settings = ["AARP_CONF=/dev/null", f"AARP_ANYCAST={ANYCAST}",
                f"AARP_HOST_CACHE={cache if how == 'host' else 'off'}"]
    if how in (False, "plain"):
        return cmd
    if how == "seccomp":
        return ["env", *settings, SHIM, "--seccomp", "--", *cmd]
    return ["env", f"LD_PRELOAD={shim.library_path()}", *settings, *cmd]


def _median_ns(lab: AnycastLab, exe: Path, mode: str, addr: str, lib: bool | str,
               calls: int, cache: Path | None = None) -> list[float]:
    """Median ns per call for each address of `addr` ("A" or "A,B": calls alternate)."""
    cmd = _wrap([str(exe), mode, addr, str(PORT), str(calls)], lib, cache)
    out = lab.client.run(cmd, timeout=120)
    return [float(v) for v in out.stdout.split()]


# An asyncio loop timing its own 1 ms ticks while it opens N non-blocking connections to
# ADDR (process cache flushed before each when the library is there); prints the worst lag
# and the median time of one connect() call, both in ms.
LOOP_LAG = r"""
import asyncio, ctypes, socket, statistics, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    flush = ctypes.CDLL(None).aarp_cache_flush
except AttributeError:
    flush = None
async def main():
    loop = asyncio.get_running_loop()
    lag, stop = [], False
    async def ticker():
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            lag.append(now - last - 0.001)
            last = now
    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    calls = []
    for _ in range(n):
        if flush:
            flush()
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        s.setblocking(False)
        t0 = time.monotonic()
        try:
            s.connect((addr, port))
        except BlockingIOError:
            pass
        calls.append(time.monotonic() - t0)
        done = loop.create_future()  # what an event loop does: wait until writable
        loop.add_writer(s.fileno(), done.set_result, None)
        await done
        loop.remove_writer(s.fileno())
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        s.close()
        await asyncio.sleep(0.01)
    stop = True
    await tick
    print(max(lag) * 1000, statistics.median(calls) * 1000)
asyncio.run(main())
"""

SILENT4 = """table inet benchsilence {
  chain input { type filter hook input priority 0;
    ip daddr 10.255.0.1 icmp type echo-request drop
    ip daddr 10.255.0.1 udp dport 4445 drop
  }
}"""


def _loop_lag(lab: AnycastLab, addr: str, how: bool | str, cache: Path | None,
              n: int = 40) -> tuple[float, float]:
    out = lab.client.run(_wrap([sys.executable, "-c", LOOP_LAG, addr, str(PORT), str(n)], how,
                               cache), timeout=300)
    worst, call = out.stdout.split()
    return float(worst), float(call)


def measure() -> list[dict]:
    n_rounds = max(5, rounds())
    with tempfile.TemporaryDirectory(prefix="bench-shim-") as tmp, \
            AnycastLab(servers=2, clients=1, tag="benchshim") as lab:
        work = Path(tmp)
        bench = _compile(CONNBENCH, "connbench", work)
        whoami = _compile(WHOAMI.read_text(), "whoami", work)
        s1 = lab.server(1)
        lab.client.host.sysctl("net.ipv4.tcp_tw_reuse", 1)
        proc = s1.popen([str(whoami), "s1", str(PORT)], stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        proc.stdout.readline()
        # The responder's per-source rate limit would turn cold probes into timeouts.
        s1.popen([str(Path(sys.executable).parent / "aarp-responder"), "--anycast", AA6,
                  "--rate", "1000000", "--burst", "1000000"],
                 env=dict(os.environ, AARP_CONF="/dev/null"))
        lab.client.run(["sh", "-c", "for i in $(seq 50); do "
                        "ss -H -uln 'sport = :4445' | grep -q . && exit 0; sleep 0.1; done"],
                       check=False)
        s1.run(["nft", "-f", "-"], input=SILENT4)  # AA4 answers TCP but no probe
        cache = work / "hc"
        daemon = lab.client.popen([SHIM, "--cache-daemon", "--cache-dir", str(cache),
                                   "--log", "error"],
                                  env=dict(os.environ, AARP_CONF="/dev/null",
                                           AARP_ANYCAST=ANYCAST))
        for _ in range(100):
            if (cache / "cache.sock").exists():
                break
            time.sleep(0.05)
        # warm it: one program asks, the daemon probes and keeps the answer
        _median_ns(lab, bench, "tcp", AA6, "host", 5, cache)
        assert daemon.poll() is None
        ua = s1.ip6
        # (series names, mode, addresses, library, calls); the order rotates every round so
        # no job always runs first (kernel state such as TIME_WAIT drifts between runs)
        jobs = [(("tcp_aa_lib", "tcp_ua_pass"), "tcp", f"{AA6},{ua}", True, CALLS),
                (("tcp_ua_plain",), "tcp", ua, False, CALLS),
                (("tcp_ua_lib",), "tcp", ua, True, CALLS),
                (("udp_ua_plain",), "udp", ua, False, CALLS),
                (("udp_ua_lib",), "udp", ua, True, CALLS),
                (("udp_aa_lib",), "udp", AA6, True, CALLS),
                (("cold_aa",), "tcp-cold", AA6, True, 200),
                (("cold_ak",), "tcp-cold", AK6, True, 200),
                (("cold_ua_plain",), "tcp", ua, False, 200),
                (("cold_aa_host", "cold_ua_host"), "tcp-cold", f"{AA6},{ua}", "host", 1000),
                (("sec_aa", "sec_ua"), "tcp", f"{AA6},{ua}", "seccomp", 1000),
                (("sec_ua_plain",), "tcp", ua, False, 1000)]
        series: dict[str, list[float]] = {name: [] for job in jobs for name in job[0]}
        for r in range(n_rounds):
            for names, mode, addr, lib, calls in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
                for name, value in zip(names, _median_ns(lab, bench, mode, addr, lib, calls,
                                                         cache), strict=True):
                    series[name].append(value)
        lag_jobs = [("lag_plain", AA6, False), ("lag_miss", AA6, True),
                    ("lag_silent", AA4, True), ("lag_host", AA6, "host")]
        for r in range(max(3, n_rounds // 2)):
            for name, addr, how in lag_jobs[r % 4:] + lag_jobs[:r % 4]:
                worst, call = _loop_lag(lab, addr, how, cache)
                series.setdefault(name, []).append(worst)
                series.setdefault(f"{name}_call", []).append(call)
    m = {k: median(v) or 0.0 for k, v in series.items()}
    us = 1000.0
    note = f"median of {n_rounds} rotating rounds x {CALLS} calls"
    return [
        row("shim: cached TCP connect+close to AA vs direct to UA", m["tcp_aa_lib"] / us,
            m["tcp_ua_pass"] / us, "us/connect",
            f"goal <= 1.05; calls alternate in one process (UA passes the hook untouched, "
            f"see the next rows for that cost); {note}"),
        row("shim: cold first connect to AA (in-band answer), extra time",
            (m["cold_aa"] - m["cold_ua_plain"]) / us, 1000.0, "us",
            "reference = the 1 ms goal; one probe round trip through aarp-responder"),
        row("shim: cold first connect to AK (kernel anycast), extra time",
            (m["cold_ak"] - m["cold_ua_plain"]) / us, 1000.0, "us",
            "reference = the 1 ms goal; ICMP echo answered by the kernel"),
        row("shim: TCP connect+close outside the prefixes, with vs without",
            m["tcp_ua_lib"] / us, m["tcp_ua_plain"] / us, "us/connect", "goal: 1.00"),
        row("shim: UDP connect() outside the prefixes, with vs without",
            m["udp_ua_lib"] / us, m["udp_ua_plain"] / us, "us/call",
            "bare hook cost per call (no packets sent)"),
        row("shim: UDP connect() to AA (cached pin) vs to UA without",
            m["udp_aa_lib"] / us, m["udp_ua_plain"] / us, "us/call",
            "per-call pinning cost: socket type check, cache, per-fd state"),
        row("shim: cold first connect, warm host cache, vs direct to UA",
            m["cold_aa_host"] / us, m["cold_ua_host"] / us, "us/connect",
            "goal <= 1.05; process cache flushed before every connect, the answer read from "
            "the daemon's shared file; calls alternate in one process"),
        row("shim: event-loop lag, cache miss (responder answers) vs no library",
            m["lag_miss"], m["lag_plain"], "ms worst tick",
            f"asyncio 1 ms ticker; 40 non-blocking connects, each a cold probe; connect() "
            f"call median {m['lag_miss_call']:.2f} ms vs {m['lag_plain_call']:.2f} ms"),
        row("shim: event-loop lag, silent address vs no library",
            m["lag_silent"], m["lag_plain"], "ms worst tick",
            f"probes dropped (a probe would take 600 ms): each connect() waits at most "
            f"nonblock_wait_ms = 20 ms; call median {m['lag_silent_call']:.2f} ms"),
        row("shim: event-loop lag, warm host cache vs no library",
            m["lag_host"], m["lag_plain"], "ms worst tick",
            f"call median {m['lag_host_call']:.3f} ms vs {m['lag_plain_call']:.3f} ms"),
        row("seccomp: TCP connect+close to AA (cached) vs direct to UA",
            m["sec_aa"] / us, m["sec_ua_plain"] / us, "us/connect",
            "aarp-shim --seccomp: notification, pidfd_getfd, connect by the supervisor"),
        row("seccomp: TCP connect+close outside the prefixes, with vs without",
            m["sec_ua"] / us, m["sec_ua_plain"] / us, "us/connect",
            "the added latency of a call the supervisor lets through (CONTINUE)"),
    ]


def run() -> list[dict]:
    """Rows for bench/__main__; never raises (a benchmark never fails)."""
    try:
        if os.geteuid() != 0:
            return [row("shim", None, None, "", "skipped: needs root for network namespaces")]
        return measure()
    except Exception as exc:
        return [row("shim", None, None, "", f"ERROR: {type(exc).__name__}: {exc}")]


def main() -> int:
    for r in run():
        ratio = f"{r['ratio']:.3f}x" if r["ratio"] is not None else "-"
        ours = f"{r['ours']:.2f}" if r["ours"] is not None else "-"
        ref = f"{r['reference']:.2f}" if r["reference"] is not None else "-"
        print(f"{r['name']:<66} {ours:>9} {ref:>9} {r['unit']:<11} {ratio:>8}  {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
