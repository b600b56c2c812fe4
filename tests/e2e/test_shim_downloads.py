"""Downloads that survive an anycast route move only with libaarp.so preloaded.

One lab, one route move: eight clients download at the same time, five through the library
(curl over BGP-style IPv6 and IPv4 anycast and over kernel anycast, wget, Python's urllib) and
three without it (the control). After the move, the library's downloads complete from the
server they started on, byte for byte; the others break."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import AA4, AA6, AK6
from lab.services import make_blob, serve_http
from tests.c.support import log_lines, preloaded, start_responders
from tests.conftest import require_program

pytestmark = pytest.mark.e2e

SIZE = 1_500_000  # at 4 Mbit/s: about 3 s, so the move after 1 s falls in the middle
RATE = "4mbit"

URLLIB = ("import sys, urllib.request\n"
          "data = urllib.request.urlopen(sys.argv[1], timeout=30).read()\n"
          "open(sys.argv[2], 'wb').write(data)\n")


def _curl(url: str, out: Path) -> list[str]:
    return ["curl", "-sS", "-g", "--max-time", "60", "-o", str(out), url]


def _wget(url: str, out: Path) -> list[str]:
    # --tries=1: a retry would resume from the new server and hide the break.
    return ["wget", "-q", "--tries=1", "--timeout=30", "-O", str(out), url]


def _urllib(url: str, out: Path) -> list[str]:
    return [sys.executable, "-c", URLLIB, url, str(out)]


def test_downloads_survive_a_route_move_only_with_the_library(lab_factory, tmp_path: Path):
    require_program("curl")
    require_program("wget")
    lab = lab_factory(servers=2, clients=8)
    for node in lab.servers:
        make_blob(tmp_path / node.name / "big", SIZE)
        serve_http(node, tmp_path / node.name)
    start_responders(lab)
    aa6, aa4, ak6 = f"http://[{AA6}]/big", f"http://{AA4}/big", f"http://[{AK6}]/big"
    plan = [  # (label, downloader, url, through the library?)
        ("curl IPv6 BGP-style", _curl, aa6, True),
        ("curl IPv6 kernel anycast, LD_BIND_NOW=1", _curl, ak6, True),
        ("curl IPv4", _curl, aa4, True),
        ("wget IPv4", _wget, aa4, True),
        ("urllib IPv6", _urllib, aa6, True),
        ("curl IPv6 without the library", _curl, aa6, False),
        ("wget IPv4 without the library", _wget, aa4, False),
        ("urllib IPv6 without the library", _urllib, aa6, False),
    ]
    procs = []
    for i, ((label, tool, url, lib), node) in enumerate(zip(plan, lab.clients, strict=True)):
        lab.limit(node, RATE)
        out = tmp_path / f"out{i}"
        cmd = tool(url, out)
        extra = {"LD_BIND_NOW": "1"} if "BIND_NOW" in label else {}
        argv = preloaded(cmd, AARP_LOG="debug", **extra) if lib else cmd
        procs.append((label, lib, out, node.popen(argv, stdout=subprocess.DEVNULL)))
    time.sleep(1.0)
    for label, _, _, proc in procs:
        assert proc.poll() is None, f"{label} ended before the route move; raise SIZE"
    lab.move(2)
    expected = (tmp_path / "s1" / "big").read_bytes()
    for label, lib, out, proc in procs:
        proc.wait(90)
        stderr = proc.stderr.read().decode(errors="replace")
        intact = proc.returncode == 0 and out.exists() and out.read_bytes() == expected
        if lib:
            assert intact, f"{label}: exit {proc.returncode}: {stderr[-2000:]}"
            assert any("->" in ln and "(probe" in ln for ln in log_lines(stderr)), stderr
        else:
            assert not intact, f"{label} survived the route move without the library"
