"""`make soak` / `python -m bench.soak`: run the three kinds of anytun-relay daemon for a set
time under churn and check that their memory, file descriptors and Redis state stay flat.

In one namespace lab:
* tunnel  s3 -- a point-to-point tunnel (C data plane) to uanytun on cli4, with a ping every
  0.2 s and a 200 kB TCP transfer per cycle;
* hub     s1 -- server mode on the C data plane, synced to a real Redis (net1), whose clients
  churn: every cycle the TOML file changes and SIGHUP reloads it (client 3 and two of a pool of
  unused clients come and go), client 1's uanytun is restarted, client 3's uanytun comes and
  goes with its configuration, client 2 roams to its other address;
* relay   s2 -- relay mode (rtpproxy protocol), synced to the same Redis, two calls per cycle
  set up, carrying RTP both ways between phones on net2 and net3, and deleted.

After every cycle (all calls deleted, the churn settled) the runner samples each daemon's RSS
(VmRSS of the process and its children), its open fds and its Redis state (keys, live records,
tombstones under its cluster prefix). After the warm-up it fits a least-squares line per series
and fails when a drift exceeds its limit (bench/drift.py). Exit status: 0 flat, 1 drift or
broken traffic, 2 a usage or setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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

from bench.common import machine_summary
from bench.drift import MIB, Limit, Verdict, after_warmup, judge, table
from lab import AA4, AnycastLab, LabError, Node, stop_process
from lab import sip as labsip
from lab.netns import wait_for
from relay.cluster.records import SESSION_GRACE_MS

RELAY = [sys.executable, "-m", "relay"]
ROOT = Path(__file__).resolve().parents[1]
REDIS_PORT = 6379
CTL = "udp:127.0.0.1:22222"
HUB_DEV, TUN_DEV = "tun5", "tun6"
MEDIA_PACKETS = 25  # per phone and call

# Redis state under one cluster prefix: keys, live records, tombstones (orders end in " 1";
# the progress hash has no orders and holds live records only).
STATE_LUA = """
local keys = redis.call('KEYS', ARGV[1] .. ':*')
local live, tomb = 0, 0
for _, k in ipairs(keys) do
  if string.find(k, ':ord:', 1, true) then
    for _, v in ipairs(redis.call('HVALS', k)) do
      if string.sub(v, -1) == '1' then tomb = tomb + 1 else live = live + 1 end
    end
  elseif string.sub(k, -13) == ':rec:progress' then
    live = live + redis.call('HLEN', k)
  end
