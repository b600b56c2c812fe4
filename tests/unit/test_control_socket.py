"""The node's control socket under abuse: long lines, garbage and many silent connections get
one-line answers or are evicted, and `status` keeps working (real Unix sockets)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from relay.runtime import control
from relay.runtime.control import ControlServer


async def _ask(path: str, data: bytes) -> dict:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return json.loads(reply)


def test_long_lines_garbage_and_silent_floods_are_bounded(tmp_path: Path) -> None:
    async def run() -> None:
        path = str(tmp_path / "ctl.sock")
        srv = ControlServer(lambda: "x", lambda: {"ok": "status"}, path=path)
        await srv.start()
        try:
            huge = await _ask(path, b"s" * 100_000)  # no newline: used to raise in the handler
            assert "longer than" in huge["error"]
            assert "unknown command" in (await _ask(path, b"\xff\x00garbage\n"))["error"]
            silent = [await asyncio.open_unix_connection(path)
                      for _ in range(control.MAX_CLIENTS + 20)]
            await asyncio.sleep(0.1)
            assert len(srv.waiting) <= control.MAX_CLIENTS
            assert srv.waiting.evicted >= 20
            assert await _ask(path, b"status\n") == {"ok": "status"}  # the operator still gets in
            evicted = silent[0][0]
            assert await asyncio.wait_for(evicted.read(), 2) == b""  # closed by the node
            for _, w in silent:
                w.close()
            assert srv.status()["refused"] == 1
        finally:
            await srv.stop()

    asyncio.run(run())
