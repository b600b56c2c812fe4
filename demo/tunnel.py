"""`make demo` chapters of the tunnel endpoint: anytun-relay and the real uanytun talk SATP."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

from demo.story import Story
from lab import AA4, AnycastLab, Node
from lab.netns import stop_process

RELAY = [sys.executable, "-m", "relay"]


def _wait_dev(node: Node, dev: str, proc: subprocess.Popen, timeout: float = 15,
              addr: str = "10.") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        out = node.run(["ip", "-br", "addr", "show", "dev", dev], check=False).stdout
        if addr in out:
            return True
        time.sleep(0.1)
    return False


def _ping(node: Node, addr: str, count: int = 3) -> int:
    out = node.run(["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", addr],
                   check=False).stdout
    return next((int(ln.split(",")[1].split()[0]) for ln in out.splitlines()
                 if "received" in ln), 0)


def _status(node: Node, dev: str) -> dict:
    out = node.run([*RELAY, "status", "--json", dev], check=False).stdout
    try:
        return json.loads(out)["tunnel"]
    except (ValueError, KeyError):
        return {}


SINK = ("import socket,hashlib;s=socket.create_server(('10.9.0.1',5001));print('ready',"
        "flush=True);c,_=s.accept();h=hashlib.sha256();n=0\n"
        "while (b:=c.recv(65536)):\n h.update(b);n+=len(b)\nprint(n,h.hexdigest())")


def chapter_tunnel(lab: AnycastLab, story: Story) -> None:
    story.chapter("anytun-relay and uanytun: one SATP tunnel to the anycast address")
    server, client = lab.server(1), lab.client
    lab.move(1)
    relay = server.popen([*RELAY, "-D", "-L", "stderr:3", "-i", AA4, "-d", "tun7",
                          "-n", "10.9.0.1/24", "-E", "demo passphrase", "-e", "server"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer = client.popen(["uanytun", "-D", "-L", "stderr:3", "-r", AA4, "-d", "tun8",
                         "-n", "10.9.0.2/24", "-E", "demo passphrase", "-e", "client"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok = _wait_dev(server, "tun7", relay) and _wait_dev(client, "tun8", peer)
        story.check(ok, f"anytun-relay on {server.name} listens on the anycast address {AA4}; "
                    f"uanytun on {client.name} (the real program, unchanged) points at it",
                    "a tunnel daemon did not come up")
        for _ in range(20):
            if _ping(client, "10.9.0.1", 1):
                break
        got = _ping(client, "10.9.0.1", 3)
        story.check(got == 3, f"ping through the tunnel uanytun -> anytun-relay: {got}/3 replies",
                    f"only {got}/3 pings came back through the tunnel")
        got = _ping(server, "10.9.0.2", 3)
        story.check(got == 3, f"and the other way, anytun-relay -> uanytun: {got}/3",
                    f"only {got}/3 pings from the relay side came back")
        data = bytes(range(256)) * 8192  # 2 MB
        sink = server.popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
        sink.stdout.readline()  # type: ignore[union-attr]
        client.run([sys.executable, "-c", "import socket;c=socket.create_connection(("
                    "'10.9.0.1',5001));c.sendall(bytes(range(256))*8192);c.close()"],
                   timeout=60)
        result = sink.stdout.readline().split()  # type: ignore[union-attr]
        stop_process(sink)
        want = [str(len(data)), hashlib.sha256(data).hexdigest()]
        story.check(result == want, "a 2 MB TCP transfer through the tunnel arrives intact "
                    "(sha256 matches)", f"transfer mismatch: {result}")
        st = _status(server, "tun7")
        conn = (st.get("connections") or [{}])[0]
        story.say(f"anytun-relay status: peer {conn.get('remote')}, {conn.get('rx_packets')} "
                  f"packets in, {conn.get('tx_packets')} out, drops {conn.get('drops')}")
    finally:
        stop_process(peer)
        stop_process(relay)


NODE_TOML = f"""
[node]
interface = "{AA4}"
sender_id = 1
device_name = "tun7"
ifconfig = "10.8.0.1/16"

[defaults]
role = "server"

[[connection]]
mux = 1
name = "client one"
passphrase = "first client's passphrase"
routes = ["10.8.1.0/24"]

[[connection]]
mux = 2
name = "client two"
passphrase = "second client's passphrase"
routes = ["10.8.2.0/24"]
"""


def chapter_server(lab: AnycastLab, story: Story) -> None:
    story.chapter("anytun-relay as an anycast tunnel server: two uanytun clients talk "
                  "through it")
    server = lab.server(1)
    lab.move(1)
    path = story.workdir / "node.toml"
    path.write_text(NODE_TOML)
    node = server.popen([*RELAY, "-D", "-L", "stderr:3", "--config", str(path)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peers = []
    try:
        ok = _wait_dev(server, "tun7", node)
        passphrases = {1: "first client's passphrase", 2: "second client's passphrase"}
        for mux, c in ((1, lab.clients[0]), (2, lab.clients[1])):
            p = c.popen(["uanytun", "-D", "-L", "stderr:3", "-r", AA4, "-m", str(mux),
                         "-E", passphrases[mux], "-e", "client", "-d", "tun8",
                         "-n", f"10.8.{mux}.2/16"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peers.append(p)
            ok = ok and _wait_dev(c, "tun8", p)
        story.check(ok, f"one node ({server.name}, config {path.name}: two connections with "
                    "their own keys and routes), two uanytun clients on their own machines",
                    "the node or a client did not come up")
        for c in lab.clients[:2]:
            for _ in range(20):
                if _ping(c, "10.8.0.1", 1):
                    break
        got = _ping(lab.clients[0], "10.8.2.2", 3)
        story.check(got == 3, f"client one (10.8.1.2) pings client two (10.8.2.2) through "
                    f"the relay: {got}/3", f"only {got}/3 pings between the clients")
        got = _ping(lab.clients[1], "10.8.1.2", 3)
        story.check(got == 3, f"and back: {got}/3", f"only {got}/3 pings back")
        st = _status(server, "tun7")
        story.say(f"the relay re-encrypted {st.get('dataplane', {}).get('relayed')} packets "
                  "from one client's keys to the other's, without passing them to its kernel")
        text = server.run([*RELAY, "status", "tun7"], check=False).stdout
        for line in text.splitlines()[1:]:
            story.say(line.strip())
    finally:
        for p in peers:
            stop_process(p)
        stop_process(node)
