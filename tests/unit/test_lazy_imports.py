"""A daemon loads only what its configured modes use: a point-to-point tunnel never imports
relay mode, the server assembly, the cluster (redis), the TOML reader, the Python SATP
crypto (cryptography), TLS or urllib, the standard library's log handlers (pickle, queue), the
status and exabgp commands, the hub or the stream transports, and resolves an address given as
-r without a thread (docs/performance.md: idle memory per mode)."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

NEVER_FOR_A_PEER = ("cryptography", "redis", "ssl", "tomllib", "urllib", "dns", "icmplib",
                    "psutil", "pathlib", "logging.handlers", "pickle", "queue", "relay.cluster",
                    "relay.rtpproxy", "relay.announce", "relay.status", "relay.tunnel.server",
                    "relay.tunnel.controld", "relay.satp.archive", "relay.fastpath.hub",
                    "relay.tunnel.hubplane", "relay.transport.tcp",
                    "relay.transport.anycast_tcp", "relay.transport.framing",
                    "relay.transport.anycast_framing", "concurrent.futures.thread")
# The parser holds every option: these modules add relay mode's and the cluster's, and hold
# the defaults their help states; nothing of the modes themselves.
OPTIONS_ONLY = {"relay.cluster", "relay.cluster.cli", "relay.cluster.defaults",
                "relay.rtpproxy", "relay.rtpproxy.cli", "relay.rtpproxy.defaults"}
PEER = ("-r", "192.0.2.1", "-E", "secret", "-d", "tun9", "-n", "10.9.0.1/24")

PROBE = """
import json, sys
from relay import main
argv = sys.argv[1:]
main.keep_openssl_out(argv)
from relay import cli, node
node.build(cli.settings_from_args(cli.build_parser().parse_args(argv)))
print(json.dumps(sorted(m for m in sys.modules if sys.modules[m] is not None)))
"""

# The peer's resolution of -r as it runs when the tunnel starts (the device aside): the remote
# it sets, the threads alive then, the modules loaded.
RESOLVE = """
import asyncio, json, sys, threading
sys.modules["ssl"] = None
from relay import cli, node
services = node.build(cli.settings_from_args(cli.build_parser().parse_args(sys.argv[1:])))
peer = next(s for s in services if type(s).__name__ == "PeerEndpoint")

async def resolve():
    await peer._resolve_remote()
    return threading.active_count()

threads = asyncio.run(resolve())
conn = peer.table.get(peer.mux)
print(json.dumps({"remote": str(conn.remote), "threads": threads,
                  "modules": sorted(m for m in sys.modules if sys.modules[m] is not None)}))
"""

# Relay mode started and asked over its control socket: its modules load when configured.
RELAY = """
import asyncio, json, socket, sys
from relay import cli, node
services = node.build(cli.settings_from_args(cli.build_parser().parse_args(sys.argv[2:])))

async def ask():
    for s in services:
        await s.start()
    try:
        loop = asyncio.get_running_loop()
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        await loop.sock_connect(c, sys.argv[1])
        await loop.sock_sendall(c, b"VF 20040107\\n")
        reply = await asyncio.wait_for(loop.sock_recv(c, 100), 10)
        c.close()
        return reply.decode()
    finally:
        for s in reversed(services):
            await s.stop()

reply = asyncio.run(ask())
print(json.dumps({"reply": reply,
                  "modules": sorted(m for m in sys.modules if sys.modules[m] is not None)}))
"""


def _run(code: str, *argv: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[-1]


def loaded(*argv: str) -> set[str]:
    return set(json.loads(_run(PROBE, *argv)))


@functools.cache
def _at_startup() -> frozenset[str]:
    """What the interpreter holds before the daemon's first import (an editable install's
    finder brings pathlib and urllib): not the daemon's doing."""
    return frozenset(json.loads(_run("import json, sys; print(json.dumps(list(sys.modules)))")))


def _present(mods: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(x for x in mods - OPTIONS_ONLY - _at_startup() for m in names
                  if x == m or x.startswith(m + "."))


def test_a_point_to_point_tunnel_loads_none_of_the_other_modes() -> None:
    mods = loaded(*PEER)
    assert not _present(mods, NEVER_FOR_A_PEER)
    assert {"relay.tunnel.peer", "relay.transport.udp", "aarp.ops.logfmt"} <= mods


def test_an_address_as_remote_is_set_without_a_thread() -> None:
    got = json.loads(_run(RESOLVE, *PEER))
    assert got["remote"] == "192.0.2.1:4444"
    assert got["threads"] == 1
    assert not _present(set(got["modules"]), NEVER_FOR_A_PEER)


def test_a_name_as_remote_is_resolved_on_the_executor() -> None:
    try:
        want = socket.getaddrinfo("localhost", None, socket.AF_INET, socket.SOCK_DGRAM)
    except socket.gaierror:
        pytest.skip("localhost does not resolve on this host")
    got = json.loads(_run(RESOLVE, "-r", "localhost", "-4", "-E", "secret", "-d", "tun9"))
    assert got["remote"] == f"{want[0][4][0]}:4444"
    assert "concurrent.futures.thread" in got["modules"]


def test_a_server_loads_its_assembly() -> None:
    mods = loaded("-X", "127.0.0.1:2323", "-i", "192.0.2.10", "-s", "1", "-d", "tun9",
                  "-n", "10.9.0.1/24")
    assert {"relay.tunnel.server", "relay.tunnel.controld", "relay.satp.archive"} <= mods


def test_relay_mode_loads_and_answers(tmp_path: Path) -> None:
    control = tmp_path / "rtp.sock"
    got = json.loads(_run(RELAY, str(control), "--rtpproxy", f"unix:{control}",
                          "--rtp-address", "127.0.0.1", "--rtp-ports", "46000-46100",
                          "--control-socket", str(tmp_path / "ctl.sock")))
    assert got["reply"].strip() == "1"            # VF 20040107: the protocol is supported
    assert {"relay.rtpproxy.server", "relay.rtpproxy.sessions",
            "relay.rtpproxy.settings"} <= set(got["modules"])
    assert not _present(set(got["modules"]), ("relay.tunnel.peer", "relay.tunnel.server",
                                              "relay.tunnel.endpoint", "relay.cluster.handover"))


@pytest.mark.parametrize("argv", [["--sync", "redis://127.0.0.1:6379/0"]])
def test_tls_stays_available_when_the_cluster_may_need_it(argv: list[str]) -> None:
    from relay import main
    assert main.needs_tls(argv) and main.needs_tls(["--sync=rediss://h:6379"])
    assert not main.needs_tls(["-r", "192.0.2.1"])


def test_the_cluster_loads_when_configured(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text("00" * 32 + "\n")
    mods = loaded(*PEER, "--sync", "redis://127.0.0.1:6379/0", "--cluster-key-file", str(key))
    assert {"relay.cluster.settings", "relay.cluster.secrets", "relay.cluster.service"} <= mods
