"""Full anycast TCP (pure): the kernel setup that keeps a connection on the node that holds it.

Per packet everything happens in the kernel; userspace only changes state once per connection
(and once per member). The nftables tables `anytun_atcp` (ip, ip6) of a node:

* `mine`  the connections this node's kernel holds: (client address, client port, service
  port). The kernel itself adds a connection when its handshake completes (the SYN-ACK put it in
  `half`, the completing ACK moves it), so there is no race with a fast client; userspace adds
  connections it took over and removes those that ended.
* `peers` (client address, client port, service port) -> `goto to_<sender ID>`: the other
  nodes' connections, from their `tcpconn` records. Chain `to_<sid>` hands the segment to that
  node unchanged over the VXLAN link between the nodes (`dup to <hop> device <link>`, then drop
  here) while the node lives; when it is dead or drained the chain holds the segment instead.
* anything else that is not a SYN is *held*: logged to userspace (nfnetlink_log) and dropped.
  Userspace decides -- a connection of a dead owner is taken over, and its held segments are
  handed back to the stack; a segment without a valid record gets no state and no answer.

Segments that arrive over the link are accepted only for connections in `mine` (no loops, no
answers for connections this node does not hold). The kernel reassembles fragments before
these rules (a tproxy expression in a chain never jumped to asks for it), so a node hands over
whole segments, and fragments split between nodes complete nowhere. The SYN, the SYN-ACK and
the completing ACK are logged too (the constants of each connection for its record). For the
ports of the anycast TCP transport no RST ever leaves, and neither does a FIN of a socket whose
process died (the transport's sockets carry a mark it clears before a deliberate close).
SYN-ACKs get their MSS clamped, so every segment of the client still fits the link between the
nodes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.cluster import defaults
from relay.cluster.tcp_owner import Flow

DEFAULT_DEVICE = "atcp0"
DEFAULT_VNI = defaults.ANYCAST_TCP_VNI
DEFAULT_UDP_PORT = defaults.ANYCAST_TCP_UDP_PORT
DEFAULT_TABLE = 24943            # routing table and rule preference of the hop routes
DEFAULT_GROUP = 24943            # nfnetlink_log group
DEFAULT_MARK = 0x61746370        # SO_MARK of the transport's live sockets
NFT_TABLE = "anytun_atcp"
LOG_SYN, LOG_SYNACK, LOG_EST, LOG_HOLD = "atcp-syn", "atcp-sa", "atcp-est", "atcp-hold"
HOLD_RATE = 2000                 # held segments logged per second (the rest just dropped)
HANDSHAKE_RATE = 20000           # SYNs / SYN-ACKs logged per second
VXLAN_OVERHEAD = {4: 50, 6: 70}


class ForwardError(ValueError):
    pass


def hop4(sid: int) -> str:
    return f"169.254.{sid >> 8}.{sid & 0xFF}"


def hop6(sid: int) -> str:
    return f"fe80::6174:{sid:x}"


def mac_of(sid: int) -> str:
    return f"02:61:74:63:{sid >> 8:02x}:{sid & 0xFF:02x}"


@dataclass(frozen=True)
class Peer:
    sid: int
    address: str
    alive: bool = True


@dataclass(frozen=True)
class Layout:
    sid: int
    address: str                       # this node's unicast (underlay) address
    anycast: tuple[str, ...]           # the service addresses
    ports: tuple[int, ...]             # services whose connections the cluster keeps
    guard: tuple[int, ...] = ()        # ports of the anycast TCP transport
    device: str = DEFAULT_DEVICE
    udp_port: int = DEFAULT_UDP_PORT
    table: int = DEFAULT_TABLE
    group: int = DEFAULT_GROUP
    mark: int = DEFAULT_MARK
    link_mtu: int = 1450               # the VXLAN device's MTU
    families: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        fams = sorted({ipaddress.ip_address(a).version for a in self.anycast})
        object.__setattr__(self, "families", tuple(fams))

    @property
    def underlay(self) -> int:
        return ipaddress.ip_address(self.address).version

    def addresses(self, family: int) -> list[str]:
        return [a for a in self.anycast if ipaddress.ip_address(a).version == family]


def _fam(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _key_type(family: int) -> str:
    return ("ipv4_addr" if family == 4 else "ipv6_addr") + " . inet_service . inet_service"


def _elements(values: Iterable[int | str]) -> str:
    return ", ".join(str(v) for v in values)


def peer_chain(layout: Layout, family: int, peer: Peer) -> list[str]:
    """The rules of chain to_<sid>: hand over while the peer lives, hold otherwise."""
    if not peer.alive:
        return ["jump hold"]
    hop = hop4(peer.sid) if family == 4 else hop6(peer.sid)
    return [f'counter dup to {hop} device "{layout.device}" drop']


def nft_script(layout: Layout, peers: list[Peer]) -> str:
    """The node's whole ruleset, created once (the sets fill while it runs: later changes go
    through `chain_update` and the element commands, never a rebuild)."""
    out = []
    families = sorted({*layout.families, layout.underlay})
    members = sorted({p.address for p in peers})
    for family in families:
        fam = _fam(family)
        saddr, daddr = f"{fam} saddr", f"{fam} daddr"
        aas = layout.addresses(family)
        pre: list[str] = []
        lines = [f"table {fam} {NFT_TABLE} {{}}", f"delete table {fam} {NFT_TABLE}",
                 f"table {fam} {NFT_TABLE} {{"]
        for name in ("handed_in", "refused_in", "held", "silenced", "refused_link"):
            lines.append(f"  counter {name} {{ }}")
        if family == layout.underlay:
            lines += ["  chain link {", f"    {_link_rule(layout, members)}", "  }"]
            pre.append("jump link")
        if aas:
            key = _key_type(family)
            tup_in = f"{saddr} . tcp sport . tcp dport"
            tup_out = f"{daddr} . tcp dport . tcp sport"
            clamp = layout.link_mtu - (40 if family == 4 else 60)
            elems = f" elements = {{ {_elements(layout.guard)} }};" if layout.guard else ""
            guard = f"  set guard {{ type inet_service;{elems} }}"
            lines += [
                f"  set ports {{ type inet_service; elements = {{ {_elements(layout.ports)} }} }}",
                guard,
                f"  set half {{ type {key}; size 65536; flags dynamic,timeout; timeout 75s; }}",
                f"  set mine {{ type {key}; size 1048576; flags dynamic; }}",
                f"  map peers {{ type {key} : verdict; size 1048576; }}",
                "  chain svc_in {",
                f"    {tup_in} @mine accept",
                f"    tcp flags & (syn|rst) == 0 {tup_in} @half add @mine {{ {tup_in} }} "
                f"delete @half {{ {tup_in} }} "
                f'log prefix "{LOG_EST}" group {layout.group} snaplen 128 accept',
                f'    iifname "{layout.device}" counter name refused_in drop',
                f"    tcp flags & (syn|ack|fin|rst) == syn limit rate {HANDSHAKE_RATE}/second "
                f'log prefix "{LOG_SYN}" group {layout.group} snaplen 128',
                "    tcp flags & (syn|ack|fin|rst) == syn accept",
                f"    {tup_in} vmap @peers",
                "    jump hold",
                "  }",
                # never jumped to: a tproxy expression makes the kernel reassemble fragments
                # before prerouting, so a node hands over whole segments (or, when the
                # fragments split between nodes, none: no node gets them all)
                "  chain defrag {",
                "    meta l4proto tcp tproxy to :1",
                "  }",
                "  chain hold {",
                f'    limit rate {HOLD_RATE}/second log prefix "{LOG_HOLD}" group '
                f"{layout.group} snaplen 65535",
                "    counter name held drop",
                "  }",
            ]
            for p in peers:
                lines += [f"  chain to_{p.sid} {{",
                          *(f"    {r}" for r in peer_chain(layout, family, p)), "  }"]
            lines += [
                "  chain svc_out {",
                f"    tcp flags & (syn|ack) == syn|ack add @half {{ {tup_out} }}",
                f"    tcp flags & (syn|ack) == syn|ack tcp option maxseg size > {clamp} "
                f"tcp option maxseg size set {clamp}",
                f"    tcp flags & (syn|ack) == syn|ack limit rate {HANDSHAKE_RATE}/second "
                f'log prefix "{LOG_SYNACK}" group {layout.group} snaplen 128',
                f"    tcp sport @guard tcp flags & (fin|rst) != 0 meta mark {layout.mark:#x} "
                "counter name silenced drop",
                "    tcp sport @guard tcp flags & rst != 0 counter name silenced drop",
                "  }",
                "  chain out {",
                "    type filter hook output priority filter; policy accept;",
                f"    {saddr} {{ {_elements(aas)} }} tcp sport @ports jump svc_out",
                "  }",
            ]
            pre.insert(0, f'iifname "{layout.device}" {daddr} {{ {_elements(aas)} }} '
                       "counter name handed_in")
            pre.append(f"{daddr} {{ {_elements(aas)} }} tcp dport @ports jump svc_in")
        lines += ["  chain pre {", "    type filter hook prerouting priority raw; policy accept;",
                  *(f"    {r}" for r in pre), "  }", "}"]
        out.append("\n".join(lines) + "\n")
    return "".join(out)


def _link_rule(layout: Layout, members: list[str]) -> str:
    fam = _fam(layout.underlay)
    src = f" {fam} saddr != {{ {_elements(members)} }}" if members else ""
    return (f"udp dport {layout.udp_port} {fam} daddr {layout.address}{src} "
            "counter name refused_link drop")


def link_filter(layout: Layout, members: list[str]) -> str:
    """Only the members may send VXLAN to this node (replaces the rule of chain `link`)."""
    name = f"{_fam(layout.underlay)} {NFT_TABLE} link"
    return f"flush chain {name}\nadd rule {name} {_link_rule(layout, members)}\n"


def chain_update(layout: Layout, peer: Peer, create: bool) -> str:
    """Replace (or create) chain to_<sid> in every family that has service addresses."""
    out = []
    for family in layout.families:
        fam = _fam(family)
        name = f"{fam} {NFT_TABLE} to_{peer.sid}"
        out.append(f"add chain {name}\n" if create else f"flush chain {name}\n")
        out += [f"add rule {name} {r}\n" for r in peer_chain(layout, family, peer)]
    return "".join(out)


def chain_delete(layout: Layout, sid: int) -> str:
    return "".join(f"delete chain {_fam(f)} {NFT_TABLE} to_{sid}\n" for f in layout.families)


def element(flow: Flow) -> str:
    return f"{flow.client} . {flow.cport} . {flow.sport}"


def mine_add(flow: Flow) -> str:
    return f"add element {_fam(flow.family)} {NFT_TABLE} mine {{ {element(flow)} }}\n"


def mine_delete(flow: Flow) -> str:
    return f"delete element {_fam(flow.family)} {NFT_TABLE} mine {{ {element(flow)} }}\n"


def peers_add(flow: Flow, sid: int) -> str:
    return (f"add element {_fam(flow.family)} {NFT_TABLE} peers {{ {element(flow)} : "
            f"goto to_{sid} }}\n")


def peers_delete(flow: Flow) -> str:
    return f"delete element {_fam(flow.family)} {NFT_TABLE} peers {{ {element(flow)} }}\n"


def nft_teardown() -> str:
    return "".join(f"table {fam} {NFT_TABLE} {{}}\ndelete table {fam} {NFT_TABLE}\n"
                   for fam in ("ip", "ip6"))


def link_commands(layout: Layout, old: list[Peer], new: list[Peer]
                  ) -> tuple[list[str], list[str]]:
    """`ip -batch` and `bridge -batch` lines that turn the links to `old` into those to `new`:
    a forwarding entry (peer MAC -> peer address), a static neighbour per hop address and a hop
    route in the node's table (looked up only for packets out of the link device)."""
    dev, table = layout.device, layout.table
    ip: list[str] = []
    bridge: list[str] = []
    before = {p.sid: p.address for p in old}
    now = {p.sid: p.address for p in new}
    fams = [(f, hop4 if f == 4 else hop6) for f in layout.families]
    for sid, addr in before.items():
        if now.get(sid) == addr:
            continue
        bridge.append(f"fdb del {mac_of(sid)} dev {dev} self")
        for _, hop in fams:
            ip.append(f"route del {hop(sid)} table {table}")
            ip.append(f"neigh del {hop(sid)} dev {dev}")
    for sid, addr in now.items():
        if before.get(sid) == addr:
            continue
        bridge.append(f"fdb replace {mac_of(sid)} dev {dev} dst {addr} self permanent")
        for f, hop in fams:
            h = hop(sid)
            ip.append(f"neigh replace {h} lladdr {mac_of(sid)} dev {dev} nud permanent")
            ip.append(f"route replace {h} via {h} dev {dev}"
                      f"{' onlink' if f == 4 else ''} table {table}")
    return ip, bridge


