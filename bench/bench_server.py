"""Server mode: one hub, many clients -- anytun-relay as the hub against the real anytun.

Namespaces c1 -- hub -- c2 (one veth each). The hub gets its connections from the real
anytun-controld (anytun-config: client i has MUX i, passphrase, route 10.30.i.0/24) and runs
either `anytun -X ... -t tun` or `anytun-relay -X ...` with the same command line; the
clients are uanytun or anytun-relay (`-e client -r <hub> -m i`). Per round every hub runs
once with each client kind, in rotated order; the table shows medians.

Figures:
* hub TCP: iperf3 c1 -> c2 through the hub (client-to-client, routed by the hub);
* hub 64-byte UDP: bench/blast.c floods c1 -> c2 through the hub, delivered rate at c2;
* hub CPU per Gbit/s (TCP) and RSS;
* the clients' ceiling: the same 64-byte flood between the two clients of a kind tunnelled
  point-to-point (no hub daemon; the hub namespace only forwards the underlay) -- what the
  clients themselves can carry, the most any hub can deliver with them;
* scale (anytun-relay hub and clients, --config): the same TCP figure with 2, 100, 1,000 and
  10,000 configured clients, up to 100 of them active (98 simulated clients in c1 send a few
  authentic datagrams per second each), as a ratio to 2 clients; the time a reload takes
  until the C tables hold 10,000 clients, and the C tables' bytes per configured client.
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
from dataclasses import dataclass
from pathlib import Path

from bench.common import CpuWindow, blaster, median, rounds, row, rss_bytes, seconds, wait_link
from lab import Host, Namespaces, stop_process

HUB_DEV, CLIENT_DEV = "bhub", "bcli"
HUB_IN = "10.30.0.1"
PORT = 4444
CONTROLD = "127.0.0.1:2323"
SINK_PORT = 9000
SCALE = (2, 100, 1000, 10000)
ACTIVE = 100


def client_in(i: int) -> str:
    return f"10.30.{i}.2"


def relay_argv() -> list[str]:
    return [sys.executable, "-m", "relay"]


def _which(prog: str) -> str | None:
    from shutil import which
    return None if which(prog) else f"{prog} is not installed"


@dataclass
class Kind:
    name: str
    argv: Callable[[], list[str]]
    missing: Callable[[], str | None]


HUBS = {"anytun-relay": Kind("anytun-relay", relay_argv, lambda: None),
        "anytun": Kind("anytun", lambda: ["anytun"], lambda: _which("anytun"))}
CLIENTS = {"anytun-relay": Kind("anytun-relay", relay_argv, lambda: None),
           "uanytun": Kind("uanytun", lambda: ["uanytun"], lambda: _which("uanytun"))}


class Trio:
    """Namespaces c1 (10.21.1.2) and c2 (10.21.2.2), each on a veth to the hub (.1)."""

    def __init__(self) -> None:
        self.ns = Namespaces("benchhub")
        try:
            self.hub = self.ns.add("hub")
            # anytun relays client to client through the kernel (device -> forward -> device)
            self.hub.sysctl("net.ipv4.ip_forward", 1)
            self.c = {i: self.ns.add(f"c{i}") for i in (1, 2)}
            for i, host in self.c.items():
                self.ns.link(host, "eth0", self.hub, f"c{i}")
                host.run(["ip", "addr", "add", f"10.21.{i}.2/24", "dev", "eth0"])
                self.hub.run(["ip", "addr", "add", f"10.21.{i}.1/24", "dev", f"c{i}"])
                host.run(["ping", "-c", "1", "-W", "2", "-q", f"10.21.{i}.1"])
        except BaseException:
            self.ns.close()
            raise

    def close(self) -> None:
        self.ns.close()


def _log_file(tag: str):
    fd, path = tempfile.mkstemp(prefix=f"bench-hub-{tag}-", suffix=".log")
    return os.fdopen(fd, "wb"), Path(path)


class Running:
    """Daemons started for one measurement; stop() ends them and waits for their devices."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen, Host, str | None, Path]] = []

    def start(self, host: Host, argv: list[str], dev: str | None, what: str) -> subprocess.Popen:
        f, path = _log_file(what)
        with f:
            proc = host.popen(argv, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append((proc, host, dev, path))
        if dev is not None and (not wait_link(host, dev, 20) or proc.poll() is not None):
            raise RuntimeError(f"{what} did not start: "
                               f"{path.read_text(errors='replace').strip()[-300:]}")
        return proc

    def stop(self) -> None:
        for proc, host, dev, path in reversed(self.procs):
            stop_process(proc)
            if dev is not None:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and host.run(
                        ["ip", "link", "show", dev], check=False).returncode == 0:
                    time.sleep(0.05)
            path.unlink(missing_ok=True)
        self.procs.clear()


def controld_table(hub: Host, path: Path) -> None:
    with path.open("wb") as f:
        for i in (1, 2):
            f.write(hub.run(["anytun-config", "-m", str(i), "-E", f"bench-pass-{i}", "-e",
                             "server", "-R", f"10.30.{i}.0/24"]).stdout.encode())


def start_clients(trio: Trio, run: Running, client: Kind) -> None:
    for i, host in trio.c.items():
        run.start(host, [*client.argv(), "-D", "-L", "stdout:2", "-m", str(i), "-E",
                         f"bench-pass-{i}", "-e", "client", "-r", f"10.21.{i}.1", "-o",
                         str(PORT), "-d", CLIENT_DEV, "-t", "tun", "-n", f"{client_in(i)}/16"],
                  CLIENT_DEV,
                  f"{client.name}-client{i}")


def warm(trio: Trio) -> None:
    """Both clients known to the hub, and a path c1 -> c2 through it."""
    for i in (2, 1):
        for _ in range(50):
            if trio.c[i].run(["ping", "-c", "1", "-W", "1", "-q", HUB_IN],
                             check=False).returncode == 0:
                break
    for _ in range(50):
        if trio.c[1].run(["ping", "-c", "1", "-W", "1", "-q", client_in(2)],
                         check=False).returncode == 0:
            return
    raise RuntimeError("no ping from client 1 to client 2 through the hub")


def measure_tcp(trio: Trio, hub_pid: int, secs: float) -> dict:
    server = trio.c[2].popen(["iperf3", "-s", "-1", "-B", client_in(2)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not trio.c[2].run(
                ["ss", "-Htln", "sport = :5201"], check=False).stdout.strip():
            time.sleep(0.05)
        win = CpuWindow([hub_pid])
        win.start()
        out = trio.c[1].run(["iperf3", "-c", client_in(2), "-t", str(secs), "-J"],
                            check=False, timeout=secs + 30)
        win.stop()
        rss = rss_bytes(hub_pid)
    finally:
        stop_process(server)
    try:
        rate = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"iperf3 through the hub failed: {out.stdout[-300:]}") from exc
    return {"mbps": rate / 1e6, "cores_per_gbps": win.cpu / win.wall / (rate / 1e9),
            "rss_mb": rss / 2**20}


def measure_udp(trio: Trio, secs: float) -> dict:
    blast = str(blaster())
    sink = trio.c[2].popen([blast, "sink", str(SINK_PORT), str(secs + 30)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        trio.c[1].run([blast, "send", client_in(2), str(SINK_PORT), str(64 - 28), str(secs)],
                      check=False, timeout=secs + 30)
        wall = time.monotonic() - t0
        time.sleep(0.2)
        sink.send_signal(signal.SIGTERM)
        out, _ = sink.communicate(timeout=10)
    finally:
        stop_process(sink)
    words = out.decode().split()
    delivered = int(words[1]) if words[:1] == ["received"] else 0
    return {"kpps": delivered / wall / 1e3}


def measure_ceiling(trio: Trio, client: Kind) -> dict:
    """The 64-byte rate of the two clients tunnelled to each other directly."""
    run = Running()
    peers = ((1, "left", 2), (2, "right", 1))
    try:
        for i, _role, peer in peers:       # the underlay between the clients, via the hub
            trio.c[i].run(["ip", "route", "replace", f"10.21.{peer}.0/24", "via", f"10.21.{i}.1"])
        for i, role, peer in peers:
            run.start(trio.c[i], [*client.argv(), "-D", "-L", "stdout:2", "-m", "1", "-E",
                                  "bench-pass-p2p", "-e", role, "-p", str(PORT), "-r",
                                  f"10.21.{peer}.2", "-o", str(PORT), "-d", CLIENT_DEV, "-t",
                                  "tun", "-n", f"{client_in(i)}/16"],
                      CLIENT_DEV, f"{client.name}-p2p{i}")
        for _ in range(50):
            if trio.c[1].run(["ping", "-c", "1", "-W", "1", "-q", client_in(2)],
                             check=False).returncode == 0:
                break
        else:
            raise RuntimeError("no ping between the two clients tunnelled point-to-point")
        return {"udp64": measure_udp(trio, seconds())}
    finally:
        run.stop()
        for i, _role, peer in peers:
            trio.c[i].run(["ip", "route", "del", f"10.21.{peer}.0/24"], check=False)


def measure_hub(trio: Trio, hub: Kind, client: Kind, table: Path) -> dict:
    run = Running()
    try:
        run.start(trio.hub, ["anytun-controld", "-D", "-f", str(table), "-X", CONTROLD], None,
                  "controld")
        time.sleep(0.3)
        proc = run.start(trio.hub, [*hub.argv(), "-D", "-L", "stdout:2", "-X", CONTROLD,
                                    "-t", "tun", "-d", HUB_DEV, "-n", f"{HUB_IN}/16",
                                    "-p", str(PORT), "-s", "1"], HUB_DEV, f"{hub.name}-hub")
        start_clients(trio, run, client)
        warm(trio)
        secs = seconds()
        return {"tcp": measure_tcp(trio, proc.pid, secs), "udp64": measure_udp(trio, secs)}
    finally:
        run.stop()


# -- scale: the anytun-relay hub with many configured clients ----------------------------------
def hex_key(m: int) -> tuple[str, str]:
    return f"{m:032x}", f"{(m * 7919) % (1 << 112):028x}"


def prefix(m: int) -> str:
    return f"10.30.{m}.0/24" if m <= 2 else f"10.{40 + (m >> 8)}.{m & 255}.0/24"


def node_config(n: int) -> str:
    out = [f'[node]\nport = {PORT}\ndevice_name = "{HUB_DEV}"\nifconfig = ["{HUB_IN}/16"]\n'
           'sender_id = 1\nkernel_routes = false\n\n[defaults]\nrole = "server"\n']
    for m in range(1, n + 1):
        k, s = hex_key(m)
        out.append(f'[[connection]]\nmux = {m}\nkey = "{k}"\nsalt = "{s}"\n'
                   f'routes = ["{prefix(m)}"]\n')
    return "".join(out)


ACTIVE_SCRIPT = r"""
import socket, struct, sys, time
from relay.fastpath import SatpCrypto
from relay.satp import MasterKey, Role, Suite
hub, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
peers = []
for m in range(first, last + 1):
    key = MasterKey(bytes.fromhex(f"{m:032x}"), bytes.fromhex(f"{(m * 7919) % (1 << 112):028x}"))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    src = bytes([10, 40 + (m >> 8), m & 255, 2])
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, 0, 0x4000, 64, 17, 0, src,
                      bytes([10, 30, 0, 1])) + struct.pack("!HHHH", 9, 9, 28, 0) + bytes(20)
    peers.append((s, SatpCrypto(Suite(), key, Role.RIGHT), m, hdr))
seq = 0
while True:
    for s, c, m, pkt in peers:
        try:
            s.sendto(c.seal(seq, 0, m, 0x0800, pkt), (hub, 4444))
        except OSError:
            pass
    seq += 1
    time.sleep(0.2)
"""


def reload_seconds(trio: Trio, path: Path, n: int) -> float:
    """Time from a reload request until the hub's C tables hold n clients (the reply comes
    before the C tables are fed; the status request after it is answered once they are, and
    its own cost, measured by a second one, is taken off)."""
    code = ("import time\nfrom relay.runtime.control import request\n"
            f"sock = '\\0anytun-relay/{HUB_DEV}'\n"
            "def held():\n"
            "    return request(sock, 'status', 60)['tunnel']['external_dataplane']"
            "['connections']\n"
            "t0 = time.monotonic()\nrequest(sock, 'reload', 60)\n"
            f"while held() != {n}:\n    time.sleep(0.01)\n"
            "t1 = time.monotonic()\nheld()\nt2 = time.monotonic()\n"
            "print(max(0.0, (t1 - t0) - (t2 - t1)))\n")
    out = trio.hub.run([sys.executable, "-c", code], check=False, timeout=120)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"reload timing failed: {out.stderr[-300:]}") from None


def hub_status(trio: Trio) -> dict:
    code = ("import json\nfrom relay.runtime.control import request\n"
            f"print(json.dumps(request('\\0anytun-relay/{HUB_DEV}', 'status', 60)"
            "['tunnel']['external_dataplane']))")
    return json.loads(trio.hub.run([sys.executable, "-c", code], timeout=120).stdout)


def measure_scale(trio: Trio, n: int, tmp: Path) -> dict:
    path = tmp / f"hub-{n}.toml"
    path.write_text(node_config(n))
    run = Running()
    try:
        proc = run.start(trio.hub, [*relay_argv(), "-D", "-L", "stdout:2", "--config",
                                    str(path)], HUB_DEV, f"scale-{n}")
        client = CLIENTS["anytun-relay"]
        for i, host in trio.c.items():
            k, s = hex_key(i)
            run.start(host, [*client.argv(), "-D", "-L", "stdout:2", "-m", str(i), "-K", k,
                             "-A", s, "-e", "client", "-r", f"10.21.{i}.1", "-o", str(PORT),
                             "-d", CLIENT_DEV, "-t", "tun", "-n", f"{client_in(i)}/16"],
                      CLIENT_DEV,
                      f"scale-client{i}")
        warm(trio)
        active = min(n, ACTIVE)
        if active > 2:
            run.start(trio.c[1], [sys.executable, "-c", ACTIVE_SCRIPT, "10.21.1.1", "3",
                                  str(active)], None, "active")
            time.sleep(1.0)
        result = {"tcp": measure_tcp(trio, proc.pid, seconds())}
        st = hub_status(trio)
        result["bytes_per_client"] = (st["table_bytes"] - st["index_bytes"]) / max(
            1, st["connections"])
        result["active"] = st["active_rx"]
        if n == SCALE[-1]:  # down to 2 clients, then the time to load 10,000 again
            full = path.read_text()
            path.write_text(node_config(2))
            reload_seconds(trio, path, 2)
            path.write_text(full)
            result["reload_10k_s"] = reload_seconds(trio, path, n)
        return result
    finally:
        run.stop()


# -- rounds and rows ---------------------------------------------------------------------------
def collect() -> tuple[dict, dict, dict]:
    hubs = [h for h, k in HUBS.items() if k.missing() is None]
    clients = [c for c, k in CLIENTS.items() if k.missing() is None]
    missing = {f"{k.name} (hub)": w for k in HUBS.values() if (w := k.missing())}
    missing.update({f"{k.name} (client)": w for k in CLIENTS.values() if (w := k.missing())})
    results: dict[tuple[str, str], list[dict]] = {(h, c): [] for h in hubs for c in clients}
    results.update({("ceiling", c): [] for c in clients})
    errors: dict = {}
    scale: dict[int, list[dict]] = {n: [] for n in SCALE}
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as d:
        tmp = Path(d)
        trio = Trio()
        try:
            table = tmp / "routingtable"
            controld_table(trio.hub, table)
            for r in range(rounds()):
                order = hubs[r % len(hubs):] + hubs[:r % len(hubs)]
                for client in clients:
                    for hub in order:
                        if (hub, client) in errors:
                            continue
                        print(f"   round {r + 1}: hub {hub}, clients {client}",
                              file=sys.stderr, flush=True)
                        try:
                            results[(hub, client)].append(
                                measure_hub(trio, HUBS[hub], CLIENTS[client], table))
                        except Exception as exc:
                            errors[(hub, client)] = str(exc).splitlines()[0][:200]
                    if ("ceiling", client) not in errors:
                        print(f"   round {r + 1}: {client} clients point-to-point (ceiling)",
                              file=sys.stderr, flush=True)
                        try:
                            results[("ceiling", client)].append(
                                measure_ceiling(trio, CLIENTS[client]))
                        except Exception as exc:
                            errors[("ceiling", client)] = str(exc).splitlines()[0][:200]
                for n in SCALE[r % len(SCALE):] + SCALE[:r % len(SCALE)]:
                    if ("scale", n) in errors:
                        continue
                    print(f"   round {r + 1}: scale {n} clients", file=sys.stderr, flush=True)
                    try:
                        scale[n].append(measure_scale(trio, n, tmp))
                    except Exception as exc:
                        errors[("scale", n)] = str(exc).splitlines()[0][:200]
        finally:
            trio.close()
    errors.update({(k, ""): v for k, v in missing.items()})
    return results, scale, errors


def _med(runs: list[dict], test: str, key: str) -> float | None:
    return median(r[test][key] for r in runs if test in r)


def rows_from(results: dict, scale: dict, errors: dict) -> list[dict]:
    out = []
    for client in CLIENTS:
        ours = results.get(("anytun-relay", client), [])
        ref = results.get(("anytun", client), [])
        notes = [f"{k[0]}: {v}" for k, v in errors.items() if k[1] in (client, "")]
        for label, test, key, unit in (("hub TCP throughput", "tcp", "mbps", "Mbit/s"),
                                       ("hub UDP 64 B rate", "udp64", "kpps", "kpps"),
                                       ("hub CPU per Gbit/s", "tcp", "cores_per_gbps",
                                        "cores"),
                                       ("hub RSS", "tcp", "rss_mb", "MiB")):
            goal = {"mbps": "goal >= 2.0x" if client == "anytun-relay" else "goal >= 1.2x",
                    "kpps": "goal >= 3x"}.get(key, "lower is better")
            out.append(row(f"server: {label}, {client} clients vs anytun hub",
                           _med(ours, test, key), _med(ref, test, key), unit,
                           "; ".join([goal, *notes])))
        # what the clients carry without a hub: our hub's 64 B rate as a share of it
        ceiling = _med(results.get(("ceiling", client), []), "udp64", "kpps")
        out.append(row(f"server: hub UDP 64 B rate, {client} clients, share of the clients' "
                       "point-to-point ceiling", _med(ours, "udp64", "kpps"), ceiling, "kpps",
                       f"ceiling {ceiling:.0f} kpps" if ceiling else "no ceiling measured"))
    base = _med(scale.get(SCALE[0], []), "tcp", "mbps")
    for n in SCALE:
        runs = scale.get(n, [])
        err = errors.get(("scale", n))
        mbps = _med(runs, "tcp", "mbps")
        bpc = median(r["bytes_per_client"] for r in runs)
        note = f"{min(n, ACTIVE)} active; goal within 10% of {SCALE[0]}"
        if bpc is not None:
            note += f"; C tables {bpc:.0f} B per configured client (+ a 512 KiB MUX index)"
        if err:
            note += f"; ERROR: {err}"
        out.append(row(f"server scale: hub TCP with {n} clients vs {SCALE[0]}", mbps, base,
                       "Mbit/s", note))
    reload_s = median(r["reload_10k_s"] for r in scale.get(SCALE[-1], []) if "reload_10k_s" in r)
    out.append(row(f"server scale: reload of {SCALE[-1]} clients until the C tables hold "
                   "them vs 1 s", reload_s, 1.0, "s", "goal < 1 s"))
    return out


def run() -> list[dict]:
    return rows_from(*collect())
