"""Demo chapter: libaarp.so keeps a download alive across an anycast route move.

Two clients fetch the same file from the anycast address at the same time, one through the
preload library and one without it; halfway through, routing sends the anycast prefix to the
other server. The library's download finishes from the server it started on; the other breaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from aarp import shim
from demo.story import Story
from lab import AA6, AnycastLab, stop_process
from lab.services import make_blob, wait_port

HTTP_PORT = 8446
SIZE = 1_500_000
ANYCAST = "fd00:aa::/64, 10.255.0.0/24, fd00:ab::/64"


def _responders(lab: AnycastLab) -> list[subprocess.Popen]:
    """aarp-responder on every server that does not run one yet (another chapter may)."""
    started = []
    exe = str(Path(sys.executable).parent / "aarp-responder")
    for node in lab.servers:
        if node.run(["ss", "-H", "-uln", "sport = :4445"], check=False).stdout.strip():
            continue
        started.append(node.popen([exe, "--anycast", AA6],
                                  env=dict(os.environ, AARP_CONF="/dev/null")))
    for node in lab.servers:
        wait_port(node, 4445, "udp")
    return started


def chapter_shim(lab: AnycastLab, story: Story) -> None:
    story.chapter("libaarp.so: a download that survives an anycast route move")
    lab.move(1)
    www = story.workdir / "shim-www"
    servers = []
    for node in lab.servers:
        make_blob(www / node.name / "big", SIZE)
        servers.append(node.popen([sys.executable, "-m", "http.server", "--bind", "::",
                                   "--directory", str(www / node.name), str(HTTP_PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(node, HTTP_PORT)
    servers += _responders(lab)
    with_lib, without = lab.clients[0], lab.clients[1]
    url = f"http://[{AA6}]:{HTTP_PORT}/big"
    try:
        for node in (with_lib, without):
            lab.limit(node, "4mbit")
        story.say(f"aarp-responder runs on every server; both clients download {url} "
                  f"({SIZE // 1000} kB at 4 Mbit/s)")
        story.say(f"{with_lib.name}: LD_PRELOAD={shim.library_path().name} curl ...   "
                  f"{without.name}: curl ... (no library)")
        out_lib, out_plain = story.workdir / "shim-with", story.workdir / "shim-without"
        curl = ["curl", "-sS", "-g", "--max-time", "60", "-o"]
        p_lib = with_lib.popen(["env", f"LD_PRELOAD={shim.library_path()}",
                                "AARP_CONF=/dev/null", f"AARP_ANYCAST={ANYCAST}",
                                "AARP_LOG=debug", *curl, str(out_lib), url])
        p_plain = without.popen([*curl, str(out_plain), url])
        time.sleep(1.0)
        lab.move(2)
        story.say("route moved: the anycast prefix now leads to s2")
        p_lib.wait(90)
        p_plain.wait(90)
        log = (p_lib.stderr.read() if p_lib.stderr else b"").decode(errors="replace")
        pinned = next((ln.split("debug: ", 1)[1] for ln in log.splitlines()
                       if "connect fd" in ln and "->" in ln), "no rewrite logged")
        story.say(f"library's decision: {pinned}")
        expected = (www / "s1" / "big").read_bytes()
        ok = p_lib.returncode == 0 and out_lib.exists() and out_lib.read_bytes() == expected
        story.check(ok, f"{with_lib.name} with libaarp.so: complete and identical to s1's file",
                    f"{with_lib.name} with libaarp.so failed (exit {p_lib.returncode}): "
                    f"{log[-500:]}")
        broken = p_plain.returncode != 0 or not out_plain.exists() or \
            out_plain.read_bytes() != expected
        story.check(broken, f"{without.name} without the library: broken by the move "
                    f"(exit {p_plain.returncode}), as anycast TCP always is",
                    f"{without.name} without the library survived; the lab did not move")
    finally:
        for proc in servers:
            stop_process(proc)
        for node in (with_lib, without):
            lab.unlimit(node)
        lab.move(1)
