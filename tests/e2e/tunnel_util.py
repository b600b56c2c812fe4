"""Helpers for the tunnel and server e2e tests: start tunnel daemons in lab nodes, wait for
their devices, ping through them, move data through them and compare hashes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from lab import AnycastLab, Node
from lab.netns import LabError, stop_process, wait_for
from tests.conftest import require, require_program

RELAY = [sys.executable, "-m", "relay"]

SECRET = ["-E", "secret"]
NULL = ["-c", "null", "-a", "null", "-k", "null"]
K256 = ["-E", "have_a_very_safe_and_productive_day", "-c", "aes-ctr-256", "-k", "aes-ctr-256"]
INNER = {4: ("10.9.0.1", "10.9.0.2"), 6: ("fd00:9::1", "fd00:9::2")}

# A TCP sink / source pair as python one-liners: no files, the hash tells the truth.
SINK = """
import hashlib, socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.create_server((sys.argv[1], int(sys.argv[2])), family=fam)
print('ready', flush=True)
s.settimeout(60); c, _ = s.accept(); c.settimeout(60)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""
SOURCE = """
import hashlib, random, socket, sys
size = int(sys.argv[3]); rnd = random.Random(size)
data = rnd.randbytes(size)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(data); c.close()
print(size, hashlib.sha256(data).hexdigest())
"""



def device_ready(node: Node, dev: str, addr: str | None = None) -> bool:
    out = node.run(["ip", "-br", "addr", "show", "dev", dev], check=False).stdout
    if not out or (" UNKNOWN " not in out and " UP " not in out):
        return False
    return addr is None or addr in out


