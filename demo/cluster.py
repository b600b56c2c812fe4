"""`make demo` chapter: two anytun-relay nodes share state through Redis and announce the
anycast prefixes over BGP (BIRD 2 on the router, ExaBGP on each node, fed by the node's
health). Node 1 is drained (withdrawn, BIRD picks node 2) and later killed with SIGKILL (its
announcement dies with the hold timer); a tunnel and a download go on across both."""

from __future__ import annotations

import subprocess
import sys
import time

from demo.story import Story
from lab import AA4, AnycastLab
from lab.bgp import BgpFabric, BgpSettings
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


def _node(lab: AnycastLab, story: Story, j: int, redis: str) -> subprocess.Popen:
    conns = "".join(f'[[connection]]\nmux = {m}\npassphrase = "demo-{m}"\n'
                    f'routes = ["10.9.{m}.0/24"]\n\n' for m in (1, 2))
    path = story.workdir / f"cluster-s{j}.toml"
    path.write_text(f'[node]\ninterface = "{AA4}"\nsender_id = {j}\n'
                    f'device_name = "tunc"\nifconfig = ["10.9.0.1/16"]\n\n'
                    f'[defaults]\nrole = "server"\n\n{conns}')
    node = lab.server(j)
    proc = node.popen([sys.executable, "-m", "relay.cli", "-D", "-L", "stderr:3", "--config",
                       str(path), "--sync", redis, "--sync-node", f"s{j}"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(lambda: node.run([sys.executable, "-m", "relay.cli", "health", "tunc"],
                           check=False).returncode == 0, 20)
    return proc


def _transfer(lab: AnycastLab, story: Story, blob, name: str, during) -> None:
    """Client 1 downloads `blob` from client 2 through the tunnel, pinging every 50 ms,
    while `during()` happens; the download must arrive intact."""
    out = story.workdir / name
    dl = lab.clients[0].popen(["curl", "-sS", "--max-time", "90", "-o", str(out),
                               "http://10.9.2.2:8080/big"])
    ping = lab.clients[0].popen(["ping", "-n", "-i", "0.05", "-W", "1", "10.9.2.2"],
                                stdout=subprocess.PIPE, text=True)
    time.sleep(0.8)
    during()
    rc = dl.wait(120)
    ping.send_signal(2)
    text, _ = ping.communicate(timeout=30)
    same = out.exists() and out.read_bytes() == blob.read_bytes()
    story.check(rc == 0 and same, "the download completed intact",
                f"the download failed (curl exit {rc}, intact {same})")
    line = next((ln for ln in text.splitlines() if "received" in ln), "")
    story.say(f"pings every 50 ms meanwhile: {line.strip()}")


def chapter_cluster(lab: AnycastLab, story: Story) -> None:
    story.chapter("Cluster: two anytun-relay nodes share state through Redis and announce the "
                  "anycast prefixes over BGP; drain and failure of node 1")
    procs: list[subprocess.Popen] = []
    host = lab.hosts[0]
    fabric: BgpFabric | None = None
    try:
        procs.append(host.popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
                                 "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                 "--dir", str(story.workdir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(host, REDIS_PORT)
        redis = f"redis://{host.ip4}:{REDIS_PORT}/0"
        story.say(f"redis-server on {host.name} ({host.ip4}:{REDIS_PORT})")
        nodes = {j: _node(lab, story, j, redis) for j in (1, 2)}
        procs += nodes.values()
        fabric = BgpFabric(lab, story.workdir / "bgp", BgpSettings(hold=3))
        for j in (1, 2):  # ExaBGP announces while `anytun-relay health` says the node is fine
            fabric.start_speaker(j, ["--check-relay", "tunc"])
            if j == 1:
                fabric.wait_paths(1)
        story.check(fabric.paths() == {1} and fabric.established(2),
                    "BIRD on the router has both nodes' announcements and routes the anycast "
                    "prefixes to node 1", f"the router routes to {fabric.paths()}")
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

        def drain() -> None:
            story.say("client 1 downloads 3 MB from client 2 through the tunnel; "
                      "`anytun-relay drain` on node 1")
            out = lab.server(1).run([sys.executable, "-m", "relay.cli", "drain", "--timeout",
                                     "20", "tunc"], check=False, timeout=40)
            story.say(f"drain: {out.stdout.strip() or out.stderr.strip()}")
            story.check(fabric is not None and fabric.paths() == {2},
                        "node 1 withdrew its prefixes; BIRD routes them to node 2",
                        "the route did not move to node 2")
        _transfer(lab, story, blob, "got-drain", drain)
        story.check(nodes[1].wait(10) == 0, "node 1 stopped after the drain",
                    "node 1 did not stop")
        fabric.stop_speaker(1)
        nodes[1] = _node(lab, story, 1, redis)
        procs.append(nodes[1])
        fabric.start_speaker(1, ["--check-relay", "tunc"])
        fabric.wait_paths(1)
        story.say("node 1 is back: it announces again and BIRD prefers it")

        def kill() -> None:
            story.say("client 1 downloads again; node 1 dies by SIGKILL (power lost: "
                      "nothing tells the router)")
            t0 = time.monotonic()
            assert fabric is not None
            fabric.crash(1, nodes[1])
            fabric.wait_paths(2, timeout=15)
            story.say(f"the hold timer expired: BIRD routes to node 2 after "
                      f"{time.monotonic() - t0:.1f}s")
        _transfer(lab, story, blob, "got-kill", kill)
    finally:
        lab.unlimit(lab.clients[0])
        if fabric is not None:
            fabric.close()
        lab.move(1)
        for p in reversed(procs):
            stop_process(p)