end
return {#keys, live, tomb}
"""


class SoakError(RuntimeError):
    """The soak could not start (missing capability, a daemon that died): exit 2."""


# -- command line ------------------------------------------------------------------------------

def _positive(kind: type, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be positive and finite, not {text}")
        return value
    return parse


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, not {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak: a tunnel, a server-mode hub with churning clients (Redis sync) and "
                    "relay-mode calls for a set time; fails if RSS, open fds or Redis state "
                    "drift after the warm-up. Needs root (network namespaces).")
    ap.add_argument("--minutes", type=_positive(float, "--minutes"), default=30.0,
                    help="how long to run (default 30; fractions allowed)")
    ap.add_argument("--warmup", type=_nonnegative, default=None, metavar="SECONDS",
                    help="seconds before the fit starts (default a fifth of the run, at most "
                         "300)")
    ap.add_argument("--rss-limit", type=_positive(float, "--rss-limit"), default=1.0,
                    metavar="MIB_PER_HOUR",
                    help="largest RSS drift allowed per daemon (default 1 MiB/h)")
    ap.add_argument("--json", metavar="PATH", help="also write samples and verdicts here")
    args = ap.parse_args(argv)
    total = args.minutes * 60
    if args.warmup is None:
        args.warmup = min(300.0, total / 5)
    if args.warmup >= total * 0.9:
        ap.error(f"--warmup {args.warmup:g}s leaves no time to measure in a {total:g}s run")
    if args.json:
        parent = Path(args.json).resolve().parent
        if not parent.is_dir():
            ap.error(f"--json {args.json}: directory {parent} does not exist")
    return args


# -- processes ---------------------------------------------------------------------------------

def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (children of every thread)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{p}/task/{task}/children").read_text()
                    todo += [int(c) for c in text.split()]
    return out


def memory(pid: int) -> dict[str, int]:
    """Resident bytes of the process and its children: all (VmRSS) and the anonymous part
    (heap, arenas: what a leak grows; the rest is pages of code and libraries touched)."""
    total = {"rss": 0, "anon": 0}
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                for key, field in (("rss", "VmRSS:"), ("anon", "RssAnon:")):
                    if line.startswith(field):
                        total[key] += int(line.split()[1]) * 1024
    return total


def fds(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total



def ping(node: Node, addr: str, count: int = 1, wait: float = 1.0) -> int:
    out = node.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(wait), addr],
                   check=False, timeout=30).stdout
    for line in out.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def ping_until(node: Node, addr: str, timeout: float = 10) -> bool:
    try:
        wait_for(lambda: ping(node, addr) == 1, timeout, f"ping {addr}", 0)
    except LabError:
        return False
    return True


@dataclass
class Daemon:
    name: str
    node: Node
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, dev: str | None = None, addr: str | None = None) -> Daemon:
        # the log goes to a file: a pipe nobody reads would block the daemon within the hour
        with self.log.open("ab") as out:
            self.proc = self.node.popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=str(ROOT))
        if dev is not None:
            wait_for(lambda: self._alive() and device_ready(self.node, dev, addr), 20,
                     f"{self.name}'s device {dev}")
        return self

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise SoakError(f"{self.name} on {self.node.name} exited "
                            f"{self.proc.returncode if self.proc else '?'}:\n{tail}")
        return True

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    @property
    def pid(self) -> int:
        self._alive()
        assert self.proc is not None
        return self.proc.pid


def device_ready(node: Node, dev: str, addr: str | None) -> bool:
    out = node.run(["ip", "-br", "addr", "show", "dev", dev], check=False).stdout
    if not out or (" UNKNOWN " not in out and " UP " not in out):
        return False
    return addr is None or addr in out


def status(node: Node, dev: str) -> dict:
    out = node.run([*RELAY, "status", "--json", dev], timeout=20, check=False)
    if out.returncode != 0:
        return {}
    st = json.loads(out.stdout)
    return next((v for v in st.values() if isinstance(v, dict) and "connections" in v), {})


# -- the three workloads -----------------------------------------------------------------------

HUB_NODE = f"""[node]
interface = "{AA4}"
sender_id = 1
device_name = "{HUB_DEV}"
ifconfig = ["10.6.0.1/16"]

[defaults]
role = "server"
"""
POOL = (10, 11, 12, 13)  # clients configured in turn that never connect


def hub_config(cycle: int) -> tuple[str, set[int]]:
    """The hub's TOML in `cycle`: clients 1 and 2 always, client 3 every other cycle, two of the
    pool in rotation."""
    muxes = {1, 2, POOL[cycle % 4], POOL[(cycle + 1) % 4]}
    if cycle % 2 == 0:
        muxes.add(3)
    text = HUB_NODE + "".join(
        f'\n[[connection]]\nmux = {m}\npassphrase = "soak-{m}"\nroutes = ["10.6.{m}.0/24"]\n'
        for m in sorted(muxes))
    return text, muxes


@dataclass
class Counts:
    ok: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, good: bool, note: str) -> None:
        if good:
            self.ok += 1
        else:
            self.failed += 1
            if len(self.notes) < 10:
                self.notes.append(note)


class Soak:
    def __init__(self, lab: AnycastLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.hub_node, self.relay_node, self.tun_node = lab.servers
        self.redis_node, self.caller, self.callee = lab.hosts
        self.url = f"redis://{self.redis_node.ip4}:{REDIS_PORT}/0"
        self.hub_toml = tmp / "hub.toml"
        self.daemons: dict[str, Daemon] = {}
        self.clients: dict[int, Daemon] = {}
        self.checks = {k: Counts() for k in ("hub reload", "hub clients", "roam", "calls",
                                             "tunnel transfer", "client starts")}
        self.roamed = False
        self.calls_ended = 0
        self.pinger: subprocess.Popen | None = None

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        Daemon("redis", self.redis_node, [
            "redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.tmp)],
            self.tmp / "redis.log").start()
        wait_for(lambda: self.redis_state("x") is not None, 10, "redis")
        self.hub_toml.write_text(hub_config(0)[0])
        self.daemons["hub"] = Daemon("hub", self.hub_node, [
            *RELAY, "-D", "-L", "stdout:3", "--dataplane", "fast", "--config",
            str(self.hub_toml), "--sync", self.url, "--sync-node", "hub1", "--sync-cluster",
            "hub"], self.tmp / "hub.log").start(HUB_DEV, "10.6.0.1")
        self.daemons["relay"] = Daemon("relay", self.relay_node, [
            *RELAY, "-D", "-L", "stdout:3", "--rtpproxy", CTL, "--rtp-address",
            self.relay_node.ip4, "--rtp-ports", "40000-40199", "--sync", self.url,
            "--sync-node", "media1", "--sync-cluster", "media"], self.tmp / "relay.log").start()
        wait_for(lambda: self.daemons["relay"]._alive() and "22222" in self.relay_node.run(
            ["ss", "-Hlun"]).stdout, 20, "the relay's control socket")
        self.daemons["tunnel"] = Daemon("tunnel", self.tun_node, [
            *RELAY, "-D", "-L", "stdout:3", "--dataplane", "fast", "-i", self.tun_node.ip4,
            "-d", TUN_DEV, "-t", "tun", "-n", "10.9.0.1/24", "-E", "soak-tunnel", "-e", "left"],
            self.tmp / "tunnel.log").start(TUN_DEV, "10.9.0.1")
        peer = self.lab.clients[3]
        Daemon("tunnel peer", peer, [
            "uanytun", "-D", "-L", "stdout:3", "-r", self.tun_node.ip4, "-d", TUN_DEV, "-t", "tun",
            "-n", "10.9.0.2/24", "-E", "soak-tunnel", "-e", "right"],
            self.tmp / "tunnel-peer.log").start(TUN_DEV, "10.9.0.2")
        if not ping_until(peer, "10.9.0.1", 15):
            raise SoakError("the point-to-point tunnel does not carry pings")
        self.pinger = peer.popen(["ping", "-n", "-q", "-i", "0.2", "-W", "1", "10.9.0.1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        roamer = self.lab.clients[1]
        roamer.run(["ip", "addr", "add", f"{self.roam_addr(roamer)}/24", "dev", "eth0"])
        for mux in (1, 2, 3):
            if not self.start_client(mux):
                raise SoakError(f"hub client {mux} does not start")
            if not ping_until(self.lab.clients[mux - 1], "10.6.0.1", 15):
                raise SoakError(f"hub client {mux} does not reach the hub")

    @staticmethod
    def roam_addr(node: Node) -> str:
        return node.ip4.rsplit(".", 1)[0] + ".3"

    def start_client(self, mux: int) -> bool:
        """Start client `mux`'s uanytun. uanytun itself sometimes fails to attach the device
        just after its previous instance closed it (EBADFD): one retry, then the attempt counts
        as failed and the soak goes on."""
        node = self.lab.clients[mux - 1]
        for attempt in range(2):
            client = Daemon(f"client {mux}", node, [
                "uanytun", "-D", "-L", "stdout:3", "-m", str(mux), "-E", f"soak-{mux}", "-e",
                "client", "-r", AA4, "-d", HUB_DEV, "-t", "tun", "-n", f"10.6.{mux}.2/16"],
                self.tmp / f"client{mux}.log")
            try:
                self.clients[mux] = client.start(HUB_DEV, f"10.6.{mux}.2")
                self.checks["client starts"].add(True, "")
                return True
            except (SoakError, LabError) as exc:
                client.stop()
                if attempt:
                    self.checks["client starts"].add(False, str(exc).splitlines()[0])
                    return False
                time.sleep(1)
        return False

    def stop_client(self, mux: int) -> None:
        client = self.clients.pop(mux, None)
        if client is not None:
            client.stop()

    # -- one cycle of each workload ------------------------------------------------------------
    def hub_cycle(self, cycle: int) -> None:
        text, muxes = hub_config(cycle)
        if 3 not in muxes:
            self.stop_client(3)  # goes away before its configuration does
        self.hub_toml.write_text(text)
        os.kill(self.daemons["hub"].pid, signal.SIGHUP)
        try:
            wait_for(lambda: {c["mux"] for c in status(self.hub_node, HUB_DEV)
                              .get("connections", [])} == muxes, 15, "the reload")
            self.checks["hub reload"].add(True, "")
        except LabError as exc:
            self.checks["hub reload"].add(False, f"cycle {cycle}: {exc}")
        self.stop_client(1)  # client 1 goes away and comes back
        started = [m for m in ((1, 3) if 3 in muxes else (1,)) if self.start_client(m)]
        for mux in started:
            self.checks["hub clients"].add(
                ping_until(self.lab.clients[mux - 1], "10.6.0.1"),
                f"cycle {cycle}: client {mux} does not reach the hub after (re)connecting")
        roamer = self.lab.clients[1]
        self.roamed = not self.roamed
        src = self.roam_addr(roamer) if self.roamed else roamer.ip4
        roamer.run(["ip", "route", "replace", "default", "via", roamer.gw4, "src", src])
        good = ping_until(roamer, "10.6.0.1") and ping(self.lab.clients[0], "10.6.2.2", 2) == 2
        self.checks["roam"].add(good, f"cycle {cycle}: client 2 from {src} not reached")

    def relay_cycle(self, cycle: int) -> None:
        calls = [f"soak-{cycle}-{k}" for k in (0, 1)]
        setup = []
        for k, call in enumerate(calls):
            setup += [f"o{k} U {call} {self.caller.ip4} {6000 + 2 * k} ftag;1",
                      f"a{k} L {call} {self.callee.ip4} {6000 + 2 * k} ftag;1 ttag;1"]
        replies = labsip.control(self.relay_node, CTL, setup)
        try:
            ports = [int(r.split()[1]) for r in replies]  # type: ignore[union-attr]
        except (AttributeError, IndexError, ValueError):
            self.checks["calls"].add(False, f"cycle {cycle}: setup replies {replies}")
            ports = []
        phones = []
        for k in range(len(ports) // 2):
            offer, answer = ports[2 * k], ports[2 * k + 1]
            # the callee sends to the port of the caller's offer, the caller to the answer's
            for node, dest in ((self.caller, answer), (self.callee, offer)):
                phones.append(node.popen([
                    sys.executable, "-m", "lab.sip", "rtp", node.ip4, str(6000 + 2 * k),
                    self.relay_node.ip4, str(dest), str(MEDIA_PACKETS), "1.6"], cwd=str(ROOT)))
        for phone in phones:
            try:
                out, _ = phone.communicate(timeout=20)
                got = json.loads(out)["received"]
            except (subprocess.TimeoutExpired, ValueError, KeyError) as exc:
                got, out = 0, str(exc)
            finally:
                stop_process(phone)
            self.checks["calls"].add(got == MEDIA_PACKETS,
                                     f"cycle {cycle}: a phone got {got}/{MEDIA_PACKETS}")
        labsip.control(self.relay_node, CTL, [f"d{k} D {call} ftag;1 ttag;1"
                                              for k, call in enumerate(calls)])
        self.calls_ended += len(calls)      # one session record (a tombstone now) each

    def tunnel_cycle(self, cycle: int) -> None:
        size = 200_000
        sink = self.tun_node.popen([sys.executable, "-c", SINK, "10.9.0.1", "5001"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = sink.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
            sent = self.lab.clients[3].run([sys.executable, "-c", SOURCE, "10.9.0.1", "5001",
                                            str(size + cycle)], check=False,
                                           timeout=60).stdout.split()
            got = sink.stdout.readline().split() if ready else []  # type: ignore[union-attr]
        finally:
            stop_process(sink)
        self.checks["tunnel transfer"].add(bool(sent) and got == sent,
                                           f"cycle {cycle}: sent {sent}, received {got}")

    # -- samples -------------------------------------------------------------------------------
    def redis_state(self, prefix: str) -> tuple[int, int, int] | None:
        out = self.redis_node.run(["redis-cli", "-p", str(REDIS_PORT), "EVAL", STATE_LUA, "0",
                                   prefix], check=False, timeout=10)
        try:
            keys, live, tomb = (int(x) for x in out.stdout.split())
        except ValueError:
            return None
        return keys, live, tomb

    def sample(self, t: float) -> dict:
        row: dict = {"t": t}
        for name, d in self.daemons.items():
            row[name] = {**memory(d.pid), "fds": fds(d.pid)}
        for name, prefix in (("hub", "hub"), ("relay", "media")):
            state = self.redis_state(prefix)
            if state is None:
                raise SoakError("redis does not answer")
            row[name].update(zip(("keys", "records", "tombstones"), state, strict=True))
        return row

    def ping_summary(self) -> dict:
        if self.pinger is None:
            return {}
        with contextlib.suppress(ProcessLookupError):
            self.pinger.send_signal(signal.SIGINT)
        try:
            out, _ = self.pinger.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out = ""
        stop_process(self.pinger)
        self.pinger = None
        for line in out.splitlines():
            if "received" in line:
                parts = line.split(",")
                return {"sent": int(parts[0].split()[0]), "received": int(parts[1].split()[0])}
        return {}


SINK = """
import hashlib, socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])), reuse_port=True)
print('ready', flush=True)
s.settimeout(60); c, _ = s.accept(); c.settimeout(60)
h, n = hashlib.sha256(), 0
while b := c.recv(65536):
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""
SOURCE = """
import hashlib, random, socket, sys
size = int(sys.argv[3]); data = random.Random(size).randbytes(size)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(data); c.close()
print(size, hashlib.sha256(data).hexdigest())
"""


