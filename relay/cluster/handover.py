"""Open tunnel mode across nodes (pure): who owns a translated flow, and the kernel setup that
hands a packet to its owner.

In open tunnel mode a node source-NATs its clients' traffic to the anycast address. Each node
translates into its own block of source ports, cut from one range by sender ID, so the
destination port of a reply tells which node holds the flow's translation. A node that receives
a packet of another node's flow hands it over, unchanged, on a VXLAN link between the nodes'
unicast addresses; the owner's conntrack translates it as if it had arrived there:

* replies (to the anycast address, destination port in a peer's block): before this node's
  conntrack sees them (raw priority), copied to the block's owner and dropped here;
* client packets of a TCP flow this node did not start (the route moved mid-flow: no conntrack
  entry and no SYN): copied to every peer and dropped here; the owner continues the flow, the
  other peers drop the copy because their conntrack does not know it either.
  UDP flows cannot be told apart from new ones: after a route move the new node translates
  them afresh (a new source port). ICMP is translated by the node's own rule and not handed
  over.

Nothing is shared per flow and nothing races with a fast reply; a flow lives as long as its
owner node does.

The link: one VXLAN device per node (no learning, static forwarding entries). `nft dup` sends
the copy to a per-peer hop address (169.254.<sid>/fe80::616e:<sid>) on that device; a policy
rule (`oif <device> lookup <table>`) makes only those lookups see the hop routes in their own
table, and static neighbours map each hop to the peer's MAC, which the forwarding database maps
to the peer's unicast address. Only the members' addresses may send VXLAN to the node.

Members find each other through the cluster's shared state: each publishes a `node` record
with its sender ID, unicast address, port block and VXLAN settings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from relay.cluster import defaults
from relay.runtime.errors import ConfigError, RelayError

DEFAULT_PORTS = defaults.HANDOVER_PORTS
DEFAULT_BLOCK = defaults.HANDOVER_BLOCK
DEFAULT_VNI = defaults.HANDOVER_VNI
DEFAULT_UDP_PORT = defaults.HANDOVER_UDP_PORT
DEFAULT_TABLE = defaults.HANDOVER_TABLE


class HandoverError(RelayError, ValueError):
    """A handover setting or a member record that cannot work."""


def parse_range(text: str) -> tuple[int, int]:
    start, sep, end = text.partition("-")
    if not sep or not start.strip().isdigit() or not end.strip().isdigit():
        raise HandoverError(f"{text!r} is not START-END (e.g. 10240-32767)")
    first, last = int(start), int(end)
    if not 1 <= first <= last <= 65535:
        raise HandoverError(f"{text!r}: ports are 1-65535, START not above END")
    return first, last


def port_block(sid: int, first: int, last: int, size: int) -> tuple[int, int]:
    """The source ports a node translates into: block number `sid` of the range."""
    if not 1 <= first <= last <= 65535:
        raise HandoverError(f"bad port range {first}-{last}")
    if not 16 <= size <= last - first + 1:
        raise HandoverError(f"a port block of {size} does not fit {first}-{last} (at least 16)")
    lo = first + sid * size
    if lo + size - 1 > last:
        raise HandoverError(
            f"sender ID {sid} has no port block in {first}-{last} with blocks of {size} "
            f"(room for sender IDs 0-{(last - first + 1) // size - 1}); use smaller blocks "
            "or a larger range")
    return lo, lo + size - 1


def mac_of(sid: int) -> str:
    return f"02:61:6e:79:{sid >> 8:02x}:{sid & 0xFF:02x}"


def hop4(sid: int) -> str:
    return f"169.254.{sid >> 8}.{sid & 0xFF}"


def hop6(sid: int) -> str:
    return f"fe80::616e:{sid:x}"


def device_name(tun: str) -> str:
    """The node's VXLAN device, named after its tunnel device (at most 15 characters)."""
    return f"{tun[:12]}.ho"


