"""anytun-relay as a server configured by its native TOML file: IPv6 inner traffic, a tap
service with MAC learning, SIGHUP reload, open tunnel mode and AARP answers from the node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import AA4, AA6, AnycastLab
from tests.conftest import require, require_program
from tests.e2e import tunnel_util as tu

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_server_config")]  # one shared lab


@pytest.fixture(scope="module")
def lab() -> Iterator[AnycastLab]:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require_program("uanytun")
    require_program("nft")
    with AnycastLab(servers=1, clients=3, hosts=1, tag="srvcfg") as lab:
        yield lab


def conn(mux: int, *routes: str, extra: str = "") -> str:
    quoted = ", ".join(f'"{r}"' for r in routes)
    return (f'[[connection]]\nmux = {mux}\nname = "client{mux}"\npassphrase = "pass-{mux}"\n'
            f"routes = [{quoted}]\n{extra}\n")


def node(tmp: Path, body: str, name: str = "node.toml") -> Path:
    path = tmp / name
    path.write_text(body)
    return path


TUN_NODE = f"""
[node]
interface = "{AA4}"
sender_id = 1
device_name = "tun7"
ifconfig = ["10.8.0.1/16", "fd00:8::1/32"]

[defaults]
role = "server"
"""


def start_node(lab: AnycastLab, path: Path, dev: str = "tun7",
               addr: str | None = "10.8.0.1") -> subprocess.Popen:
    return tu.start(lab.server(1), tu.relay("--config", str(path)), dev, addr)


def client(lab: AnycastLab, mux: int, v6: bool = False, dev: str = "tun8",
           *extra: str) -> subprocess.Popen:
    node_ = lab.clients[mux - 1]
    proc = tu.start(node_, tu.uanytun("-m", str(mux), "-E", f"pass-{mux}", "-e", "client",
                                      "-r", AA4, "-d", dev, "-n", f"10.8.{mux}.2/16", *extra),
                    dev, f"10.8.{mux}.2")
    if v6:
        node_.run(["ip", "-6", "addr", "add", f"fd00:8:{mux}::2/32", "dev", dev, "nodad"])
    return proc


def test_ipv4_and_ipv6_clients_through_the_native_config(lab: AnycastLab, tmp_path) -> None:
    path = node(tmp_path, TUN_NODE + conn(1, "10.8.1.0/24", "fd00:8:1::/64") +
                conn(2, "10.8.2.0/24", "fd00:8:2::/64"))
    procs = [start_node(lab, path)]
    try:
        procs += [client(lab, 1, v6=True), client(lab, 2, v6=True)]
        tu.ping_until(lab.clients[0], "10.8.0.1")
        tu.ping_until(lab.clients[1], "10.8.0.1")
        assert tu.ping(lab.clients[0], "fd00:8::1") == 3
        assert tu.ping(lab.clients[0], "fd00:8:2::2") == 3  # client to client over IPv6
        assert tu.ping(lab.clients[1], "fd00:8:1::2") == 3
        tu.transfer(lab.clients[1], lab.clients[0], "fd00:8:1::2", 1_000_000)
        st = tu.tunnel_status(lab.server(1), "tun7")
        assert st["dataplane"]["relayed"] >= 6
        assert {r["prefix"] for r in st["routes"]} == {"10.8.1.0/24", "fd00:8:1::/64",
                                                       "10.8.2.0/24", "fd00:8:2::/64"}
    finally:
        for p in reversed(procs):
            tu.stop(p)


def test_tap_service_learns_macs(lab: AnycastLab, tmp_path) -> None:
    path = node(tmp_path, """
[node]
port = 4446
device = "tap"
device_name = "tap7"
ifconfig = "10.7.0.1/24"

