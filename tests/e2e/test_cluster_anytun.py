"""anytun's sync protocol against the real anytun: our connector reads a real `anytun -S`
listener, a real `anytun -M` reads our listener and re-announces what it adopted, and a mixed
cluster (real anytun + anytun-relay) carries a uanytun client across route moves both ways."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lab import AA4
from tests.conftest import require_program
from tests.e2e import tunnel_util as tu

pytestmark = pytest.mark.e2e

PROBE = textwrap.dedent("""
    import asyncio, sys
    from relay.satp.archive import ConnectionMessage, RouteMessage
    from relay.cluster.anytun_sync_io import SyncConnector, SyncListener

    ours = [ConnectionMessage(5, 1, 128, b"s" * 14, b"k" * 16, 32, 1234, "10.0.0.9", 4444),
            RouteMessage(24, 0, "10.99.5.0", 5)]
    update = ConnectionMessage(5, 1, 128, b"s" * 14, b"k" * 16, 32, 2000, "10.0.0.10", 4445)

    async def until(cond, what):
        for _ in range(200):
            if cond():
                return
            await asyncio.sleep(0.05)
        sys.exit(f"timeout: {what}")

    async def main():
        listener = SyncListener(2399, "127.0.0.1", lambda: ours)
        await listener.start()
        anytun = await asyncio.create_subprocess_exec(
            "anytun", "-D", "-L", "stdout:3", "-i", "127.0.0.1", "-p", "4444", "-t", "tun",
            "-d", "tunq", "-n", "10.99.0.1/24", "-S", "2323", "-I", "127.0.0.1",
            "-M", "127.0.0.1:2399", "-s", "2", "-k", "aes-ctr",
            stdout=asyncio.subprocess.DEVNULL)
        await until(lambda: listener.status()["clients"], "anytun -M connects to us")
        await asyncio.sleep(0.3)
        listener.push([update])   # a change after the dump
        await asyncio.sleep(0.5)
        got = []
        conn = SyncConnector([("127.0.0.1", 2323)], lambda m, p: got.append(m), retry=0.2)
        await conn.start()
        await until(lambda: len(got) >= 2, "anytun -S dumps its tables to us")
        await conn.stop()
        anytun.terminate()
        await anytun.wait()
        await listener.stop()
        print(repr(got))
        assert got == [update, ours[1]], got

    asyncio.run(main())
""")


def test_real_anytun_adopts_our_messages_and_dumps_them_back(lab_factory) -> None:
    require_program("anytun")
    lab = lab_factory(servers=1, clients=1)
    out = lab.server(1).run([sys.executable, "-c", PROBE], check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_connector_survives_garbage_and_a_dead_peer(lab_factory) -> None:
    lab = lab_factory(servers=1, clients=1)
    code = textwrap.dedent("""
        import asyncio, sys
        from relay.cluster.anytun_sync_io import SyncConnector

        async def serve(reader, writer):
            writer.write(b"00012 hello world!")
            await writer.drain()
            await asyncio.sleep(5)

        async def main():
            server = await asyncio.start_server(serve, "127.0.0.1", 2398)
            got = []
            c = SyncConnector([("127.0.0.1", 2398), ("127.0.0.1", 2397)],
                              lambda m, p: got.append(m), retry=0.1)
            await c.start()
            for _ in range(100):
                if c.errors >= 2:
                    break
                await asyncio.sleep(0.05)
            st = c.status()
            await c.stop()
            server.close()
            assert c.errors >= 2 and not got, st
            assert st["peers"] == {"127.0.0.1:2398": False, "127.0.0.1:2397": False} \\
                or st["peers"]["127.0.0.1:2397"] is False, st
            print("ok", st)

        asyncio.run(main())
    """)
    out = lab.server(1).run([sys.executable, "-c", code], check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


MIXED_NODE = """[node]
interface = "{aa}"
sender_id = 2
device_name = "tun7"
ifconfig = ["10.8.0.1/16"]

[defaults]
role = "server"