@dataclass(frozen=True)
class Member:
    node: str
    sid: int
    address: str                 # unicast address the VXLAN link runs between
    ports: tuple[int, int]       # the block this node translates into
    vni: int = DEFAULT_VNI
    udp_port: int = DEFAULT_UDP_PORT

    def to_data(self) -> dict:
        return {"sid": self.sid, "address": self.address, "ports": list(self.ports),
                "vxlan": [self.vni, self.udp_port]}

    @classmethod
    def from_data(cls, node: str, data: Any) -> Member:
        """A member from a `node` record (untrusted: whoever can write the shared state)."""
        try:
            sid, address = data["sid"], data["address"]
            lo, hi = data["ports"]
            vni, port = data["vxlan"]
        except (KeyError, TypeError, ValueError):
            raise HandoverError(f"node record of {node!r} is malformed") from None
        ints = (sid, lo, hi, vni, port)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) \
                or not 0 <= sid <= 0xFFFF or not 1 <= lo <= hi <= 65535 \
                or not 0 < vni < 1 << 24 or not 0 < port < 65536:
            raise HandoverError(f"node record of {node!r} has values out of range")
        try:
            if not isinstance(address, str):
                raise TypeError
            addr = ipaddress.ip_address(address)
        except (ValueError, TypeError):
            raise HandoverError(f"node record of {node!r}: bad address {address!r}") from None
        if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
            raise HandoverError(f"node record of {node!r}: unusable address {address}")
        return cls(node, sid, str(addr), (lo, hi), vni, port)


def usable_peers(me: Member, members: list[Member], ports: tuple[int, int], block: int
                 ) -> tuple[list[Member], list[str]]:
    """The members this node can hand flows to, and why the others are left out. Every node
    must use the same range and block size, so a member's block must be exactly its sender
    ID's; a sender ID claimed by several nodes gets no flows at all (the decision must not
    depend on who is asked or in which order records arrived)."""
    family = ipaddress.ip_address(me.address).version
    candidates: dict[int, list[Member]] = {}
    problems: list[str] = []
    for m in sorted(members, key=lambda m: m.node):
        if m.node == me.node:
            continue
        why = ""
        try:
            expected = port_block(m.sid, *ports, block)
        except HandoverError:
            expected = None
        if m.sid == me.sid:
            why = f"claims this node's sender ID {m.sid}"
        elif expected != m.ports:
            here = "none" if expected is None else f"{expected[0]}-{expected[1]}"
            why = (f"port block {m.ports[0]}-{m.ports[1]} is not the block of sender ID "
                   f"{m.sid} here ({here}); every node needs the same --handover-ports and "
                   "--handover-block")
        elif (m.vni, m.udp_port) != (me.vni, me.udp_port):
            why = f"uses VXLAN {m.vni}:{m.udp_port}, this node {me.vni}:{me.udp_port}"
        elif ipaddress.ip_address(m.address).version != family:
            why = f"address {m.address} is of another family than {me.address}"
        if why:
            problems.append(f"node {m.node}: {why}; flows are not handed to it")
        else:
            candidates.setdefault(m.sid, []).append(m)
    peers = []
    for sid, ms in sorted(candidates.items()):
        if len(ms) == 1:
            peers.append(ms[0])
        else:
            names = ", ".join(m.node for m in ms)
            problems.append(f"sender ID {sid} is claimed by {names}; flows are handed to "
                            "none of them")
    return peers, problems


@dataclass(frozen=True)
class Layout:
    """What this node's handover setup depends on."""

    me: Member
    tun: str
    snat4: str | None
    snat6: str | None
    table: int = DEFAULT_TABLE

    @property
    def device(self) -> str:
        return device_name(self.tun)

    @property
    def nft_table(self) -> str:
        return "anytun_ho_" + "".join(c if c.isalnum() else "_" for c in self.tun)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f, a in (("ip", self.snat4), ("ip6", self.snat6)) if a)


