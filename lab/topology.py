"""An anycast lab: clients, one router, N anycast servers, optional "internet" hosts.

Address plan (fixed; every namespace is private, so parallel labs never clash):

    client i   eth0  fd00:1:<i>::2/64   10.1.<i>.2/24   (router side c<i>: ::1 / .1)
    server j   eth0  fd00:2:<j>::2/64   10.2.<j>.2/24   (router side s<j>: ::1 / .1)  = UA
    host k     eth0  fd00:3:<k>::2/64   10.3.<k>.2/24   (router side h<k>: ::1 / .1)
    anycast, BGP style    fd00:aa::1/128 and 10.255.0.1/32 on lo of every server
    anycast, kernel style fd00:ab::1 ("ip -6 route add anycast ... table local" on every server)

The router sends fd00:aa::/64, 10.255.0.0/24 and fd00:ab::/64 to one server; `move(j)` sends
them to server j at once, which is how tests simulate an anycast route change.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from lab.netns import Host, LabError, Namespaces, stop_process, sweep_stale

AA6 = "fd00:aa::1"
AA4 = "10.255.0.1"
AK6 = "fd00:ab::1"
ANYCAST_PREFIXES = ("fd00:aa::/64", "10.255.0.0/24", "fd00:ab::/64")


@dataclass(frozen=True)
class Node:
    """A host of the lab with its addresses on the link to the router."""

    host: Host
    index: int
    ip6: str
    ip4: str
    gw6: str
    gw4: str
    router_if: str

    @property
    def name(self) -> str:
        return self.host.name

    def run(self, *args, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.host.run(*args, **kwargs)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        return self.host.popen(*args, **kwargs)


class AnycastLab:
    """Build with `with AnycastLab(servers=2) as lab:`; everything is deleted on exit."""

    def __init__(self, servers: int = 2, clients: int = 1, hosts: int = 0, tag: str = "lab",
                 kernel_anycast: bool = True, mtu: int | None = None) -> None:
        if not 1 <= servers <= 9 or not 1 <= clients <= 9 or not 0 <= hosts <= 9:
            raise LabError("the lab holds 1-9 servers, 1-9 clients and 0-9 extra hosts")
        sweep_stale()
        self.ns = Namespaces(tag)
        self.current: int | None = None
        self._client_tables: list[str] = []
        self.servers: list[Node] = []
        self.clients: list[Node] = []
        self.hosts: list[Node] = []
        try:
            self.router = self.ns.add("rtr")
            self.router.sysctl("net.ipv6.conf.all.forwarding", 1)
            self.router.sysctl("net.ipv4.ip_forward", 1)
            for i in range(1, clients + 1):
                self.clients.append(self._attach(f"cli{i}", 1, i, f"c{i}", mtu))
            for j in range(1, servers + 1):
                node = self._attach(f"s{j}", 2, j, f"s{j}", mtu)
                node.run(["ip", "addr", "add", f"{AA6}/128", "dev", "lo"])
                node.run(["ip", "addr", "add", f"{AA4}/32", "dev", "lo"])
                if kernel_anycast:
                    node.run(["ip", "-6", "route", "add", "anycast", AK6, "dev", "eth0",
                              "table", "local"])
                self.servers.append(node)
            for k in range(1, hosts + 1):
                self.hosts.append(self._attach(f"net{k}", 3, k, f"h{k}", mtu))
            self.move(1)
            self.warm()
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------------------
    def _attach(self, name: str, net: int, idx: int, router_if: str, mtu: int | None) -> Node:
        host = self.ns.add(name)
        self.ns.link(host, "eth0", self.router, router_if, mtu)
        ip6, gw6 = f"fd00:{net}:{idx}::2", f"fd00:{net}:{idx}::1"
        ip4, gw4 = f"10.{net}.{idx}.2", f"10.{net}.{idx}.1"
        host.run(["ip", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad"])
        host.run(["ip", "addr", "add", f"{ip4}/24", "dev", "eth0"])
        host.run(["ip", "-6", "route", "add", "default", "via", gw6])
        host.run(["ip", "route", "add", "default", "via", gw4])
        self.router.run(["ip", "addr", "add", f"{gw6}/64", "dev", router_if, "nodad"])
        self.router.run(["ip", "addr", "add", f"{gw4}/24", "dev", router_if])
        return Node(host, idx, ip6, ip4, gw6, gw4, router_if)

    def warm(self) -> None:
        """Resolve every neighbour on every link, so no test loses its first packet to ND/ARP."""
        procs = []
        for node in (*self.clients, *self.servers, *self.hosts):
            for gw in (node.gw6, node.gw4):
                procs.append(subprocess.Popen(
                    node.host.argv(["ping", "-c", "1", "-W", "2", "-q", gw]),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for proc in procs:
            proc.wait()

    # -- anycast routing ------------------------------------------------------------------------
    def move(self, server: int, client: int | None = None) -> None:
        """Send the anycast prefixes to server `server` (1-based) from now on.

        With `client`, only that client's traffic moves (policy routing on the router, as when
        two clients sit in different parts of the internet); without it every client moves
        and per-client overrides are dropped.
        """
        node = self.server(server)
        if client is None:
            for table in self._client_tables:
                self._flush_client_table(table)
            self._client_tables.clear()
            table_args: list[str] = []
        else:
            cli = self.clients[client - 1] if 1 <= client <= len(self.clients) else None
            if cli is None:
                raise LabError(f"no client {client}; the lab has {len(self.clients)}")
            table = str(100 + client)
            if table not in self._client_tables:
                for fam, src in (("-6", f"{cli.gw6}/64"), ("-4", f"{cli.gw4}/24")):
                    self.router.run(["ip", fam, "rule", "add", "from", src, "table", table])
                self._client_tables.append(table)
            table_args = ["table", table]
        for prefix in ANYCAST_PREFIXES:
            via = node.ip4 if "." in prefix else node.ip6
            fam = "-4" if "." in prefix else "-6"
            self.router.run(["ip", fam, "route", "replace", prefix, "via", via, *table_args])
        if client is None:
            self.current = server

    def _flush_client_table(self, table: str) -> None:
        for fam in ("-6", "-4"):
            self.router.run(["ip", fam, "rule", "del", "table", table], check=False)
            self.router.run(["ip", fam, "route", "flush", "table", table], check=False)

    def server(self, index: int) -> Node:
        if not 1 <= index <= len(self.servers):
            raise LabError(f"no server {index}; the lab has {len(self.servers)}")
        return self.servers[index - 1]

    @property
    def client(self) -> Node:
        return self.clients[0]

    # -- links ------------------------------------------------------------------------------------
    def limit(self, node: Node, rate: str = "4mbit") -> None:
        """Rate-limit traffic from the router towards `node` (downloads), so they last."""
        self.router.run(["tc", "qdisc", "replace", "dev", node.router_if, "root", "tbf",
                         "rate", rate, "burst", "16kb", "latency", "500ms"])

    def unlimit(self, node: Node) -> None:
        self.router.run(["tc", "qdisc", "del", "dev", node.router_if, "root"], check=False)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        self.ns.close()

    def __enter__(self) -> AnycastLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AA4", "AA6", "AK6", "ANYCAST_PREFIXES", "AnycastLab", "Node", "stop_process"]