# -- the kernel's own view: /proc/net/tcp -------------------------------------------------------
TCP_ESTABLISHED = 1
TCP_SYN_RECV = 3
TCP_LISTEN = 10


def _proc_addr(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def parse_proc_tcp(text: str, anycast: set[str], ports: set[int]
                   ) -> dict[Flow, tuple[int, bool]]:
    """Sockets of this network namespace on the service addresses and ports: (state, whether a
    process holds it -- an orphan of a dead process, or TIME_WAIT, has no inode). Listeners and
    half-open connections are left out."""
    out: dict[Flow, tuple[int, bool]] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        try:
            local, remote, state = parts[1], parts[2], int(parts[3], 16)
            held = len(parts) > 9 and parts[9] != "0"
            lhost, lport = local.split(":")
            rhost, rport = remote.split(":")
            laddr, port = _proc_addr(lhost), int(lport, 16)
        except ValueError:
            continue
        if state in (TCP_LISTEN, TCP_SYN_RECV) or port not in ports or laddr not in anycast:
            continue
        out[Flow(laddr, port, _proc_addr(rhost), int(rport, 16))] = (state, held)
    return out


@dataclass(frozen=True)
class AnycastTcpOptions:
    address: str                           # this node's unicast address (the link's underlay)
    anycast: tuple[str, ...]               # the service addresses
    ports: tuple[int, ...] = ()            # services besides the transport's port
    vni: int = DEFAULT_VNI
    udp_port: int = DEFAULT_UDP_PORT
    table: int = DEFAULT_TABLE
    group: int = DEFAULT_GROUP
    device: str = DEFAULT_DEVICE
    beat: float = 0.25
    timeout: float = defaults.ANYCAST_TCP_TIMEOUT
    scan: float = 2.0