def nft_script(layout: Layout, peers: list[Member]) -> str:
    """The whole ruleset, replaced atomically (one nft transaction) on every change."""
    dev, ho, name = layout.tun, layout.device, layout.nft_table
    me = layout.me
    under = "ip" if ipaddress.ip_address(me.address).version == 4 else "ip6"
    out = []
    for fam in sorted({*layout.families, under}):
        snat = layout.snat4 if fam == "ip" else layout.snat6
        hop = hop4 if fam == "ip" else hop6
        raw, track, nat = [], [], []
        if fam == under:
            allowed = ", ".join(p.address for p in peers)
            src = f" {fam} saddr != {{ {allowed} }}" if peers else ""
            raw.append(f"udp dport {me.udp_port} {fam} daddr {me.address}{src} counter drop")
        if snat:
            for p in peers:
                raw.append(f"{fam} daddr {snat} meta l4proto {{ tcp, udp }} th dport "
                           f"{p.ports[0]}-{p.ports[1]} counter dup to {hop(p.sid)} "
                           f'device "{ho}" drop')
            if peers:
                dups = " ".join(f'dup to {hop(p.sid)} device "{ho}"' for p in peers)
                track.append(f'iifname "{dev}" fib daddr oifname != "{dev}" ct state '
                             f"{{ new, invalid }} tcp flags & syn == 0 counter {dups} drop")
            track.append(f'iifname "{ho}" ct state {{ new, invalid }} counter drop')
            nat.append(f'iifname "{dev}" oifname != {{ "{dev}", "{ho}" }} meta l4proto '
                       f"{{ tcp, udp }} snat {fam} to {_bracket(snat)}:{me.ports[0]}-"
                       f"{me.ports[1]}")
        chains = [("raw", "filter", "prerouting", "raw", raw),
                  ("track", "filter", "prerouting", "mangle", track),
                  ("nat", "nat", "postrouting", "srcnat - 1", nat)]
        body = "".join(
            f"  chain {cname} {{\n    type {ctype} hook {hook} priority {prio}; policy accept;\n"
            + "".join(f"    {r}\n" for r in rules) + "  }\n"
            for cname, ctype, hook, prio, rules in chains if rules)
        out.append(f"table {fam} {name} {{}}\ndelete table {fam} {name}\n"
                   f"table {fam} {name} {{\n{body}}}\n")
    return "".join(out)


def nft_teardown(layout: Layout) -> str:
    return "".join(f"table {fam} {layout.nft_table} {{}}\ndelete table {fam} {layout.nft_table}\n"
                   for fam in ("ip", "ip6"))


def _bracket(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def peer_commands(layout: Layout, old: list[Member], new: list[Member]
                  ) -> tuple[list[str], list[str]]:
    """`ip -batch` and `bridge -batch` lines that turn the links to `old` into those to `new`
    (hop routes in the node's table, static neighbours, forwarding entries); the address
    family of each line follows from its hop address."""
    ho, table = layout.device, layout.table
    ip: list[str] = []
    bridge: list[str] = []
    now = {p.sid: p for p in new}
    for p in old:
        if now.get(p.sid) == p:
            continue
        bridge.append(f"fdb del {mac_of(p.sid)} dev {ho} self")
        for fam, hop in (("-4", hop4), ("-6", hop6)):
            if (fam == "-4" and layout.snat4) or (fam == "-6" and layout.snat6):
                ip.append(f"route del {hop(p.sid)} table {table}")
                ip.append(f"neigh del {hop(p.sid)} dev {ho}")
    before = {p.sid: p for p in old}
    for p in new:
        if before.get(p.sid) == p:
            continue
        bridge.append(f"fdb replace {mac_of(p.sid)} dev {ho} dst {p.address} self permanent")
        for fam, hop in (("-4", hop4), ("-6", hop6)):
            if (fam == "-4" and layout.snat4) or (fam == "-6" and layout.snat6):
                h = hop(p.sid)
                ip.append(f"neigh replace {h} lladdr {mac_of(p.sid)} dev {ho} nud permanent")
                onlink = " onlink" if fam == "-4" else ""
                ip.append(f"route replace {h} via {h} dev {ho}{onlink} table {table}")
    return ip, bridge


@dataclass(frozen=True)
class HandoverOptions:
    address: str
    ports: tuple[int, int] = DEFAULT_PORTS
    block: int = DEFAULT_BLOCK
    vni: int = DEFAULT_VNI
    udp_port: int = DEFAULT_UDP_PORT
    table: int = DEFAULT_TABLE


def check_address(text: str, option: str = "--handover") -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give this node's unicast IP address") from None
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        raise ConfigError(f"{option} {text}: give this node's unicast IP address")
    return str(addr)