# -- verdicts ----------------------------------------------------------------------------------

def tombstone_bound(calls_per_second: float, grace_s: float = SESSION_GRACE_MS / 1000) -> float:
    """How many tombstones of ended calls a cluster may hold: the calls of one grace period
    and of the half grace between two purges, with a quarter and a few more for jitter."""
    return calls_per_second * grace_s * 1.5 * 1.25 + 16


def limits(rss_mib_per_hour: float, tombstones_most: float | None = None
           ) -> dict[str, Limit]:
    return {
        "rss": Limit(per_hour=rss_mib_per_hour * MIB),
        "anon": Limit(note="stated: the anonymous part of rss"),
        "fds": Limit(window=1.0, note="no trend: less than one fd of fitted growth"),
        "keys": Limit(window=1.0, note="no trend in the number of keys"),
        "records": Limit(window=1.0, note="live records stay as many as configured"),
        # ended calls stay as tombstones for the session grace period, then are purged: the
        # count levels off (judged against the bound; a run shorter than the grace cannot
        # reach it)
        "tombstones": Limit(most=tombstones_most, note="purged after the session grace"),
    }


UNITS = {"rss": "B", "anon": "B", "fds": "fd", "keys": "key", "records": "rec", "tombstones": "rec"}


def verdicts(samples: list[dict], warmup: float, rss_limit: float,
             tombstones_most: float | None = None) -> list[Verdict]:
    out = []
    lim = limits(rss_limit, tombstones_most)
    for daemon in ("tunnel", "hub", "relay"):
        for metric in lim:
            if metric not in samples[0].get(daemon, {}):
                continue
            points = [(s["t"], float(s[daemon][metric])) for s in samples]
            out.append(judge(daemon, metric, UNITS[metric], after_warmup(points, warmup),
                             lim[metric]))
    return out


