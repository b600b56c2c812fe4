"""`make demo` chapter: a tunnel and a download survive an anycast route move between nodes."""

from __future__ import annotations

import subprocess
import sys
import time

from demo.story import Story
from lab import AA4, AnycastLab
from lab.netns import stop_process
from lab.services import make_blob, wait_port

REDIS_PORT = 6391


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def chapter_cluster(lab: AnycastLab, story: Story) -> None:
    story.chapter("Cluster: two anytun-relay nodes share state through Redis; a tunnel and a "
                  "download survive the route move")
    procs: list[subprocess.Popen] = []
    host = lab.hosts[0]
    try:
        procs.append(host.popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
                                 "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                 "--dir", str(story.workdir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(host, REDIS_PORT)
        story.say(f"redis-server on {host.name} ({host.ip4}:{REDIS_PORT})")
        for j in (1, 2):
            conns = "".join(f'[[connection]]\nmux = {m}\npassphrase = "demo-{m}"\n'
                            f'routes = ["10.9.{m}.0/24"]\n\n' for m in (1, 2))
            path = story.workdir / f"cluster-s{j}.toml"
            path.write_text(f'[node]\ninterface = "{AA4}"\nsender_id = {j}\n'
                            f'device_name = "tunc"\nifconfig = ["10.9.0.1/16"]\n\n'
                            f'[defaults]\nrole = "server"\n\n{conns}')
            procs.append(lab.server(j).popen(
                [sys.executable, "-m", "relay", "-D", "-L", "stderr:3", "--config",
                 str(path), "--sync", f"redis://{host.ip4}:{REDIS_PORT}/0", "--sync-node",
                 f"s{j}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for m in (1, 2):
            c = lab.clients[m - 1]
            procs.append(c.popen(["uanytun", "-D", "-L", "stderr:2", "-m", str(m), "-E",
                                  f"demo-{m}", "-e", "client", "-r", AA4, "-d", "tunc", "-n",
                                  f"10.9.{m}.2/16"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL))
        up = all(_wait(lambda c=c: c.run(["ping", "-c1", "-W1", "10.9.0.1"],
                                         check=False).returncode == 0, 20)
                 for c in lab.clients[:2])
        story.check(up, f"both uanytun clients reach the anycast tunnel address via {AA4}",
                    "the clients do not reach the tunnel")
        blob = make_blob(story.workdir / "www" / "big", 3_000_000)
        web = lab.clients[1].popen([sys.executable, "-m", "http.server", "--bind", "10.9.2.2",
                                    "--directory", str(blob.parent), "8080"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(web)
        wait_port(lab.clients[1], 8080)
        lab.limit(lab.clients[0], "6mbit")
        out = story.workdir / "got"
        dl = lab.clients[0].popen(["curl", "-sS", "--max-time", "60", "-o", str(out),
                                   "http://10.9.2.2:8080/big"])
        ping = lab.clients[0].popen(["ping", "-n", "-i", "0.05", "-c", "80", "-W", "1",
                                     "10.9.2.2"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        story.say("client 1 downloads 3 MB from client 2 through the tunnel; moving the "
                  "anycast route to node 2")
        lab.move(2)
        time.sleep(1.5)
        story.say("moving it back to node 1")
        lab.move(1)
        rc = dl.wait(90)
        text, _ = ping.communicate(timeout=30)
        lab.unlimit(lab.clients[0])
        same = out.exists() and out.read_bytes() == blob.read_bytes()
        story.check(rc == 0 and same, "the download completed intact across both moves",
                    f"the download failed (curl exit {rc}, intact {same})")
        line = next((ln for ln in text.splitlines() if "received" in ln), "")
        story.say(f"pings every 50 ms during the moves: {line.strip()}")
    finally:
        lab.unlimit(lab.clients[0])
        lab.move(1)
        for p in reversed(procs):
            stop_process(p)
