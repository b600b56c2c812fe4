"""The Python data plane (relay.tunnel.dataplane: from_network / from_device): any sequence
of datagrams and device packets, on a node with clients in every mode (tun/tap, one connection
or routed, tunneling), never raises, never sends a datagram the peers cannot read, keeps its
replay windows within their size, and spends bounded time and memory per packet (-timeout and
the memory cap catch the rest). The clients use null transforms, so the fuzzer can forge
"authenticated" datagrams, as anyone can against `-a null`; one client with keys is reachable
only through routes (relayed and oversized packets).

Input: a configuration byte, then records: kind byte, 2-byte length, bytes. Kind bit 0: from
the network (else from the device), bits 1-2: which remote sent it, bits 3-4: time passing,
bit 5: queue it with the next record into one batch."""

from __future__ import annotations

from fuzz.py import instrumented, run

with instrumented():
    from relay.satp import MasterKey, Role, Suite
    from relay.transport.remote import Remote
    from relay.tunnel.dataplane import Dataplane, DataplaneConfig
    from relay.tunnel.routes import Prefix
    from relay.tunnel.table import ConnectionSpec, ConnectionTable

from fuzz.cases import COUNT_KEY, COUNT_SALT

WINDOWS = (0, 1, 64, 1024, 1 << 20)
REMOTES = tuple(Remote("udp", f"10.1.1.{i}", 4444 + i) for i in range(4))
NULL = Suite(0, 0, False, 0)
KEYED = Suite(16, 16, True, 20)


def node(config: int) -> tuple[Dataplane, ConnectionTable]:
    window = WINDOWS[(config >> 3) % len(WINDOWS)]
    table = ConnectionTable()
    p = Prefix.parse
    table.put(ConnectionSpec(0, None, Role.LEFT, NULL, window,
                             (p("10.9.0.0/16"), p("fd00:9::/32"))))
    table.put(ConnectionSpec(1, None, Role.LEFT, NULL, window,
                             (p("10.8.0.0/16"), p("fd00:8::/32"))))
    table.put(ConnectionSpec(2, MasterKey(COUNT_KEY[:16], COUNT_SALT), Role.LEFT, KEYED, window,
                             (p("10.10.0.0/16"), p("fd00:10::/32")), Remote("udp", "10.1.2.1",
                                                                             4444)))
    cfg = DataplaneConfig(tap=bool(config & 1), routing=bool(config & 2),
                          tunneling=bool(config & 4),
                          max_datagram=200 if config & 0x40 else 1600)
    return Dataplane(table, cfg), table


def test_one_input(data: bytes) -> None:
    if not data:
        return
    dp, table = node(data[0])
    now = 0.0
    at = 1
    net: list = []
    dev: list[bytes] = []
    while at < len(data):
        kind = data[at]
        n = int.from_bytes(data[at + 1:at + 3], "big")
        chunk = data[at + 3:at + 3 + n]
        at += 3 + n
        if kind & 1:
            net.append((chunk, REMOTES[kind >> 1 & 3]))
        else:
            dev.append(chunk)
        if kind & 0x20 and at < len(data):
            continue
        now += (kind >> 3 & 3) * 0.8
        to_device: list[bytes] = []
        to_net: list = []
        if net:
            dp.from_network(net, now, to_device, to_net)
        if dev:
            dp.from_device(dev, now, to_device, to_net)
        net, dev = [], []
        for datagram, remote in to_net:
            assert len(datagram) <= dp.config.max_datagram, len(datagram)
            assert isinstance(remote, Remote)
        for conn in table.by_mux.values():
            for st in conn.replay.senders.values():
                assert st.seen.bit_length() <= max(conn.replay.size, 1)


if __name__ == "__main__":
    run(test_one_input)