[defaults]
role = "server"
""" + conn(1) + conn(2))
    procs = [start_node(lab, path, "tap7", "10.7.0.1")]
    try:
        for mux in (1, 2):
            node_ = lab.clients[mux - 1]
            procs.append(tu.start(node_, tu.uanytun(
                "-m", str(mux), "-E", f"pass-{mux}", "-e", "client", "-r", lab.server(1).ip4,
                "-o", "4446", "-p", "4447", "-t", "tap", "-d", "tap8",
                "-n", f"10.7.0.1{mux}/24"), "tap8", f"10.7.0.1{mux}"))
        tu.ping_until(lab.clients[0], "10.7.0.1")
        tu.ping_until(lab.clients[0], "10.7.0.12")  # ARP floods, then learned MACs
        assert tu.ping(lab.clients[1], "10.7.0.11") == 3
        tu.transfer(lab.clients[0], lab.clients[1], "10.7.0.12", 500_000)
        st = tu.tunnel_status(lab.server(1), "tap7")
        assert st["dataplane"]["relayed"] >= 6 and st["device"]["kind"] == "tap"
        macs = {
            lab.clients[mux - 1].run(["cat", "/sys/class/net/tap8/address"]).stdout.strip(): mux
            for mux in (1, 2)}
        assert st["macs"] == macs  # each client's MAC learned on its own connection
    finally:
        for p in reversed(procs):
            tu.stop(p)


def test_sighup_reload_adds_and_removes_without_interrupting_others(lab: AnycastLab,
                                                                    tmp_path) -> None:
    path = node(tmp_path, TUN_NODE + conn(1, "10.8.1.0/24") + conn(2, "10.8.2.0/24"))
    srv = start_node(lab, path)
    procs = [client(lab, 1), client(lab, 2), client(lab, 3)]
    try:
        tu.ping_until(lab.clients[0], "10.8.0.1")
        tu.ping_until(lab.clients[1], "10.8.0.1")
        assert tu.ping(lab.clients[2], "10.8.0.1", 2) == 0  # client 3 is not configured yet
        lab.limit(lab.clients[0], "6mbit")  # client 1's download lasts a few seconds
        errors: list[BaseException] = []
        transfer = threading.Thread(target=lambda: _guard(errors, tu.transfer, lab.server(1),
                                                          lab.clients[0], "10.8.1.2",
                                                          3_000_000))
        transfer.start()
        tu.wait_for(lambda: tu.tunnel_status(lab.server(1), "tun7")["connections"][0]
                    ["tx_packets"] > 200, 10, "the transfer to be under way")
        path.write_text(TUN_NODE + conn(1, "10.8.1.0/24") + conn(3, "10.8.3.0/24"))
        os.kill(srv.pid, signal.SIGHUP)
        tu.wait_for(lambda: {c["mux"] for c in tu.tunnel_status(lab.server(1), "tun7")
                             ["connections"]} == {1, 3}, 10, "the reload")
        assert transfer.is_alive(), "the transfer ended before the reload; slow it down"
        transfer.join(60)
        assert not errors, errors  # client 1's transfer ran through the reload intact
        tu.ping_until(lab.clients[2], "10.8.0.1")
        assert tu.ping(lab.clients[1], "10.8.0.1", 2) == 0  # client 2 is really gone
        assert tu.ping(lab.clients[2], "10.8.1.2", 2) == 2
        routes = lab.server(1).run(["ip", "route", "show", "dev", "tun7"]).stdout
        assert "10.8.3.0/24" in routes and "10.8.2.0/24" not in routes
        # a broken file is refused; the running configuration stays
        path.write_text(TUN_NODE + "[[connection]]\nmux = 1\npassphrase = \"x\"\nroutes = 5\n")
        os.kill(srv.pid, signal.SIGHUP)
        assert tu.ping(lab.clients[2], "10.8.0.1", 2) == 2
        assert {c["mux"] for c in tu.tunnel_status(lab.server(1), "tun7")["connections"]} \
            == {1, 3}
    finally:
        lab.unlimit(lab.clients[0])
        for p in procs:
            tu.stop(p)
        out = tu.stop(srv)
    assert "reload of config refused" in out and "routes must be a list" in out


def _guard(errors: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


WEB = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    address_family = __import__('socket').AF_INET6
    def server_bind(self):
        self.socket.setsockopt(41, 26, 0)  # IPV6_V6ONLY off: IPv4 too
        super().server_bind()
S(('::', 8080), H).serve_forever()
"""


def test_open_tunnel_mode_and_aarp_answers(lab: AnycastLab, tmp_path) -> None:
    host = lab.hosts[0]
    path = node(tmp_path, TUN_NODE + f"""
[open_tunnel]
snat4 = "{AA4}"
snat6 = "{AA6}"

[aarp]
anycast = ["{AA4}", "{AA6}"]
""" + conn(1, "10.8.1.0/24", "fd00:8:1::/64"))
    before = lab.server(1).run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
    web = host.popen([sys.executable, "-c", WEB])
    srv = start_node(lab, path)
    cli = client(lab, 1, v6=True)
    c = lab.clients[0]
    try:
        # the client sends traffic for the "internet" host into its tunnel
        c.run(["ip", "route", "add", f"{host.ip4}/32", "dev", "tun8"])
        c.run(["ip", "-6", "route", "add", f"{host.ip6}/128", "dev", "tun8"])
        tu.ping_until(c, "10.8.0.1")
        tu.wait_for(lambda: c.run(["curl", "-s", "-m", "3", f"http://{host.ip4}:8080/"],
                                  check=False).stdout, 10, "web server")
        seen4 = c.run(["curl", "-sf", "-m", "5", f"http://{host.ip4}:8080/"]).stdout
        seen6 = c.run(["curl", "-sf", "-m", "5", "-g", f"http://[{host.ip6}]:8080/"]).stdout
        assert seen4.removeprefix("::ffff:") == AA4  # the web server saw the anycast address
        assert seen6 == AA6
        # AARP answers from the node: the anycast address is served by this node's unicast
        out = c.run([sys.executable, "-m", "aarp.cli.resolve", AA4]).stdout
        assert out.split()[0] == lab.server(1).ip4
        st = tu.status(lab.server(1), "tun7")
        assert st["open-tunnel"]["snat4"] == AA4 and st["aarp-responder"]["running"]
    finally:
        tu.stop(cli)
        tu.stop(srv)
        tu.stop(web)
    tables = lab.server(1).run(["nft", "list", "tables"]).stdout
    assert "anytun_relay" not in tables  # removed on exit
    assert lab.server(1).run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == before
