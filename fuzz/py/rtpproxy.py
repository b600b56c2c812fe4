"""relay.rtpproxy: any control datagram is a command or a numbered error, never an exception;
a run of commands (one per line, as over the Unix stream) against the session table leaves
exactly the port pairs of the live sessions open, and every reply fits the limits."""

from __future__ import annotations

from fuzz.py import instrumented, run

with instrumented():
    from relay.rtpproxy import protocol as p
    from relay.rtpproxy.commands import Controller
    from relay.rtpproxy.ports import PairAllocator
    from relay.rtpproxy.sessions import Change, SessionTable

ADDRESSES = (["10.255.0.1"], ["10.255.0.1", "fd00:aa::1"], ["fd00:aa::1", "10.255.0.2"])


class MemoryPorts:
    """Port pairs without sockets, given back when their session goes (like media.py)."""

    def __init__(self, table: SessionTable, allocator: PairAllocator) -> None:
        self.allocator = allocator
        self.open: set[tuple[str, int]] = set()
        table.subscribe(self._changed)

    def open_pair(self, local: str) -> int:
        port = self.allocator.allocate_pair()
        self.open.add((local, port))
        return port

    def close_pair(self, local: str, port: int) -> None:
        if (local, port) in self.open:
            self.open.discard((local, port))
            self.allocator.release(port)

    def _changed(self, change: Change) -> None:
        if change.kind == "delete":
            for party in change.session.parties():
                self.close_pair(party.local, party.port)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cookie, cmd = p.parse_datagram(data[1:])
    assert isinstance(cmd, p.CommandError) or cookie, "a command without a cookie"
    if isinstance(cmd, p.CommandError):
        assert cmd.reply.startswith("E") and cmd.reason
    reply = p.format_datagram(cookie, cmd.reply if isinstance(cmd, p.CommandError) else "0")
    assert len(reply) <= p.MAX_UDP_REPLY + len(cookie) + 16

    table = SessionTable(node="fuzz", timeout=60.0)
    allocator = PairAllocator.from_range("30000-30011")  # small: exhaustion is reached
    ports = MemoryPorts(table, allocator)
    ctl = Controller(table, ports, ADDRESSES[data[0] % len(ADDRESSES)], allocator=allocator)
    now = 1000.0
    for line in data[1:].split(b"\n")[:64]:
        now += 7.0
        answer = ctl.execute(p.parse_stream(line), now)
        assert answer and len(p.format_stream(answer)) <= p.MAX_REPLY + 16
        if now > 1100:
            table.expire(now)
        live = {(party.local, party.port) for s in table for party in s.parties()}
        assert ports.open == live, (ports.open, live)
        assert allocator.in_use == len(ports.open)


if __name__ == "__main__":
    run(test_one_input)
