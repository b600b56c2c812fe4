"""Demo chapter: aarp-resolve finds the server behind an anycast address, before and after the
route moves (kernel anycast via the echo's source, BGP-style via aarp-responder's answers)."""

from __future__ import annotations

import os
import sys

from demo.story import Story
from lab import AA4, AA6, AK6, AnycastLab, stop_process
from lab.services import wait_port

KEY = "d3" * 32  # a demo key; real deployments generate one (see docs/aarp.md)
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AARP_CONF": "/dev/null"}


def _resolve(lab: AnycastLab, *args: str, user: str | None = None) -> list[list[str]]:
    proc = lab.client.run([sys.executable, "-m", "aarp.cli.resolve", *args], check=False,
                          user=user, env=ENV)
    return [line.split() for line in proc.stdout.splitlines()]


def chapter_resolve(lab: AnycastLab, story: Story) -> None:
    story.chapter("AARP: which server is behind the anycast address?")
    procs = []
    for s in lab.servers:
        procs.append(s.popen([sys.executable, "-m", "aarp.cli.responder", "--anycast", AA6,
                              "--anycast", AA4, "--key", KEY, "--key-id", "1"], env=ENV))
    try:
        for s in lab.servers:
            wait_port(s, 4445, "udp")
        story.say(f"aarp-responder runs on both servers for {AA6} and {AA4} (signed answers)")
        for target in (1, 2):
            lab.move(target)
            server = lab.server(target)
            story.say(f"route for the anycast prefixes -> {server.name}")
            lines = _resolve(lab, AK6)
            got = lines[0][0] if lines else "nothing"
            story.check(got == server.ip6,
                        f"kernel anycast {AK6} -> {got} (the echo reply's source)",
                        f"kernel anycast {AK6} resolved to {got}, expected {server.ip6}")
            lines = _resolve(lab, "--key", KEY, "--key-id", "1", AA6, AA4)
            got6, got4 = (lines + [["nothing"]] * 2)[:2]
            story.check(got6[0] == server.ip6 and got4[0] == server.ip4,
                        f"BGP-style {AA6} -> {got6[0]}, {AA4} -> {got4[0]} "
                        f"({' '.join(got6[2:])})",
                        f"BGP-style resolved to {got6[0]} / {got4[0]}, expected "
                        f"{server.ip6} / {server.ip4}")
        lines = _resolve(lab, AA6, user="nobody")
        got = lines[0][0] if lines else "nothing"
        story.check(got == lab.server(2).ip6,
                    f"as user nobody (no ICMP socket) over UDP: {AA6} -> {got}",
                    f"unprivileged resolution gave {got}")
    finally:
        for proc in procs:
            stop_process(proc)
        lab.move(1)