def start(node: Node, argv: list[str], dev: str, addr: str | None = None,
          timeout: float = 15, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a tunnel daemon and wait until its device is up (with `addr` if given)."""
    proc = node.popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise LabError(f"{argv[0]} on {node.name} exited {proc.returncode}:\n{out[-3000:]}")
        return device_ready(node, dev, addr)

    wait_for(ready, timeout, f"device {dev} on {node.name}")
    return proc


def stop(proc: subprocess.Popen) -> str:
    """Stop a daemon (SIGTERM to its group, then SIGKILL); returns its output."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    out = ""
    try:
        raw, _ = proc.communicate(timeout=5)
        if isinstance(raw, bytes):
            out = raw.decode(errors="replace")
        elif raw:
            out = raw
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass
    stop_process(proc)
    return out


def relay(*args: str, dataplane: str = "python") -> list[str]:
    """An anytun-relay command line; the Python data plane unless told (auto: the C fast path
    where it accepts the configuration)."""
    return [*RELAY, "-D", "-L", "stdout:5", "--dataplane", dataplane, *args]


def uanytun(*args: str) -> list[str]:
    return ["uanytun", "-D", "-L", "stdout:4", *args]


def anytun(*args: str) -> list[str]:
    return ["anytun", "-D", "-L", "stdout:4", *args]


def fast(*args: str) -> list[str]:
    """anytun-relay on the C fast path only (it refuses to start if the fast path declines)."""
    return relay(*args, dataplane="fast")


# The peer programs a TunnelCase names.
PEERS = {"uanytun": uanytun, "anytun": anytun, "fast": fast, "python": relay}


@contextlib.contextmanager
def tunnel_lab(tag: str, *programs: str, clients: int = 1) -> Iterator[AnycastLab]:
    """A lab with one server and `clients` clients for a module's tests (root and `programs`
    required)."""
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    for program in programs:
        require_program(program)
    with AnycastLab(servers=1, clients=clients, tag=tag) as lab:
        yield lab


# -- anytun-relay against a peer --------------------------------------------------------------
@dataclass
class TunnelCase:
    """anytun-relay (on data plane `dataplane`) against a peer program on the other lab node."""
    id: str
    peer: str                  # a key of PEERS
    relay_role: str = "left"
    relay_on: str = "server"   # server | client (the client side has -r)
    dev: str = "tun"
    outer: int = 4
    inner: int = 4
    crypto: list[str] = field(default_factory=lambda: list(SECRET))
    relay_extra: list[str] = field(default_factory=list)
    peer_extra: list[str] = field(default_factory=list)
    dataplane: str = "python"


@dataclass
class TunnelPair:
    server: Node
    client: Node
    srv_in: str                # inner addresses
    cli_in: str
    relay_node: Node
    relay_dev: str
    peer_ip: str               # the outer address the relay sees its peer at


@contextlib.contextmanager
def tunnel_pair(lab: AnycastLab, case: TunnelCase, numbers: tuple[int, int],
                env: dict[str, str] | None = None) -> Iterator[TunnelPair]:
    """The relay and its peer of `case` up on the lab's server and client (devices
    <dev><numbers[0]> for the relay, <dev><numbers[1]> for the peer); both stopped on exit,
    their output printed if the body fails."""
    server, client = lab.server(1), lab.client
    server_outer = server.ip4 if case.outer == 4 else server.ip6
    peer_role = "right" if case.relay_role == "left" else "left"
    procs = {}
    try:
        for side, node, addr in (("server", server, "10.9.0.1/24"),
                                 ("client", client, "10.9.0.2/24")):
            is_relay = side == case.relay_on
            dev = f"{case.dev}{numbers[0] if is_relay else numbers[1]}"
            common = ["-d", dev, "-t", case.dev, "-n", addr, *case.crypto]
            if side == "client":
                common += ["-r", server_outer]
            if is_relay:
                argv = relay(*common, "-e", case.relay_role, *case.relay_extra,
                             dataplane=case.dataplane)
            else:
                argv = PEERS[case.peer](*common, "-e", peer_role, *case.peer_extra)
            procs[side] = (start(node, argv, dev, addr.split("/")[0], env=env), node, dev)
        srv_in, cli_in = INNER[case.inner]
        if case.inner == 6:
            for (_, node, dev), a in ((procs["server"], srv_in), (procs["client"], cli_in)):
                node.run(["ip", "-6", "addr", "add", f"{a}/64", "dev", dev, "nodad"])
        _, relay_node, relay_dev = procs[case.relay_on]
        peer_ip = (client.ip4 if case.outer == 4 else client.ip6) \
            if case.relay_on == "server" else server_outer
        yield TunnelPair(server, client, srv_in, cli_in, relay_node, relay_dev, peer_ip)
    except BaseException:
        for side, (proc, _, _) in procs.items():
            print(f"--- {side} output ---\n{stop(proc)[-3000:]}")
        raise
    finally:
        for proc, _, _ in procs.values():
            stop(proc)


def ping(node: Node, addr: str, count: int = 3, interval: float = 0.2,
         wait: float = 1.0) -> int:
    """Number of echo replies."""
    out = node.run(["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait),
                    addr], check=False, timeout=30).stdout
    for line in out.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def ping_until(node: Node, addr: str, timeout: float = 8) -> None:
    """The first packets may trigger ARP/ND through the tunnel: retry until one answers."""
    wait_for(lambda: ping(node, addr, 1, 0.2, 1) == 1, timeout, f"ping {addr} from {node.name}")


def transfer(src: Node, dst: Node, dst_addr: str, size: int = 2_000_000,
             port: int = 5001) -> None:
    """Send `size` bytes over TCP from src to dst_addr (on dst); compare sha256 both ends."""
    sink = dst.popen([sys.executable, "-c", SINK, dst_addr, str(port)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = sink.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise LabError(f"sink failed: {line} {sink.stderr.read()}")  # type: ignore
        sent = src.run([sys.executable, "-c", SOURCE, dst_addr, str(port), str(size)],
                       timeout=90).stdout.split()
        got = sink.stdout.readline().split()  # type: ignore[union-attr]
        sink.wait(30)
    finally:
        stop_process(sink)
    assert got == sent, f"transfer mismatch: sent {sent}, received {got}"


def status(node: Node, dev: str) -> dict:
    out = node.run([*RELAY, "status", "--json", dev], timeout=20).stdout
    return json.loads(out)


def tunnel_status(node: Node, dev: str) -> dict:
    st = status(node, dev)
    return next(v for v in st.values() if isinstance(v, dict) and "connections" in v)


# -- packet capture ---------------------------------------------------------------------------
class Capture:
    """tcpdump in a node, writing a pcap; `packets()` after stop() gives the raw frames."""

    def __init__(self, node: Node, path: str, iface: str, bpf: str) -> None:
        self.path = path
        self.proc = node.popen(["tcpdump", "-Z", "root", "-i", iface, "-U", "-n", "-s", "0", "-w",
                                path, bpf],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = b""
        deadline = time.monotonic() + 10
        while b"listening on" not in line and time.monotonic() < deadline:
            line = self.proc.stderr.readline()  # type: ignore[union-attr]
            if not line and self.proc.poll() is not None:
                raise LabError("tcpdump did not start")
        time.sleep(0.3)  # "listening" is printed a moment before the filter is in place

    def stop(self) -> list[tuple[int, bytes]]:
        time.sleep(0.3)  # let the last packets reach the file
        stop_process(self.proc)
        return read_pcap(self.path)


def read_pcap(path: str) -> list[tuple[int, bytes]]:
    """(link type, frame) for every record of a classic pcap file."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[pos + 8: pos + 12])[0]
        out.append((linktype, data[pos + 16: pos + 16 + incl]))
        pos += 16 + incl
    return out


def ip_of_frame(linktype: int, frame: bytes) -> bytes:
    """The IP packet inside a captured frame (Ethernet, Linux cooked v1/v2, or raw IP)."""
    if linktype == 1:
        return frame[14:]
    if linktype == 113:
        return frame[16:]
    if linktype == 276:
        return frame[20:]
    return frame


def udp_payload(ip: bytes) -> bytes:
    """Payload of a UDP or UDP-Lite packet inside an IPv4/IPv6 packet (no extension headers)."""
    if ip[0] >> 4 == 4:
        ihl = (ip[0] & 15) * 4
        return ip[ihl + 8: int.from_bytes(ip[2:4], "big")]
    return ip[48: 40 + int.from_bytes(ip[4:6], "big")]
