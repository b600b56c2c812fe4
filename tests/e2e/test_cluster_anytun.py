"""anytun's sync protocol against the real anytun: our connector reads a real `anytun -S`
listener, a real `anytun -M` reads our listener and re-announces what it adopted."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tests.conftest import require_program

pytestmark = pytest.mark.e2e

PROBE = textwrap.dedent("""
    import asyncio, sys
    from relay.cluster.anytun_sync import ConnectionMessage, RouteMessage
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
