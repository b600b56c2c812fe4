"""libaarp.so overhead: what preloading the library costs a program, measured in the lab.

Per round, alternating, each program run does a warm-up and then N timed calls and reports the
median per call (bench/__main__ collects the rows; `python -m bench.bench_shim` prints them):

* steady state: socket()+connect()+close() over TCP to AA through the library (answer cached)
  vs the same to UA without the library -- goal <= 1.05;
* cold first connect: the same with the library's cache flushed before every connect (one
  probe round trip plus bookkeeping) minus the direct connect -- goal <= 1 ms; for BGP-style
  anycast (in-band answer from aarp-responder) and for kernel anycast (ICMP source answer);
* destinations outside the anycast prefixes: with vs without the library, over TCP and over a
  bare UDP connect() (which magnifies the per-call cost of the hook) -- goal: no difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from aarp import shim
from aarp.lab import AA6, AK6, AnycastLab
from bench.common import median, rounds, row

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
int main(int argc, char **argv) {
    if (argc != 5) return 2;
    const char *mode = argv[1];
    int n = atoi(argv[4]), tcp = strstr(mode, "tcp") != NULL, cold = strstr(mode, "cold") != NULL;
    void (*flush)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "aarp_cache_flush");
    struct sockaddr_in6 a6 = {0};
    struct sockaddr_in a4 = {0};
    struct sockaddr *sa;
    socklen_t len;
    if (inet_pton(AF_INET6, argv[2], &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6; a6.sin6_port = htons(atoi(argv[3]));
        sa = (struct sockaddr *)&a6; len = sizeof a6;
    } else {
        inet_pton(AF_INET, argv[2], &a4.sin_addr);
        a4.sin_family = AF_INET; a4.sin_port = htons(atoi(argv[3]));
        sa = (struct sockaddr *)&a4; len = sizeof a4;
    }
    int warm = n / 10 < 50 ? n / 10 : 50;
    long long *t = calloc((size_t)n, sizeof *t);
    for (int i = -warm; i < n; i++) {
        if (cold && flush) flush();
        long long t0 = now_ns();
        int fd = socket(sa->sa_family, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
        int rc = connect(fd, sa, len);
        close(fd);
        long long t1 = now_ns();
        if (rc != 0) { perror("connect"); return 1; }
        if (i >= 0) t[i] = t1 - t0;
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("%lld\n", t[n / 2]);
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


def _median_ns(lab: AnycastLab, exe: Path, mode: str, addr: str, lib: bool,
               calls: int) -> float:
    cmd = [str(exe), mode, addr, str(PORT), str(calls)]
    if lib:
        cmd = ["env", f"LD_PRELOAD={shim.library_path()}", "AARP_CONF=/dev/null",
               "AARP_ANYCAST=fd00:aa::/64, 10.255.0.0/24, fd00:ab::/64", *cmd]
    out = lab.client.run(cmd, timeout=120)
    return float(out.stdout.strip())


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
        ua = s1.ip6
        series: dict[str, list[float]] = {k: [] for k in (
            "tcp_aa_lib", "tcp_ua_plain", "tcp_ua_lib", "udp_ua_plain", "udp_ua_lib",
            "udp_aa_lib", "cold_aa", "cold_ak", "cold_ua_plain")}
        for _ in range(n_rounds):
            series["tcp_aa_lib"].append(_median_ns(lab, bench, "tcp", AA6, True, CALLS))
            series["tcp_ua_plain"].append(_median_ns(lab, bench, "tcp", ua, False, CALLS))
            series["tcp_ua_lib"].append(_median_ns(lab, bench, "tcp", ua, True, CALLS))
            series["udp_ua_plain"].append(_median_ns(lab, bench, "udp", ua, False, CALLS))
            series["udp_ua_lib"].append(_median_ns(lab, bench, "udp", ua, True, CALLS))
            series["udp_aa_lib"].append(_median_ns(lab, bench, "udp", AA6, True, CALLS))
            series["cold_aa"].append(_median_ns(lab, bench, "tcp-cold", AA6, True, 200))
            series["cold_ak"].append(_median_ns(lab, bench, "tcp-cold", AK6, True, 200))
            series["cold_ua_plain"].append(_median_ns(lab, bench, "tcp", ua, False, 200))
    m = {k: median(v) or 0.0 for k, v in series.items()}
    us = 1000.0
    note = f"median of {n_rounds} alternating rounds x {CALLS} calls"
    return [
        row("shim: cached TCP connect+close to AA vs direct to UA", m["tcp_aa_lib"] / us,
            m["tcp_ua_plain"] / us, "us/connect", f"goal <= 1.05; {note}"),
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