def traffic_failures(checks: dict[str, Counts], pings: dict) -> list[str]:
    """Broken traffic is a failure too: a soak of daemons that stopped working proves nothing.
    Each activity must succeed in at least 90% of its attempts."""
    bad = []
    for name, c in checks.items():
        total = c.ok + c.failed
        if total == 0 or c.ok < 0.9 * total:
            bad.append(f"{name}: {c.ok}/{total} succeeded {c.notes[:3]}")
    if pings and pings["received"] < 0.9 * pings["sent"]:
        bad.append(f"tunnel pings: {pings['received']}/{pings['sent']} answered")
    return bad


# -- main --------------------------------------------------------------------------------------

def require_capabilities() -> None:
    if os.geteuid() != 0:
        raise SoakError("needs root (CAP_NET_ADMIN) for network namespaces")
    for prog in ("uanytun", "redis-server", "redis-cli", "ping", "ss"):
        if shutil.which(prog) is None:
            raise SoakError(f"needs the program {prog!r} (make deps-test installs it)")
    from relay import fastpath
    if not fastpath.available():
        raise SoakError(f"needs the C data plane: {fastpath.unavailable_reason()}")


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the namespaces are deleted either way."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    require_capabilities()
    total = args.minutes * 60
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmpdir, \
            AnycastLab(servers=3, clients=4, hosts=3, tag="soak") as lab:
        soak = Soak(lab, Path(tmpdir))
        try:
            soak.start()
            log(f"soak: running {args.minutes:g} min (warm-up {args.warmup:g}s) on "
                f"{machine_summary()}")
            t0 = time.monotonic()
            cycle = 0
            while time.monotonic() - t0 < total:
                soak.hub_cycle(cycle)
                soak.relay_cycle(cycle)
                soak.tunnel_cycle(cycle)
                samples.append(soak.sample(time.monotonic() - t0))
                cycle += 1
                if cycle % 20 == 0:
                    s = samples[-1]
                    log(f"soak: {s['t']:.0f}s, {cycle} cycles: " + ", ".join(
                        f"{d} {s[d]['rss'] / MIB:.1f} MiB/{s[d]['fds']} fds"
                        for d in soak.daemons))
            pings = soak.ping_summary()
            logs = {name: d.log.read_text(errors="replace")
                    for name, d in soak.daemons.items()}
        finally:
            for d in [*soak.clients.values(), *soak.daemons.values()]:
                d.stop()
    tracebacks = [name for name, text in logs.items() if "Traceback" in text]
    most = tombstone_bound(soak.calls_ended / max(1.0, samples[-1]["t"]))
    result = {
        "minutes": args.minutes, "warmup": args.warmup, "cycles": cycle,
        "machine": machine_summary(), "samples": samples, "tombstones_most": most,
        "verdicts": [v.to_json() for v in verdicts(samples, args.warmup, args.rss_limit, most)],
        "traffic": {k: {"ok": c.ok, "failed": c.failed, "notes": c.notes}
                    for k, c in soak.checks.items()},
        "tunnel_pings": pings,
        "failures": traffic_failures(soak.checks, pings)
        + [f"{name}: a traceback in its log" for name in tracebacks],
    }
    result["failures"] += [f"{v['daemon']} {v['metric']}: {v['reason']}"
                           for v in result["verdicts"] if not v["ok"]]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with _terminate_as_interrupt():
            result = run(args)
    except (SoakError, LabError, ValueError) as exc:  # ValueError: too few samples to fit
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted; namespaces removed", file=sys.stderr)
        return 130
    print(table(verdicts(result["samples"], args.warmup, args.rss_limit,
                         result["tombstones_most"])))
    print("traffic: " + ", ".join(f"{k} {v['ok']}/{v['ok'] + v['failed']}"
                                  for k, v in result["traffic"].items())
          + (f", tunnel pings {result['tunnel_pings'].get('received')}/"
             f"{result['tunnel_pings'].get('sent')}" if result["tunnel_pings"] else ""))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        except OSError as exc:
            print(f"soak: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return 2
    if result["failures"]:
        print("soak: FAILED\n  " + "\n  ".join(result["failures"]), file=sys.stderr)
        return 1
    print(f"soak: flat after {result['cycles']} cycles in {args.minutes:g} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
