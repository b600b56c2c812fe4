"""raise_open_files: the soft open-file limit goes up as far as the hard one allows, never down."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import resource, sys
from relay.runtime.fdlimit import raise_open_files
resource.setrlimit(resource.RLIMIT_NOFILE, (100, 300))
print(raise_open_files(200), raise_open_files(50), raise_open_files(10_000),
      resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_raises_to_what_is_needed_then_stops_at_the_hard_limit() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split(maxsplit=3)
    assert out[:3] == ["200", "200", "300"]
    assert out[3].strip() == "(300, 300)"


STREAMS = """
import asyncio, resource
from relay.transport.anycast_tcp import AnycastTcpTransport
from relay.transport.tcp import TcpTransport
resource.setrlimit(resource.RLIMIT_NOFILE, (300, 400))

async def main():
    out = []
    for t in (TcpTransport(listen=("127.0.0.1", 0)), AnycastTcpTransport(listen=("127.0.0.1", 0))):
        await t.open(lambda *a: None)
        out.append(t.status()["max_streams"])
        await t.close()
    print(*out)
asyncio.run(main())
"""


def test_both_stream_transports_hold_no_more_streams_than_the_fd_limit_allows() -> None:
    """Plain and anycast TCP alike: two fds per stream, 256 kept free (400 hard -> 72)."""
    out = subprocess.run([sys.executable, "-c", STREAMS], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["72", "72"]
