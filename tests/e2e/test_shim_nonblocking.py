"""Non-blocking calls through libaarp.so never wait longer than nonblock_wait_ms, whatever
the probe does: an asyncio program keeps its loop ticking while it connects to a silent
anycast address; the first connection goes unpinned when the answer is late and the next ones
are pinned; the library's own probe sockets survive close_range(), closefrom() and close()
loops of the program."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from lab import AA4, AA6, AnycastLab
from tests.c.support import (
    WHOAMI_PORT,
    build,
    log_lines,
    preloaded,
    start_responders,
    start_whoami,
)

pytestmark = pytest.mark.e2e
PORT = str(WHOAMI_PORT)

SILENCE = """table inet aarptest {
  chain input { type filter hook input priority 0;
    icmpv6 type echo-request drop
    icmp type echo-request drop
    udp dport 4445 drop
  }
}"""

# An asyncio program timing its own loop while it opens connections; prints JSON.
LOOP = r"""
import asyncio, json, socket, sys, time
aa, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    loop = asyncio.get_running_loop()
    lag, stop = [0.0], False
    async def ticker():
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            lag[0] = max(lag[0], now - last - 0.001)
            last = now
    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    names, calls = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET6 if ":" in aa else socket.AF_INET)
        s.setblocking(False)
        t0 = time.monotonic()
        try:
            s.connect((aa, port))
        except BlockingIOError:
            pass
        calls.append(time.monotonic() - t0)
        await loop.sock_connect(s, (aa, port))
        names.append((await loop.sock_recv(s, 64)).decode())
        s.close()
        t0 = time.monotonic()
        u = socket.socket(socket.AF_INET6 if ":" in aa else socket.AF_INET, socket.SOCK_DGRAM)
        u.setblocking(False)
        u.sendto(b"q", (aa, port))
        calls.append(time.monotonic() - t0)
        u.close()
        await asyncio.sleep(0.3)
    stop = True
    await tick
    print(json.dumps({"lag": lag[0], "calls": calls, "names": names}))
asyncio.run(main())
"""


def _loop(lab: AnycastLab, aa: str, n: int, **aarp: str) -> tuple[dict, list[str]]:
    out = lab.client.run(preloaded([sys.executable, "-c", LOOP, aa, PORT, str(n)],
                                   AARP_LOG="debug", **aarp),
                         check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout), log_lines(out.stderr)


def test_a_silent_address_never_stalls_an_event_loop(lab: AnycastLab) -> None:
    start_whoami(lab)
    lab.server(1).run(["nft", "-f", "-"], input=SILENCE)
    # A probe may take 2 x 5 s here; every non-blocking call returns at once regardless.
    got, log = _loop(lab, AA6, 3, AARP_TIMEOUT_MS="5000", AARP_NONBLOCK_WAIT_MS="20")
    assert got["names"] == ["s1"] * 3, got  # to AA unchanged: routing picks s1
    assert max(got["calls"]) < 0.2, got  # default bound 20 ms; generous margin under load
    assert got["lag"] < 0.2, got
    assert any("no answer within nonblock_wait_ms (the probe goes on)" in ln for ln in log), log
    assert sum("query 1 sent" in ln for ln in log) == 1, log  # one probe, in the background


def test_late_first_answer_then_pinned(lab: AnycastLab) -> None:
    """nonblock_wait_ms = 0: the first connection cannot wait at all and goes to AA; the probe
    finishes in the background, and the next connections are pinned (after a move, too)."""
    start_whoami(lab)
    start_responders(lab)
    got, log = _loop(lab, AA4, 1, AARP_NONBLOCK_WAIT_MS="0")
    assert got["names"] == ["s1"], got
    assert any("connect fd" in ln and "no answer within nonblock_wait_ms" in ln
               for ln in log), log
    # a longer run: the first unpinned, then the cache pins everything, also after a move
    proc = lab.client.popen(preloaded([sys.executable, "-c", LOOP, AA4, PORT, "12"],
                                      AARP_LOG="debug", AARP_NONBLOCK_WAIT_MS="0"))
    assert proc.stdout is not None
    time.sleep(1.2)
    lab.move(2)
    out, err = proc.communicate(timeout=60)
    got = json.loads(out)
    log = log_lines(err.decode())
    assert got["names"][-1] == "s1", got  # pinned: the move does not change the server
    assert any(f"-> {lab.server(1).ip4} (cache hit)" in ln for ln in log), log


def test_fast_answers_pin_the_first_nonblocking_connection(lab: AnycastLab) -> None:
    start_whoami(lab)
    start_responders(lab)
    got, log = _loop(lab, AA6, 1, AARP_NONBLOCK_WAIT_MS="1000")
    assert got["names"] == ["s1"], got
    assert any("connect fd" in ln and f"-> {lab.server(1).ip6} (probe" in ln
               for ln in log), log


SLOW_RESPONDER = r"""
import socket, sys, time
from aarp import message as m
aa, ua = sys.argv[1:3]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
s.bind((aa, 4445))
print("ready", flush=True)
while True:
    data, src = s.recvfrom(2048)
    time.sleep(0.5)  # the program closes descriptors meanwhile
    s.sendto(m.encode_answer(m.decode_query(data).nonce, aa, 60, unicast6=ua), src)
"""


@pytest.mark.parametrize("how", ["close_range", "closefrom", "close"])
def test_wholesale_closes_spare_the_probe(lab: AnycastLab, how: str) -> None:
    start_whoami(lab)
    node = lab.server(1)
    proc = node.popen([sys.executable, "-c", SLOW_RESPONDER, AA6, node.ip6],
                      env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])))
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    prog = build("closers")
    out = lab.client.run(preloaded([str(prog), AA6, PORT, "s1", how], AARP_LOG="debug",
                                   AARP_METHOD="udp", AARP_TIMEOUT_MS="2000"),
                         check=False, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
    log = log_lines(out.stderr)
    assert any(f"-> {node.ip6} (probe: UDP answer)" in ln for ln in log), log
    assert not any("receive" in ln and "Bad file descriptor" in ln for ln in log), log
