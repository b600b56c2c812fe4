"""BGP in the lab: the router runs BIRD 2, every server an ExaBGP speaker fed by
`anytun-relay exabgp`, so the anycast prefixes go where the healthy servers announce them.

    with AnycastLab(servers=2) as lab, BgpFabric(lab, workdir, BgpSettings(bfd=True)) as bgp:
        bgp.start_speaker(1, ["--check-relay"])
        bgp.wait_paths(1)                       # the router routes the anycast prefixes to s1

* Router AS 65000; every server AS 65100 (one AS for the anycast service, as usual), eBGP
  over the server's link, one session per family (10.2.j.x and fd00:2:j::x).
* The router's kernel table gets BIRD's best route; with `multipath` the equal routes of
  several servers are merged into one ECMP route (BIRD `merge paths`) and the router hashes
  flows over them by their 5-tuple (`fib_multipath_hash_policy = 1`).
* Hold time 3 s (the protocol's minimum): a silent server is withdrawn 2-3 s after its last
  keepalive. With `bfd` the router asks for BFD on each session and every server runs a BIRD
  instance that does nothing but BFD (ExaBGP does not speak it), 100 ms x 3: a silent server
  is withdrawn in about 0.3 s. BFD says the server's kernel and its BFD speaker are alive;
  whether the service is healthy stays the announcer's job.
* `crash(j)` makes a server fall silent (nftables drops everything it sends and receives) and
  kills its BGP processes with SIGKILL, as when a machine loses power: no FIN, no
  NOTIFICATION, only the timers tell.

The static routes of `AnycastLab.move` are removed from the router while the fabric runs
(they would outrank BIRD's) and put back on close; `move()` stays the fast way for tests
that do not need BGP.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab.netns import LabError, stop_process
from lab.topology import ANYCAST_PREFIXES, AnycastLab, Node

ROUTER_AS = 65000
NODE_AS = 65100
CRASH_TABLE = "bgplab_crash"


@dataclass(frozen=True)
class BgpSettings:
    hold: int = 3                  # BGP hold time, seconds (3 is the minimum)
    bfd: bool = False
    bfd_interval_ms: int = 100
    bfd_multiplier: int = 3
    multipath: bool = False        # ECMP over every server that announces


def _family(prefix: str) -> int:
    return 6 if ":" in prefix else 4


# -- configuration writers (pure) -----------------------------------------------------------------

def bird_router_config(servers: list[Node], settings: BgpSettings, log_path: Path) -> str:
    merge = "\tmerge paths on limit 16;\n" if settings.multipath else ""
    bfd = ""
    if settings.bfd:
        bfd = ("protocol bfd {\n\tinterface \"s*\" {\n"
               f"\t\tmin rx interval {settings.bfd_interval_ms} ms;\n"
               f"\t\tmin tx interval {settings.bfd_interval_ms} ms;\n"
               f"\t\tmultiplier {settings.bfd_multiplier};\n\t}};\n}}\n\n")
    out = [f'log "{log_path}" all;\nrouter id 10.0.0.1;\n\n'
           "protocol device {\n\tscan time 10;\n}\n\n"]
    for fam in (4, 6):
        out.append(f"protocol kernel k{fam} {{\n\tipv{fam} {{\n\t\timport none;\n"
                   f"\t\texport all;\n\t}};\n{merge}}}\n\n")
    out.append(bfd)
    out.append("template bgp anycastnode {\n"
               f"\tlocal as {ROUTER_AS};\n"
               f"\thold time {settings.hold};\n"
               f"\tkeepalive time {max(1, settings.hold // 3)};\n"
               "\tconnect retry time 1;\n"
               "\terror wait time 1, 4;\n"
               + ("\tbfd on;\n" if settings.bfd else "")
               + "}\n\n")
    for node in servers:
        for fam, peer, local in ((4, node.ip4, node.gw4), (6, node.ip6, node.gw6)):
            out.append(f"protocol bgp {node.name}v{fam} from anycastnode {{\n"
                       f"\tneighbor {peer} as {NODE_AS};\n"
                       f"\tsource address {local};\n"
                       f"\tipv{fam} {{\n\t\timport all;\n\t\texport none;\n\t}};\n}}\n\n")
    return "".join(out)


def bird_bfd_config(node: Node, settings: BgpSettings, log_path: Path) -> str:
    """A server's BIRD that only answers the router's BFD sessions."""
    return (f'log "{log_path}" all;\nrouter id {node.ip4};\n\n'
            "protocol device {\n}\n\n"
            "protocol bfd {\n\tinterface \"eth0\" {\n"
            f"\t\tmin rx interval {settings.bfd_interval_ms} ms;\n"
            f"\t\tmin tx interval {settings.bfd_interval_ms} ms;\n"
            f"\t\tmultiplier {settings.bfd_multiplier};\n\t}};\n"
            f"\tneighbor {node.gw4} dev \"eth0\";\n"
            f"\tneighbor {node.gw6} dev \"eth0\";\n}}\n")


def exabgp_config(node: Node, settings: BgpSettings, process: Path) -> str:
    out = [f"process anycast {{\n\trun {process};\n\tencoder text;\n}}\n\n"]
    for fam, peer, local in ((4, node.gw4, node.ip4), (6, node.gw6, node.ip6)):
        out.append(f"neighbor {peer} {{\n"
                   f"\trouter-id {node.ip4};\n"
                   f"\tlocal-address {local};\n"
                   f"\tlocal-as {NODE_AS};\n"
                   f"\tpeer-as {ROUTER_AS};\n"
                   f"\thold-time {settings.hold};\n"
                   f"\tfamily {{\n\t\tipv{fam} unicast;\n\t}}\n"
                   "\tapi {\n\t\tprocesses [ anycast ];\n\t}\n}\n\n")
    return "".join(out)


def announcer_argv(checks: list[str], *, rise: int = 2, fall: int = 2, interval: float = 0.2,
                   prefixes: tuple[str, ...] = ANYCAST_PREFIXES) -> list[str]:
    """The `anytun-relay exabgp` command line a speaker runs (from this Python environment)."""
    argv = [sys.executable, "-m", "relay.announce", "--log", "info", "--rise", str(rise),
            "--fall", str(fall), "--interval", str(interval), "--timeout", "1"]
    for p in prefixes:
        argv += ["--prefix", p]
    return argv + checks


# ExaBGP's settings through its environment: no privilege drop (the lab's files belong to
# root), no CLI pipes, no listening socket (it connects to the router), log to stdout.
EXABGP_ENV = {"exabgp_daemon_user": "root", "exabgp_daemon_drop": "false",
              "exabgp_daemon_daemonize": "false", "exabgp_api_cli": "false",
              "exabgp_tcp_bind": "", "exabgp_log_destination": "stdout",
              "exabgp_log_level": "INFO", "exabgp_log_reactor": "false",
              "exabgp_api_respawn": "true"}


# -- processes -------------------------------------------------------------------------------------

class BgpFabric:
    def __init__(self, lab: AnycastLab, workdir: Path, settings: BgpSettings | None = None,
                 bird: str = "bird", birdc: str = "birdc", exabgp: str = "exabgp") -> None:
        self.lab, self.dir = lab, Path(workdir)
        self.settings = settings or BgpSettings()
        self.bird, self.birdc_exe, self.exabgp = bird, birdc, exabgp
        self.dir.mkdir(parents=True, exist_ok=True)
        self.router_proc: subprocess.Popen | None = None
        self.speakers: dict[int, subprocess.Popen] = {}
        self.bfd_speakers: dict[int, subprocess.Popen] = {}
        self.crashed: set[int] = set()
        self.ctl = self.dir / "router.ctl"
        try:
            self._start_router()
        except BaseException:
            self.close()
            raise

    # -- router --------------------------------------------------------------------------------
    def _start_router(self) -> None:
        r = self.lab.router
        for fam in (4, 6):
            r.sysctl(f"net.ipv{fam}.fib_multipath_hash_policy", 1)
        for prefix in ANYCAST_PREFIXES:   # BIRD's routes decide from now on
            r.run(["ip", f"-{_family(prefix)}", "route", "del", prefix], check=False)
        conf = self.dir / "router.conf"
        conf.write_text(bird_router_config(self.lab.servers, self.settings,
                                           self.dir / "router.log"))
        self.router_proc = self._bird(r, conf, self.ctl)

    def _bird(self, host, conf: Path, ctl: Path) -> subprocess.Popen:
        check = host.run([self.bird, "-p", "-c", str(conf)], check=False)
        if check.returncode != 0:
            raise LabError(f"BIRD refuses {conf}: {check.stderr.strip()}")
        proc = host.popen([self.bird, "-f", "-c", str(conf), "-s", str(ctl)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not ctl.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise LabError(f"BIRD did not start in {host.name}: {err.strip()}")
            time.sleep(0.05)
        return proc

    def birdc(self, command: str) -> str:
        return self.lab.router.run([self.birdc_exe, "-s", str(self.ctl), *shlex.split(command)],
                                   check=False).stdout

    def established(self, j: int) -> bool:
        """Both of server j's sessions are up on the router."""
        node = self.lab.server(j)
        out = self.birdc(f"show protocols {node.name}v4") + self.birdc(
            f"show protocols {node.name}v6")
        return out.count("Established") == 2

    # -- speakers ------------------------------------------------------------------------------
    def start_speaker(self, j: int, checks: list[str], *, rise: int = 2, fall: int = 2,
                      interval: float = 0.2, env: dict[str, str] | None = None,
                      wait: bool = True) -> subprocess.Popen:
        """ExaBGP on server j running `anytun-relay exabgp` with these checks."""
        node = self.lab.server(j)
        if j in self.speakers:
            raise LabError(f"server {j} has a speaker already")
        self.revive(j)
        script = self.dir / f"{node.name}-announce.sh"
        argv = announcer_argv(checks, rise=rise, fall=fall, interval=interval)
        extra = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
        script.write_text(f"#!/bin/sh\ncd {shlex.quote(os.getcwd())}\n{extra}"
                          f"exec {shlex.join(argv)}\n")
        script.chmod(0o755)
        conf = self.dir / f"{node.name}-exabgp.conf"
        conf.write_text(exabgp_config(node, self.settings, script))
        if self.settings.bfd and j not in self.bfd_speakers:
            bconf = self.dir / f"{node.name}-bfd.conf"
            bconf.write_text(bird_bfd_config(node, self.settings,
                                             self.dir / f"{node.name}-bfd.log"))
            ctl = self.dir / f"{node.name}-bfd.ctl"
            with contextlib.suppress(FileNotFoundError):
                ctl.unlink()
            self.bfd_speakers[j] = self._bird(node.host, bconf, ctl)
        log = (self.dir / f"{node.name}-exabgp.log").open("ab")
        proc = node.popen(["env", *(f"{k}={v}" for k, v in EXABGP_ENV.items()),
                           self.exabgp, str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.speakers[j] = proc
        if wait:
            self.wait(lambda: self.established(j), 20, f"BGP sessions of {node.name}")
        return proc

    def stop_speaker(self, j: int) -> None:
        """Stop ExaBGP on server j the clean way (it closes its sessions: withdrawn at once)."""
        proc = self.speakers.pop(j, None)
        if proc is not None:
            stop_process(proc, timeout=5)

    def speaker_log(self, j: int) -> str:
        path = self.dir / f"{self.lab.server(j).name}-exabgp.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- failures --------------------------------------------------------------------------------
    def crash(self, j: int, *also: subprocess.Popen) -> None:
        """Server j falls silent and its BGP processes (and `also`) die by SIGKILL."""
        node = self.lab.server(j)
        node.run(["nft", "-f", "-"], input=(
            f"table inet {CRASH_TABLE} {{\n"
            "  chain input_ { type filter hook input priority -300; policy drop; }\n"
            "  chain output_ { type filter hook output priority -300; policy drop; }\n"
            "  chain forward_ { type filter hook forward priority -300; policy drop; }\n}\n"))
        self.crashed.add(j)
        procs = [p for p in (self.speakers.pop(j, None), self.bfd_speakers.pop(j, None))
                 if p is not None]
        for proc in (*procs, *also):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in (*procs, *also):
            stop_process(proc)

    def revive(self, j: int) -> None:
        """Undo crash(j)'s silence (the processes must be started again)."""
        if j in self.crashed:
            self.lab.server(j).run(["nft", "delete", "table", "inet", CRASH_TABLE], check=False)
            self.crashed.discard(j)

    # -- the router's view -------------------------------------------------------------------------
    def paths(self, prefix: str = ANYCAST_PREFIXES[1]) -> set[int]:
        """The servers the router's kernel sends `prefix` to now (several with ECMP)."""
        out = self.lab.router.run(["ip", "-j", f"-{_family(prefix)}", "route", "show", "exact",
                                   prefix], check=False).stdout
        try:
            routes = json.loads(out or "[]")
        except ValueError:
            return set()
        vias: set[str] = set()
        for r in routes:
            for hop in r.get("nexthops", [r]):
                if "gateway" in hop:
                    vias.add(hop["gateway"])
        return {n.index for n in self.lab.servers if {n.ip4, n.ip6} & vias}

    def wait_paths(self, *servers: int, timeout: float = 20,
                   prefixes: tuple[str, ...] = ANYCAST_PREFIXES) -> float:
        """Wait until every prefix is routed to exactly these servers; returns seconds waited."""
        want = set(servers)
        t0 = time.monotonic()
        self.wait(lambda: all(self.paths(p) == want for p in prefixes), timeout,
                  f"anycast routes to servers {sorted(want) or 'none'} "
                  f"(now {self.paths()})")
        return time.monotonic() - t0

    def wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        for j in list(self.speakers):
            self.stop_speaker(j)
        for proc in self.bfd_speakers.values():
            stop_process(proc)
        self.bfd_speakers.clear()
        for j in list(self.crashed):
            self.revive(j)
        if self.router_proc is not None:
            stop_process(self.router_proc)
            self.router_proc = None
            for fam in (4, 6):
                self.lab.router.run(["ip", f"-{fam}", "route", "flush", "proto", "bird"],
                                    check=False)
            self.lab.move(self.lab.current or 1)

    def __enter__(self) -> BgpFabric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
