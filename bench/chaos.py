"""Chaos for the cluster, scripted and repeatable: `make chaos` (= python -m bench.chaos).

Every scenario builds its own lab (lab.AnycastLab: a router, two anycast nodes, two clients,
two "internet" hosts) and deletes it afterwards, whatever happens:

* node s<j> runs two anytun-relay processes sharing state through Redis: a tunnel server (C data
  plane, connections mux 1 and 2) and a relay-mode node (rtpproxy protocol, sessions and the
  port pool shared under their own key prefix);
* Redis runs on host net1 (with Sentinel: the primary on net1, a replica on net2 and one
  Sentinel on each, quorum 1; the nodes use redis+sentinel://);
* two uanytun clients on the anycast address; client 1 pings client 2 through the tunnel every
  50 ms, and sends it one TCP stream through the tunnel, paced over the whole run and checked
  byte for byte at the far end;
* two relay calls, set up through node 1's and node 2's control sockets, with RTP both ways
  every 20 ms between client 1 and host net2 through the anycast relay address.

The scenarios (the traffic starts 3 s before the fault and runs 5 s past its end):
  kill       SIGKILL of every process on node 1 mid-transfer; the route moves to node 2 at once
             (as a withdrawal would); node 1 restarts 3 s later and the route comes back to it
  redis      Redis stopped (SIGTERM, no persistence: it comes back empty) for --redis-down
             seconds and restarted; the route moves to node 2 and back during the outage
  partition  node 1 cut off from node 2 and from Redis (the router drops what they forward to
             each other) for --partition seconds; the clients still reach both nodes; the route
             moves to node 2 during the partition and back after it heals
  sentinel   the Redis primary is SIGKILLed; Sentinel promotes the replica and the nodes must
             follow it; the route moves to node 2 and back while they do
  switchover the same by `SENTINEL FAILOVER`: the old primary stays up as a replica, so the
             nodes' links to it do not break by themselves
  skew       node 2's processes run 5 s ahead (libfaketime: their wall clock, not their
             monotonic clock); the route moves 1->2->1->2->1

Each row: pings lost (of sent), TCP bytes lost (planned - received; "intact" when what arrived
is exactly the stream's beginning), the longest time without a ping reply, the time the
cluster took to be whole again (every tunnel and relay process connected to the Redis primary,
Redis repopulated; taken from the `since` the nodes record, not from polling; "-" where nothing
had to recover), the calls kept (both legs still receive media from the same relay address at
the end) and the calls' RTP packets lost. Exit status 0 when every property holds: node 2
carried traffic, no TCP byte lost, stream intact, every call kept, the cluster recovered.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lab import AA4, AnycastLab
from lab import sip as labsip
from lab.netns import LabError, stop_process, wait_for
from lab.services import wait_port

ROOT = Path(__file__).resolve().parent.parent
RELAY = [sys.executable, "-m", "relay"]
TRAFFIC = [sys.executable, "-m", "bench.chaos_traffic"]
REDIS_PORT = 6390
SENTINEL_PORT = 26379
MASTER = "chaos"
RTP_CTL = "udp:127.0.0.1:22222"
RTP_PORTS = "40000-40199"
RATE = 250_000          # bytes/s of the TCP stream through the tunnel
SKEW = 5.0              # seconds node 2's clock runs ahead in the skew scenario
SCENARIOS = ("kill", "redis", "partition", "sentinel", "switchover", "skew")


@dataclass(frozen=True)
class Options:
    redis_down: float = 30.0     # seconds Redis stays stopped
    partition: float = 10.0      # seconds the partition lasts
    lead: float = 3.0            # seconds of traffic before the fault
    tail: float = 5.0            # seconds of traffic after the fault is over
    node_down: float = 3.0       # seconds a killed node stays dead before it restarts
    failover: float = 8.0        # seconds of traffic from the primary's death to the tail
    skew_step: float = 2.0       # seconds between route moves in the skew scenario


@dataclass
class Result:
    name: str
    pings_sent: int = 0
    pings_lost: int = 0
    bytes_planned: int = 0
    bytes_lost: int = 0
    intact: bool = False
    gap: float = 0.0                     # longest time without a ping reply (s)
    recover: float | None = None         # time until the cluster was whole again (s)
    recovered: bool = True
    calls: int = 0
    calls_kept: int = 0
    rtp_sent: int = 0
    rtp_lost: int = 0                    # RTP packets of the calls that never arrived
    notes: list[str] = field(default_factory=list)
    moved: bool = False                  # node 2 carried tunnel and call traffic
    primary: str | None = None           # sentinel: the primary every process ended on
    clock_offset: float | None = None    # skew: how far node 2's clock was ahead (s)
    error: str = ""

    @property
    def ok(self) -> bool:
        return (not self.error and self.moved and self.bytes_lost == 0 and self.intact
                and self.recovered and self.calls_kept == self.calls)

    def row(self) -> str:
        if self.error:
            return f"{self.name:<10} FAILED: {self.error}"
        rec = "-" if self.recover is None else f"{self.recover:.2f} s"
        if not self.recovered:
            rec = "NOT RECOVERED"
        return (f"{self.name:<10} {self.pings_lost:>4}/{self.pings_sent:<5} "
                f"{self.bytes_lost:>9}/{self.bytes_planned:<9} "
                f"{'yes' if self.intact else 'NO':<7}{self.gap * 1000:>8.0f} ms  {rec:>13}  "
                f"{self.calls_kept}/{self.calls:<8} {self.rtp_lost}/{self.rtp_sent}")


HEADER = (f"{'scenario':<10} {'pings lost':<10} {'TCP bytes lost':<19} {'intact':<7}"
          f"{'ping gap':>11}  {'cluster whole':>13}  calls kept RTP lost")


def node_toml(j: int) -> str:
    conns = "".join(f'[[connection]]\nmux = {m}\npassphrase = "pass-{m}"\n'
                    f'routes = ["10.8.{m}.0/24"]\n\n' for m in (1, 2))
    return (f'[node]\ninterface = "{AA4}"\nsender_id = {j}\ndevice_name = "tun7"\n'
            f'ifconfig = ["10.8.0.1/16"]\n\n[defaults]\nrole = "server"\n\n{conns}')



class ChaosLab:
    """One scenario's lab: Redis (or Sentinel), two nodes, clients, traffic."""

    def __init__(self, lab: AnycastLab, tmp: Path, sentinel: bool = False,
                 skewed: int | None = None) -> None:
        self.lab, self.tmp, self.sentinel, self.skewed = lab, tmp, sentinel, skewed
        self.redis_host, self.replica_host = lab.hosts[0], lab.hosts[1]
        self.redis: dict[str, subprocess.Popen] = {}
        self.nodes: dict[int, list[subprocess.Popen]] = {}
        if sentinel:
            hosts = ",".join(f"{h.ip4}:{SENTINEL_PORT}" for h in lab.hosts[:2])
            self.url = f"redis+sentinel://{hosts}/{MASTER}"
        else:
            self.url = f"redis://{self.redis_host.ip4}:{REDIS_PORT}/0"

    # -- Redis ---------------------------------------------------------------------------------
    def _redis_server(self, host, name: str, *extra: str) -> None:
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        self.redis[name] = host.popen(
            ["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", str(d), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(host, REDIS_PORT)

    def start_redis(self) -> None:
        # no 5 s wait before the replica's first (diskless) sync
        self._redis_server(self.redis_host, "primary", "--repl-diskless-sync-delay", "0")
        if not self.sentinel:
            return
        self._redis_server(self.replica_host, "replica", "--replicaof", self.redis_host.ip4,
                           str(REDIS_PORT))
        for i, host in enumerate(self.lab.hosts[:2]):
            conf = self.tmp / f"sentinel{i}.conf"
            conf.write_text(f"port {SENTINEL_PORT}\nbind 0.0.0.0\nprotected-mode no\n"
                            f"dir {self.tmp}\nlogfile {self.tmp}/sentinel{i}.log\n"
                            f"sentinel monitor {MASTER} {self.redis_host.ip4} {REDIS_PORT} 1\n"
                            f"sentinel down-after-milliseconds {MASTER} 1000\n"
                            f"sentinel failover-timeout {MASTER} 3000\n")
            self.redis[f"sentinel{i}"] = host.popen(["redis-sentinel", str(conf)],
                                                    stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
            wait_port(host, SENTINEL_PORT)
        wait_for(lambda: self.sentinel_view() == (self.redis_host.ip4, 1), 15,
                 "the Sentinels to see the primary and its replica")
        wait_for(lambda: "master_link_status:up" in self.replica_host.run(
            ["redis-cli", "-p", str(REDIS_PORT), "info", "replication"]).stdout, 15,
            "the replica's first sync")

    def sentinel_view(self) -> tuple[str, int] | None:
        """(primary address, replicas) as the Sentinel on net2 reports them."""
        out = self.replica_host.run(["redis-cli", "-p", str(SENTINEL_PORT), "sentinel",
                                     "master", MASTER], check=False).stdout.split()
        info = dict(zip(out[::2], out[1::2], strict=False))
        if "ip" not in info:
            return None
        return info["ip"], int(info.get("num-slaves", 0))

    def elections(self) -> tuple[int, int]:
        """(failover attempts, attempts aborted without a leader) in the Sentinels' logs: two
        Sentinels may split their votes, and then try again after 2 x failover-timeout."""
        tries = aborted = 0
        for log in self.tmp.glob("sentinel*.log"):
            text = log.read_text(errors="replace")
            tries += text.count("+try-failover")
            aborted += text.count("-failover-abort-not-elected")
        return tries, aborted

    def stop_redis(self, name: str = "primary", sig: int = signal.SIGTERM) -> None:
        proc = self.redis.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        stop_process(proc)

    def redis_count(self, host, key: str) -> int:
        out = host.run(["redis-cli", "-p", str(REDIS_PORT), "hlen", key], check=False).stdout
        return int(out) if out.strip().isdigit() else -1

    # -- nodes ---------------------------------------------------------------------------------
    def _env(self, j: int) -> dict[str, str] | None:
        if self.skewed != j:
            return None
        # the whole process tree of node j sees a wall clock SKEW seconds ahead; monotonic
        # clocks stay true (they are per machine and never compared between nodes)
        return {**os.environ, "LD_PRELOAD": str(faketime_library()), "FAKETIME": f"+{SKEW:g}s",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def start_node(self, j: int) -> None:
        s = self.lab.server(j)
        conf = self.tmp / f"s{j}.toml"
        conf.write_text(node_toml(j))
        log = (self.tmp / f"s{j}.log").open("ab")
        tunnel = s.popen([*RELAY, "-D", "-L", "stdout:4", "--dataplane", "fast", "--config",
                          str(conf), "--sync", self.url, "--sync-node", f"s{j}"],
                         env=self._env(j), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        relay = s.popen([*RELAY, "-D", "-L", "stdout:4", "--rtpproxy", RTP_CTL, "--rtp-address",
                         AA4, "--rtp-ports", RTP_PORTS, "--sync", self.url, "--sync-node",
                         f"r{j}", "--sync-cluster", "media"],
                        env=self._env(j), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.nodes[j] = [tunnel, relay]
        wait_for(lambda: self.cluster_status(j) is not None, 20, f"node {j}'s control socket")
        wait_port(s, 22222, "udp")

    def skew_of(self, j: int) -> float:
        """How far node j's wall clock is ahead: every process of the node has libfaketime
        mapped (checked), and a probe started the same way reads the clock it gives."""
        for proc in self.nodes[j]:
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            if ("libfaketime" in maps) != (self.skewed == j):
                raise LabError(f"node {j}'s process {proc.pid}: libfaketime "
                               f"{'not ' if self.skewed == j else ''}loaded")
        probe = self.lab.server(j).popen([sys.executable, "-c",
                                          "import time; print(time.time())"],
                                         env=self._env(j), text=True)
        out, _ = probe.communicate(timeout=20)
        return float(out) - time.time()

    def kill_node(self, j: int) -> None:
        for proc in self.nodes.pop(j):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stop_process(proc)

    def cluster_status(self, j: int, service: str = "tun7") -> dict | None:
        """The cluster backend's status of node j's tunnel ("tun7") or relay ("rtpproxy")."""
        out = self.lab.server(j).run([*RELAY, "status", "--json", service], check=False,
                                     timeout=20)
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)["cluster"]["backend"]
        except (ValueError, KeyError):
            return None

    def carried(self, j: int) -> tuple[int, int]:
        """(tunnel packets from client 1, relay packets of the first call) node j has handled:
        evidence that the route moves really brought the traffic to it."""
        out = self.lab.server(j).run([*RELAY, "status", "--json", "tun7"], timeout=20).stdout
        st = json.loads(out)
        table = next(v for v in st.values() if isinstance(v, dict) and "connections" in v)
        rx = next(c["rx_packets"] for c in table["connections"] if c["mux"] == 1)
        (reply,) = labsip.control(self.lab.server(j), RTP_CTL, ["q9 Q chaos-0 ftag0;1 ttag0;1"])
        fields = reply.split()[1:] if reply else []
        media = int(fields[1]) + int(fields[2]) if len(fields) >= 3 and \
            fields[0].isdigit() else 0
        return rx, media

    def connected(self, j: int, primary: str | None = None) -> bool:
        st = self.cluster_status(j)
        return bool(st and st.get("connected") and
                    (primary is None or st.get("primary") == primary))

    def whole_since(self, nodes: tuple[int, ...] = (1, 2),
                    primary: str | None = None) -> float | None:
        """The wall-clock time (the nodes' own `since`) at which the last of the nodes'
        processes, tunnel and relay, (re)connected to Redis (to `primary` if given); None
        while one of them is not connected."""
        latest = 0.0
        for j in nodes:
            for service in ("tun7", "rtpproxy"):
                st = self.cluster_status(j, service)
                if not st or not st.get("connected") or \
                        (primary is not None and st.get("primary") != primary):
                    return None
                latest = max(latest, float(st["since"]))
        return latest

    def recovery(self, t_event: float, timeout: float, primary: str | None = None,
                 nodes: tuple[int, ...] = (1, 2),
                 extra: Callable[[], bool] = lambda: True) -> float | None:
        """Seconds from `t_event` (wall clock) until the cluster was whole again, as the nodes
        themselves record it (not the polling's latency); None if not within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            since = self.whole_since(nodes, primary)
            if since is not None and extra():
                return max(0.0, since - t_event)
            time.sleep(0.1)
        return None

    def start_clients(self) -> None:
        for m in (1, 2):
            c = self.lab.clients[m - 1]
            c.popen(["uanytun", "-D", "-L", "stdout:2", "-m", str(m), "-E", f"pass-{m}",
                     "-e", "client", "-r", AA4, "-d", "tun8", "-n", f"10.8.{m}.2/16"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda c=c: c.run(["ip", "link", "show", "tun8"], check=False).returncode == 0,
                     15, f"tun8 on client {m}")
        for c, addr in ((self.lab.clients[0], "10.8.0.1"), (self.lab.clients[1], "10.8.0.1"),
                        (self.lab.clients[0], "10.8.2.2")):
            wait_for(lambda c=c, addr=addr: c.run(["ping", "-n", "-c1", "-W1", addr],
                                                  check=False).returncode == 0, 15,
                     f"a ping to {addr} from {c.name}")

    # -- traffic -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def traffic(self, seconds: float) -> Iterator[Callable[[], dict]]:
        """Pings, the TCP stream and two calls for `seconds`; yields a function that waits for
        them and returns what they saw."""
        # the callee sits on net2: the partition cuts node 1 from Redis on net1, not from it
        cli, peer, callee = self.lab.clients[0], self.lab.clients[1], self.lab.hosts[1]
        size = int(RATE * seconds)
        sink = peer.popen([*TRAFFIC, "sink", "10.8.2.2", "5001", str(size), "7"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        if sink.stdout.readline().strip() != "ready":   # type: ignore[union-attr]
            raise LabError(f"TCP sink failed: {sink.stderr.read()}")  # type: ignore[union-attr]
        calls = []
        for i, j in enumerate((1, 2)):
            call = f"chaos-{i}"
            port = 6000 + 2 * i
            offer, answer = labsip.control(self.lab.server(j), RTP_CTL, [
                f"o{i} U {call} {cli.ip4} {port} ftag{i};1",
                f"a{i} L {call} {callee.ip4} {port} ftag{i};1 ttag{i};1"])
            if offer is None or answer is None or b"E" in offer.split()[1][:1]:
                raise LabError(f"call {call} not set up: {offer!r} {answer!r}")
            to_callee, to_caller = int(offer.split()[1]), int(answer.split()[1])
            calls.append((call, to_caller, to_callee, port))
        for _call, to_caller, _to_callee, _port in calls:   # both nodes hold both sessions
            for j in (1, 2):
                wait_for(lambda j=j, p=to_caller: f":{p} " in self.lab.server(j).run(
                    ["ss", "-Huan"]).stdout, 10, f"node {j} to open relay port {to_caller}")
        phones = []
        for _call, to_caller, to_callee, port in calls:
            phones.append((cli.popen([*TRAFFIC, "phone", cli.ip4, str(port), AA4,
                                      str(to_caller), f"{seconds:g}"], text=True, cwd=ROOT),
                           f"{AA4}:{to_caller}"))
            phones.append((callee.popen([*TRAFFIC, "phone", callee.ip4, str(port), AA4,
                                         str(to_callee), f"{seconds:g}"], text=True, cwd=ROOT),
                           f"{AA4}:{to_callee}"))
        pinger = cli.popen(["ping", "-D", "-n", "-i", "0.05", "-c", str(int(seconds / 0.05)),
                            "-W", "1", "10.8.2.2"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        source = cli.popen([*TRAFFIC, "source", "10.8.2.2", "5001", str(size), "7",
                            f"{seconds:g}"], text=True, cwd=ROOT)

        def results() -> dict:
            out, _ = pinger.communicate(timeout=seconds + 60)
            src, _ = source.communicate(timeout=180)
            got, _ = sink.communicate(timeout=180)
            calls_out = []
            for proc, relay_addr in phones:
                text, _ = proc.communicate(timeout=seconds + 30)
                calls_out.append((json.loads(text), relay_addr))
            return {"ping": out, "source": json.loads(src), "sink": json.loads(got),
                    "size": size, "phones": calls_out}

        yield results


def _ping_figures(out: str, seconds: float) -> tuple[int, int, float]:
    line = next(ln for ln in out.splitlines() if "received" in ln)
    sent, got = int(line.split()[0]), int(line.split(",")[1].split()[0])
    stamps = [float(ln[1:ln.index("]")]) for ln in out.splitlines()
              if ln.startswith("[") and "bytes from" in ln]
    gap = max((b - a for a, b in itertools.pairwise(stamps)), default=seconds)
    return sent, sent - got, gap


def _call_kept(phone: dict, relay_addr: str, end: float) -> bool:
    """Media still arrives in the last 1.5 s of the run, and only from the relay address the
    call was given."""
    arrivals = phone["arrivals"]
    return bool(arrivals) and {src for _, src in arrivals} == {relay_addr} and \
        any(end - 1.5 <= t <= end for t, _ in arrivals)


def _fill(res: Result, seen: dict, seconds: float, t_end: float) -> None:
    res.pings_sent, res.pings_lost, res.gap = _ping_figures(seen["ping"], seconds)
    res.bytes_planned = seen["size"]
    res.bytes_lost = seen["size"] - seen["sink"]["received"]
    res.intact = seen["sink"]["intact"] and not res.bytes_lost
    for what in ("source", "sink"):
        if seen[what].get("error"):
            res.notes.append(f"TCP {what}: {seen[what]['error']}")
    phones = seen["phones"]
    res.calls = len(phones) // 2
    for (a, _), (b, _) in zip(phones[::2], phones[1::2], strict=True):
        res.rtp_sent += a["sent"] + b["sent"]
        res.rtp_lost += max(0, a["sent"] - len(b["arrivals"])) + \
            max(0, b["sent"] - len(a["arrivals"]))
    res.calls_kept = sum(_call_kept(a, ra, t_end) and _call_kept(b, rb, t_end)
                         for (a, ra), (b, rb) in zip(phones[::2], phones[1::2], strict=True))
    for i, (phone, relay_addr) in enumerate(phones):
        if not _call_kept(phone, relay_addr, t_end):
            arr = phone["arrivals"]
            srcs = sorted({src for _, src in arr})
            last = f"{arr[-1][0] - t_end:+.1f} s" if arr else "never"
            gaps = max((b[0] - a[0] for a, b in itertools.pairwise(arr)), default=0)
            res.notes.append(f"call {i // 2} leg {i % 2}: {len(arr)} of {phone['sent']} "
                             f"packets, last {last} from the end, longest gap {gaps:.1f} s, "
                             f"from {srcs} (relay {relay_addr})")


# -- the scenarios -----------------------------------------------------------------------------
def _kill(c: ChaosLab, opts: Options, res: Result) -> float:
    span = opts.lead + opts.node_down + 2.0 + opts.tail
    with c.traffic(span) as results:
        t_end = time.monotonic() + span
        time.sleep(opts.lead)
        c.kill_node(1)
        c.lab.move(2)
        time.sleep(opts.node_down)
        t0 = time.time()
        c.start_node(1)
        c.lab.move(1)          # as soon as its control socket answers: the cluster's state
        res.recover = c.recovery(t0, 20, nodes=(1,))
        res.recovered = res.recover is not None
        res.notes.append("node 1 SIGKILLed, route to node 2 at once; node 1 restarted after "
                         f"{opts.node_down:g} s, route back to it as soon as it answered; "
                         "recovered = node 1's tunnel and relay processes synced, from their "
                         "restart")
        seen = results()
    _fill(res, seen, span, t_end)
    return span


def _redis(c: ChaosLab, opts: Options, res: Result) -> float:
    span = opts.lead + opts.redis_down + opts.tail
    with c.traffic(span) as results:
        t_end = time.monotonic() + span
        time.sleep(opts.lead)
        c.stop_redis()
        time.sleep(opts.redis_down / 3)
        c.lab.move(2)
        time.sleep(opts.redis_down / 3)
        c.lab.move(1)
        time.sleep(opts.redis_down / 3)
        t0 = time.time()
        c._redis_server(c.redis_host, "primary")
        res.recover = c.recovery(t0, opts.tail + 20, extra=lambda: (
            c.redis_count(c.redis_host, "anytun:rec:endpoint") == 2 and
            c.redis_count(c.redis_host, "media:rec:session") >= 2))
        res.recovered = res.recover is not None
        res.notes.append(f"Redis down {opts.redis_down:g} s (restarted empty), route 1->2->1 "
                         "during the outage; recovered = both nodes' tunnel and relay "
                         "processes connected and Redis repopulated with endpoints and sessions, "
                         "from the restart")
        seen = results()
    _fill(res, seen, span, t_end)
    return span


PARTITION_RULES = """table inet chaos {{
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname "{a}" oifname {{ "{b}", "{r}" }} drop
    iifname {{ "{b}", "{r}" }} oifname "{a}" drop
  }}
}}
"""


def _partition(c: ChaosLab, opts: Options, res: Result) -> float:
    span = opts.lead + opts.partition + opts.tail
    rtr = c.lab.router
    rules = PARTITION_RULES.format(a=c.lab.server(1).router_if, b=c.lab.server(2).router_if,
                                   r=c.redis_host.router_if)
    noticed = False
    with c.traffic(span) as results:
        t_end = time.monotonic() + span
        time.sleep(opts.lead)
        rtr.run(["nft", "-f", "-"], input=rules)
        try:
            time.sleep(opts.partition / 2)
            c.lab.move(2)
            deadline = time.monotonic() + opts.partition / 2
            while time.monotonic() < deadline:
                noticed = noticed or not c.connected(1)
                time.sleep(0.2)
        finally:
            rtr.run(["nft", "delete", "table", "inet", "chaos"], check=False)
            t0 = time.time()
        res.recover = c.recovery(t0, opts.tail + 20)
        res.recovered = res.recover is not None
        time.sleep(1.0)
        c.lab.move(1)
        res.notes.append(f"node 1 cut off from node 2 and Redis for {opts.partition:g} s; "
                         f"node 1 {'noticed' if noticed else 'did not notice'} the lost link; "
                         "route to node 2 mid-partition, back 1 s after the cluster was whole")
        seen = results()
    _fill(res, seen, span, t_end)
    return span


def _failover(c: ChaosLab, opts: Options, res: Result, switchover: bool) -> float:
    """The primary goes away: SIGKILLed (Sentinel elects the replica), or demoted by SENTINEL
    FAILOVER (it stays up and takes writes until Sentinel reconfigures it)."""
    span = opts.lead + opts.failover + opts.tail
    new = f"{c.replica_host.ip4}:{REDIS_PORT}"
    old = f"{c.redis_host.ip4}:{REDIS_PORT}"
    if not (c.connected(1, old) and c.connected(2, old)):
        raise LabError("the nodes are not on the first primary before the failover")
    with c.traffic(span) as results:
        t_end = time.monotonic() + span
        time.sleep(opts.lead)
        t0, t0_mono = time.time(), time.monotonic()
        if switchover:
            c.replica_host.run(["redis-cli", "-p", str(SENTINEL_PORT), "sentinel",
                                "failover", MASTER])
        else:
            c.stop_redis("primary", signal.SIGKILL)
        c.lab.move(2)
        res.recover = c.recovery(t0, 20, primary=new, extra=lambda: (
            c.redis_count(c.replica_host, "anytun:rec:endpoint") == 2))
        res.recovered = res.recover is not None
        if res.recovered:
            res.primary = new
        c.lab.move(1)
        time.sleep(max(0.0, t0_mono + opts.failover - time.monotonic()))
        if switchover:
            what = f"SENTINEL FAILOVER: {old} demoted to a replica (still running), {new} " \
                "promoted"
        else:
            promoted = c.sentinel_view()
            tries, aborted = c.elections()
            what = f"primary {old} SIGKILLed; the Sentinels named " \
                f"{promoted[0] if promoted else '?'} ({tries} failover attempt(s), " \
                f"{aborted} without a leader)"
        res.notes.append(f"{what}; recovered = both nodes' tunnel and relay processes "
                         f"connected to the promoted replica {new}, which holds the records; "
                         "route 1->2->1 meanwhile")
        seen = results()
    _fill(res, seen, span, t_end)
    return span


def _sentinel(c: ChaosLab, opts: Options, res: Result) -> float:
    return _failover(c, opts, res, switchover=False)


def _switchover(c: ChaosLab, opts: Options, res: Result) -> float:
    return _failover(c, opts, res, switchover=True)


def _skew(c: ChaosLab, opts: Options, res: Result) -> float:
    span = opts.lead + 4 * opts.skew_step + opts.tail
    ahead = res.clock_offset = c.skew_of(2)
    with c.traffic(span) as results:
        t_end = time.monotonic() + span
        time.sleep(opts.lead)
        for to in (2, 1, 2, 1):
            c.lab.move(to)
            time.sleep(opts.skew_step)
        res.recover = None
        res.notes.append(f"node 2's wall clock {SKEW:g} s ahead (libfaketime; measured "
                         f"{ahead:+.1f} s); route 1->2->1->2->1 every {opts.skew_step:g} s")
        seen = results()
    _fill(res, seen, span, t_end)
    if not SKEW - 1.5 <= ahead <= SKEW + 1.5:
        res.error = f"node 2's clock is {ahead:+.1f} s off, not +{SKEW:g} s: skew not applied"
    return span


PLAN: dict[str, Callable[[ChaosLab, Options, Result], float]] = {
    "kill": _kill, "redis": _redis, "partition": _partition, "sentinel": _sentinel,
    "switchover": _switchover, "skew": _skew}


def faketime_library() -> Path | None:
    """Debian's libfaketime (multithreaded variant), wherever the architecture puts it."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1")) + \
        sorted(Path("/usr/lib/faketime").glob("libfaketimeMT.so.1"))
    return found[0] if found else None


def missing_programs(name: str) -> list[str]:
    need = ["uanytun", "redis-server", "redis-cli", "nft", "ping", "ss"]
    if name in ("sentinel", "switchover"):
        need.append("redis-sentinel")
    out = [p for p in need if shutil.which(p) is None]
    if name == "skew" and faketime_library() is None:
        out.append("libfaketime (Debian faketime)")
    return out


def run_scenario(name: str, opts: Options) -> Result:
    """One scenario in a lab of its own; never raises for a failure inside the lab."""
    res = Result(name)
    missing = missing_programs(name)
    if missing:
        res.error = f"needs {', '.join(missing)}"
        return res
    with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as tmp, \
            AnycastLab(servers=2, clients=2, hosts=2, tag=f"chaos{name}") as lab:
        c = ChaosLab(lab, Path(tmp), sentinel=name in ("sentinel", "switchover"),
                     skewed=2 if name == "skew" else None)
        try:
            c.start_redis()
            for j in (1, 2):
                c.start_node(j)
            for j in (1, 2):
                wait_for(lambda j=j: c.connected(j), 15, f"node {j} to reach Redis")
            # client 2 attaches through node 2, client 1 through node 1; then both on node 1
            lab.move(2, client=2)
            c.start_clients()
            lab.move(1)
            before = c.carried(2)
            PLAN[name](c, opts, res)
            after = c.carried(2)
            tunnel, media = after[0] - before[0], after[1] - before[1]
            res.moved = tunnel > 0 and media > 0
            res.notes.append(f"node 2 carried {tunnel} tunnel packets of client 1 and {media} "
                             "packets of a call")
            if not res.moved:
                res.error = "the route moves did not bring the traffic to node 2"
        except Exception as exc:    # reported in the row; the lab is deleted all the same
            res.error = f"{type(exc).__name__}: {exc}"
            logs = sorted(Path(tmp).glob("s*.log"))
            for log in logs:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {log.name} ---\n" + "\n".join(tail), file=sys.stderr)
    return res


def parse_args(argv: list[str] | None) -> tuple[list[str], Options, int]:
    p = argparse.ArgumentParser(prog="python -m bench.chaos",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Chaos scenarios against a two-node cluster in "
                                "network namespaces (needs root).\n\n" + (__doc__ or ""),
                                epilog="scenarios: " + ", ".join(SCENARIOS))
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this scenario (repeatable, or comma-separated)")
    p.add_argument("--redis-down", type=float, default=Options.redis_down, metavar="SECONDS",
                   help="how long Redis stays stopped (default %(default)g)")
    p.add_argument("--partition", type=float, default=Options.partition, metavar="SECONDS",
                   help="how long the partition lasts (default %(default)g)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run every scenario N times (default 1)")
    args = p.parse_args(argv)
    names: list[str] = []
    for item in args.only or []:
        names += [n.strip() for n in item.split(",") if n.strip()]
    for n in names:
        if n not in SCENARIOS:
            p.error(f"--only {n!r}: no such scenario (choose from {', '.join(SCENARIOS)})")
    for opt, v in (("--redis-down", args.redis_down), ("--partition", args.partition)):
        if not 1 <= v <= 600:
            p.error(f"{opt} {v:g}: 1..600 seconds")
    if not 1 <= args.repeat <= 10:
        p.error(f"--repeat {args.repeat}: 1..10")
    return names or list(SCENARIOS), Options(args.redis_down, args.partition), args.repeat


def main(argv: list[str] | None = None) -> int:
    names, opts, repeat = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.chaos: needs root (network namespaces)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like ^C, so the labs are deleted
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    print(HEADER, flush=True)
    for _ in range(repeat):
        for name in names:
            res = run_scenario(name, opts)
            results.append(res)
            print(res.row(), flush=True)
    print()
    for res in results:
        for note in res.notes:
            print(f"{res.name}: {note}")
    if repeat > 1:
        for name in names:
            counts = {(r.pings_lost, r.bytes_lost, r.intact, r.calls_kept, r.ok)
                      for r in results if r.name == name}
            print(f"{name}: {'the same' if len(counts) == 1 else 'DIFFERENT'} counts in "
                  f"{repeat} runs (pings lost, bytes lost, intact, calls kept, verdict)")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