[[connection]]
mux = 1
passphrase = "mixed-pass"
routes = ["10.8.1.0/24"]
"""


def _pings(node, addr: str, seconds: float) -> subprocess.Popen:
    return node.popen(["ping", "-n", "-i", "0.05", "-c", str(int(seconds / 0.05)), "-W", "1",
                       addr], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lost(proc: subprocess.Popen) -> tuple[int, int]:
    out, _ = proc.communicate(timeout=60)
    line = next(ln for ln in out.splitlines() if "received" in ln)
    sent, got = int(line.split()[0]), int(line.split(",")[1].split()[0])
    return sent - got, sent


def test_mixed_cluster_real_anytun_and_anytun_relay(lab_factory, tmp_path: Path) -> None:
    """A real anytun (node 1) and anytun-relay (node 2) share one anycast endpoint through
    anytun's own sync protocol; a uanytun client fails over between them both ways.

    anytun gets -m (without it, it stamps MUX 0 on its replies), both nodes the server (left)
    role against the client's right, and their own sender IDs; uanytun keeps a replay window
    (-w) per sender ID, so the two nodes' independent seqs never look like replays."""
    require_program("anytun")
    require_program("uanytun")
    lab = lab_factory(servers=2, clients=1)
    s1, s2, c = lab.server(1), lab.server(2), lab.clients[0]
    conf = tmp_path / "s2.toml"
    conf.write_text(MIXED_NODE.format(aa=AA4))
    procs = [
        tu.start(s1, tu.anytun("-i", AA4, "-p", "4444", "-s", "1", "-d", "tun7", "-t", "tun",
                               "-n", "10.8.0.1/16", "-m", "1", "-E", "mixed-pass", "-e", "left",
                               "-R", "10.8.1.0/24", "-S", "2323", "-I", s1.ip4,
                               "-M", f"{s2.ip4}:2323"), "tun7", "10.8.0.1"),
        tu.start(s2, tu.relay("--config", str(conf), "-S", "2323", "-I", s2.ip4,
                              "-M", f"{s1.ip4}:2323"), "tun7", "10.8.0.1"),
    ]
    try:
        tu.wait_for(lambda: s2.run([*tu.RELAY, "status", "tun7"], check=False,
                                   timeout=20).returncode == 0, 10, "node 2's control socket")
        procs.append(tu.start(c, tu.uanytun("-m", "1", "-E", "mixed-pass", "-e", "right",
                                            "-w", "64", "-r", AA4, "-d", "tun8",
                                            "-n", "10.8.1.2/16"), "tun8", "10.8.1.2"))
        tu.ping_until(c, "10.8.0.1", timeout=15)    # through anytun on node 1

        def relay_conn() -> dict:
            return next(x for x in tu.tunnel_status(s2, "tun7")["connections"] if x["mux"] == 1)

        # anytun told node 2 where the client is, over its sync protocol
        tu.wait_for(lambda: relay_conn()["remote"] == f"{c.ip4}:4444" or
                    (relay_conn()["remote"] or "").startswith(f"{c.ip4}:"), 15,
                    "the client's endpoint on node 2 via anytun sync")
        assert relay_conn()["rx_packets"] == 0
        peers = tu.status(s2, "tun7")["cluster"]["anytun_peers"]["peers"]
        assert peers == {f"{s1.ip4}:2323": True}, peers
        results = []
        for to in (2, 1):   # anytun -> anytun-relay, then anytun-relay -> anytun
            rx = relay_conn()["rx_packets"]
            pings = _pings(c, "10.8.0.1", 2.5)
            time.sleep(1.2)
            lab.move(to)
            results.append(_lost(pings))
            moved = relay_conn()["rx_packets"] - rx
            # about half of the pings went through anytun-relay, before or after the move
            assert 15 <= moved <= 35, f"{moved} of 50 pings through node 2"
    finally:
        lab.move(1)
        logs = [tu.stop(p) for p in reversed(procs)]
    print(f"mixed cluster: lost {results[0][0]} of {results[0][1]} pings moving from anytun to "
          f"anytun-relay, {results[1][0]} of {results[1][1]} moving back")
    for lost, sent in results:
        assert lost <= 2, f"{lost} of {sent} pings lost in a mixed-cluster failover"
    assert "keys travel in clear" in logs[1] or "in clear" in logs[1], logs[1][-2000:]
